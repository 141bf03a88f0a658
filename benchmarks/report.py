"""The markdown report of one run (`latest.md`), from the data `run.py` also writes as JSON."""

from __future__ import annotations

from pathlib import Path

PEERS = ("transformer_lens", "nnsight")


def _ms(entry: dict | None) -> str:
    if not entry:
        return "—"
    if "median_ms" not in entry:
        return "error" if entry.get("error") else "—"
    value = entry["median_ms"]
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ratio(entry: dict | None, key: str = "ratio") -> str:
    return f"{entry[key]:.3f}×" if entry and key in entry else "—"


def _mem(comp: dict, label: dict) -> str:
    cells = []
    for impl in ("hf", "bridge_core", *PEERS):
        entry = comp["results"].get(impl)
        if not entry or "peak_extra_mb" not in entry:
            continue
        text = f"{entry['peak_extra_mb']:.0f}"
        if entry.get("result_mb"):
            text += f" ({entry['result_mb']:.1f} cached)"
        cells.append(f"{_short(impl)} {text}")
    return " · ".join(cells)


def _short(impl: str) -> str:
    return {"hf": "HF", "bridge_core": "BC", "transformer_lens": "TL", "nnsight": "NN"}[impl]


def _budget(comp: dict) -> str:
    if comp["budget"] is None:
        return "—"
    if comp["workload"] == "build":
        return f"≤ {comp['budget']:.0f} ms"
    return f"≤ {comp['budget']:.2f}×"


def markdown(data: dict, label: dict, analysis: Path | None = None) -> str:
    meta = data["meta"]
    v = meta["versions"]
    lines = [
        "# bridge-core benchmarks",
        "",
        f"Run {meta['started']} ({meta['mode']} mode, {meta['wall_s']} s). Machine: {meta['cpu']}, "
        f"{meta['cores']} cores, `torch.set_num_threads({meta['threads']})`, torch.no_grad(). "
        f"torch {v['torch']}, transformers {v['transformers']}, TransformerLens {v['transformer-lens']}, "
        f"nnsight {v['nnsight']}, Python {meta['python']}. Load average before/after: "
        f"{meta['loadavg_before'][0]:.1f} / {meta['loadavg_after'][0]:.1f} (a shared machine: other "
        "processes' load shifts absolute times; ratios come from interleaved rounds).",
        "",
        f"Medians of {meta['repeats']} interleaved rounds after {meta['warmup']} warm-up call(s), one process per "
        "workload × implementation. Ratio = median / median of raw HF in the same attention implementation "
        "(for `cache_all` on an eager model: HF eager). Memory: peak RSS (getrusage) minus the peak once the "
        "model was loaded, MB; for caches, the MB of tensors the cache holds is in brackets. CPU = the same ratio "
        "from each call's thread CPU time (`time.thread_time`), which other processes' load does not inflate; "
        "the verdict reads the wall-clock ratio.",
        "",
        "Models: " + "; ".join(f"`{k}` = {d}" for k, d in meta["models"].items()) + ". Generation: batch 1 × 32 "
        "prompt, 32 new tokens, greedy, steering vector added at the middle block's `hook_resid_post` "
        "(HF: plain `generate`, no hook).",
        "",
        "| comparison | HF ms | bridge-core ms | ratio | CPU | budget | | TL 4.3 ms | TL ratio | TL CPU | nnsight ms "
        "| nnsight ratio | nnsight CPU | peak extra MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for comp in data["comparisons"]:
        r = comp["results"]
        bc = r.get("bridge_core")
        tl, nn = r.get("transformer_lens"), r.get("nnsight")
        verdict = r.get("verdict") or ""
        budget = _budget(comp) + (f" ({comp['budget_note']})" if comp["budget_note"] else "")
        lines.append(
            f"| {comp['id']} | {_ms(r.get('hf'))} | {_ms(bc)} | {_ratio(bc)} | {_ratio(bc, 'cpu_ratio')} | {budget} "
            f"| **{verdict}** | {_ms(tl)} | {_ratio(tl)} | {_ratio(tl, 'cpu_ratio')} | {_ms(nn)} | {_ratio(nn)} "
            f"| {_ratio(nn, 'cpu_ratio')} | {_mem(comp, label)} |"
        )
        if bc and "bit_identical" in bc:
            same = "bit-identical" if bc["bit_identical"] else f"NOT bit-identical (max |Δ| {bc['max_abs_diff']:.2e})"
            notes.append(f"- {comp['id']}: bridge-core logits vs HF: {same}.")
        cold = {impl: e["cold_build_ms"] for impl, e in r.items() if isinstance(e, dict) and "cold_build_ms" in e}
        if cold:
            notes.append(
                f"- {comp['id']}: first build in a fresh process (spec and plugin loading included): "
                + ", ".join(f"{label[i]} {ms:.0f} ms" for i, ms in cold.items())
            )
        for impl, entry in r.items():
            if isinstance(entry, dict) and entry.get("error"):
                notes.append(f"- {comp['id']}: {label[impl]} could not run it: `{entry['error'][:200]}`")
    lines += ["", *notes]
    missing = [c["id"] for c in data["comparisons"] if c["results"].get("verdict") == "MISS"]
    passed = [c["id"] for c in data["comparisons"] if c["results"].get("verdict") == "pass"]
    lines += [
        "",
        f"Budgets: {len(passed)} pass, {len(missing)} miss" + (f" ({', '.join(missing)})." if missing else "."),
    ]
    if data["scaling"]:
        lines += ["", *scaling_lines(data["scaling"])]
    if data["profiles"]:
        lines += ["", "## Where the time goes (cProfile of bridge-core on each missed budget)", ""]
        for comp_id, text in data["profiles"].items():
            lines += [f"### {comp_id}", "", "```", _trim(text), "```", ""]
    if analysis is not None and analysis.exists():
        lines += ["", analysis.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def scaling_lines(rows: list[dict]) -> list[str]:
    """The scaling tables: cost against layers and sequence length, and against hooks cached."""
    lines = ["## Scaling (bridge-core vs HF eager forward, GPT-2-shaped d 256, 8 heads, batch 1)", ""]
    lines += [
        "| axis | value | HF fwd ms | BC fwd ratio | BC cache ms | BC cache ratio |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        med, ratio = row["median_ms"], row["ratio"]
        if row["axis"] in ("hooks", "stop_at_layer"):
            continue
        lines.append(
            f"| {row['axis']} | {row['value']} | {med.get('hf', 0):.1f} | {ratio.get('forward', 0):.3f}× | "
            f"{med.get('cache_all', 0):.1f} | {ratio.get('cache_all', 0):.3f}× |"
        )
    for row in rows:
        if row["axis"] == "hooks":
            lines += ["", f"Hooks cached (6 layers, seq 128; HF forward {row['median_ms'].get('hf', 0):.1f} ms):", ""]
            lines += ["| hooks cached | BC ms | ratio to HF |", "|---|---|---|"]
            for name, ms in row["median_ms"].items():
                if name != "hf":
                    lines.append(f"| {name.split('_')[1]} | {ms:.1f} | {row['ratio'][name]:.3f}× |")
    for row in rows:
        if row["axis"] == "stop_at_layer":
            lines += stop_at_lines(row)
    return lines


def stop_at_lines(row: dict) -> list[str]:
    """`stop_at_layer=k` against the full bridge forward: the cost should be about k / n of it."""
    med = row["median_ms"]
    full = med.get("forward", 0)
    lines = ["", f"stop_at_layer=k ({row['shape']}; HF forward {med.get('hf', 0):.1f} ms, bridge {full:.1f} ms):", ""]
    lines += ["| k (blocks run) | BC ms | share of the full bridge forward | k / 12 |", "|---|---|---|---|"]
    for name, ms in med.items():
        if name.startswith("stop_"):
            k = int(name.split("_")[1])
            lines.append(f"| {k} | {ms:.1f} | {ms / full:.3f} | {k / 12:.3f} |" if full else f"| {k} | {ms:.1f} | | |")
    return lines


def _trim(text: str, limit: int = 60) -> str:
    """The profile's table rows, without pstats' blank lines and headers repeated."""
    rows = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(rows[:limit])
