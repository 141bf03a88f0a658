"""bridge-core against raw HF, TransformerLens 4.3 and nnsight 0.8: `python benchmarks/run.py [--quick]`.

Each comparison forks one worker process per implementation (raw HF included), warms each up,
then times them in interleaved rounds (the order rotates every round) and compares medians.
Writes `latest.md` and `latest.json` under `--out`; budgets are the project's (docs/architecture.md#performance).
Run inside `.venv-bench` (made by `benchmarks/setup.sh`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
import transformers  # noqa: E402
import transformers.models.gemma.modeling_gemma  # noqa: E402
import transformers.models.gpt2.modeling_gpt2  # noqa: E402, F401
import worker  # noqa: E402
import workloads  # noqa: E402
from workloads import MODELS, ModelShape  # noqa: E402

LABEL = {"hf": "HF", "bridge_core": "bridge-core", "transformer_lens": "TransformerLens 4.3", "nnsight": "nnsight"}


@dataclass
class Comparison:
    """One workload, run by several implementations, compared with raw HF (or with a budget in ms)."""

    id: str
    model: str
    workload: str
    attn: str  # the attention implementation the model is loaded with
    impls: tuple[str, ...]
    budget: float | None = None  # a ratio, or milliseconds when `workload == "build"`
    budget_note: str = ""
    baseline_attn: str | None = None  # HF is run with this implementation (default: `attn`)
    quick: bool = False
    results: dict = field(default_factory=dict)


ALL3 = ("bridge_core", "transformer_lens", "nnsight")
ANALOGY = "GPT-2 budget applied by analogy"
COMPARISONS = [
    Comparison("gpt2s/forward/eager", "gpt2s", "forward", "eager", ALL3, 1.01, "logits bit-identical", quick=True),
    Comparison("gpt2s/forward/sdpa", "gpt2s", "forward", "sdpa", ALL3, 1.01),
    Comparison("gpt2s/cache_all", "gpt2s", "cache_all", "eager", ALL3, 1.03, quick=True),
    Comparison("gpt2s/cache_all+result", "gpt2s", "cache_all_result", "eager", ALL3[:2], 1.08),
    Comparison("gpt2s/cache_resid_post/sdpa", "gpt2s", "cache_resid_post", "sdpa", ALL3, 1.02),
    Comparison("gpt2s/pattern_hook/sdpa", "gpt2s", "pattern_hook", "sdpa", ALL3[:2]),
    Comparison("gpt2s/generate/sdpa", "gpt2s", "generate", "sdpa", ALL3),
    Comparison("gpt2s/build", "gpt2s", "build", "eager", ALL3, 20.0, "ms, absolute", quick=True),
    Comparison("tiny/forward/eager", "tiny", "forward", "eager", ALL3, 1.05, quick=True),
    Comparison("tiny/cache_all", "tiny", "cache_all", "eager", ALL3, 1.25, quick=True),
    Comparison("tiny/cache_all+result", "tiny", "cache_all_result", "eager", ALL3[:2]),
    Comparison("tiny/generate/eager", "tiny", "generate", "eager", ALL3),
    Comparison("gemma/forward/sdpa", "gemma", "forward", "sdpa", ALL3, 1.01, ANALOGY),
    Comparison("gemma/cache_all", "gemma", "cache_all", "eager", ALL3, 1.05, ANALOGY),
    Comparison("gemma/cache_resid_post/sdpa", "gemma", "cache_resid_post", "sdpa", ALL3, 1.02, ANALOGY),
    Comparison("gemma/pattern_hook/sdpa", "gemma", "pattern_hook", "sdpa", ALL3[:2]),
    Comparison("gemma/generate/sdpa", "gemma", "generate", "sdpa", ALL3),
]


class Worker:
    """A forked worker process and its end of the pipe."""

    def __init__(self, impl: str, shape: ModelShape, attn: str, ops: dict, threads: int, measure_result: bool):
        context = multiprocessing.get_context("fork")
        self.conn, child = context.Pipe()
        job = {"impl": impl, "shape": asdict(shape), "attn": attn, "ops": ops, "threads": threads,
               "measure_result": measure_result}  # fmt: skip
        self.process = context.Process(target=worker.serve, args=(child, job), daemon=True)
        self.process.start()
        child.close()
        self.impl = impl
        self.error: str | None = None
        self.info: dict = {}
        self.cpu: dict[str, list[float]] = {}  # thread CPU seconds of each timed call, by op

    def run(self, op: str, n: int) -> list[float]:
        """Time `n` calls of `op`: their wall-clock seconds; their CPU seconds are kept in `cpu[op]`."""
        got = self.ask("run", op, n)
        if not got:
            return []
        self.cpu.setdefault(op, []).extend(got["cpu"])
        return got["wall"]

    def ask(self, *message, timeout: float = 600):
        if self.error:
            return None
        if message:
            self.conn.send(message)
        if not self.conn.poll(timeout):
            self.error = f"no answer within {timeout:.0f} s"
            return None
        kind, payload = self.conn.recv()
        if kind == "error":
            self.error = payload.strip().splitlines()[0] if payload else "error"
            self.trace = payload
            return None
        return payload

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)


def run_comparison(comp: Comparison, repeats: int, warmup: int, threads: int, log) -> None:
    shape = MODELS[comp.model]
    impls = ([] if comp.workload == "build" else ["hf"]) + list(comp.impls)
    started = time.perf_counter()
    workers = {}
    for impl in impls:
        attn = (comp.baseline_attn or comp.attn) if impl == "hf" else comp.attn
        # raw HF runs a plain forward for every forward-type workload: that is what each is compared with
        workload = "forward" if impl == "hf" and comp.workload != "generate" else comp.workload
        measure = comp.workload.startswith("cache") and impl != "hf"
        workers[impl] = Worker(impl, shape, attn, {"main": {"workload": workload}}, threads, measure)
    try:
        for w in workers.values():
            w.info = w.ask() or {}
        slowest = 0.0
        for w in workers.values():
            slowest = max(slowest, (w.run("main", warmup) or [0.0])[-1])
            w.cpu.clear()  # warm-up calls are not measured
        # fast workloads run several calls per turn (all timed one by one), so a round lasts ~0.2 s
        per_turn = max(1, min(20, int(0.2 / max(slowest, 1e-4))))
        times: dict[str, list[float]] = {impl: [] for impl in impls}
        for round_ in range(repeats):
            order = impls[round_ % len(impls) :] + impls[: round_ % len(impls)]
            for impl in order:
                got = workers[impl].run("main", per_turn)
                if got:
                    times[impl] += got
        for impl, w in workers.items():
            done = w.ask("finish") or {}
            entry = {"n": len(times[impl]), **done}
            if times[impl]:
                entry["median_ms"] = 1e3 * statistics.median(times[impl])
                entry["min_ms"] = 1e3 * min(times[impl])
                entry["times_ms"] = [round(1e3 * t, 3) for t in times[impl]]
            if w.cpu.get("main"):
                entry["cpu_median_ms"] = 1e3 * statistics.median(w.cpu["main"])
            if w.info.get("cold_build_s") is not None:
                entry["cold_build_ms"] = 1e3 * w.info["cold_build_s"]
            if w.error:
                entry["error"] = w.error
            comp.results[impl] = entry
    finally:
        for w in workers.values():
            w.close()
    base = comp.results.get("hf", {}).get("median_ms")
    cpu_base = comp.results.get("hf", {}).get("cpu_median_ms")
    for impl, entry in comp.results.items():
        if base and "median_ms" in entry and impl != "hf":
            entry["ratio"] = entry["median_ms"] / base
        if cpu_base and "cpu_median_ms" in entry and impl != "hf":
            entry["cpu_ratio"] = entry["cpu_median_ms"] / cpu_base
    log(f"{comp.id:32s} {time.perf_counter() - started:6.1f} s  " + "  ".join(
        f"{LABEL[i]}={e['median_ms']:.1f}ms" if "median_ms" in e else f"{LABEL[i]}=ERR({e.get('error', '')[:60]})"
        for i, e in comp.results.items()))  # fmt: skip


def verdict(comp: Comparison) -> str | None:
    entry = comp.results.get("bridge_core", {})
    if comp.budget is None or "median_ms" not in entry:
        return None
    if comp.workload == "build":
        return "pass" if entry["median_ms"] <= comp.budget else "MISS"
    ok = entry.get("ratio", float("inf")) <= comp.budget
    if comp.workload == "forward" and comp.budget_note.startswith("logits") and not entry.get("bit_identical", False):
        ok = False
    return "pass" if ok else "MISS"


def profile_misses(comps: list[Comparison], threads: int, log) -> dict[str, str]:
    """cProfile of bridge-core on every comparison whose budget it missed (build excluded)."""
    profiles = {}
    for comp in comps:
        if comp.results.get("verdict") != "MISS":
            continue
        workload = comp.workload
        ops = {"main": {"workload": workload}}
        w = Worker("bridge_core", MODELS[comp.model], comp.attn, ops, threads, False)
        try:
            if w.ask() is None:
                continue
            w.run("main", 1)
            n = 3 if comp.model == "gpt2s" else 20
            text = w.ask("profile", "main", n)
            if text:
                profiles[comp.id] = f"{n} calls\n" + text
                log(f"profiled {comp.id}")
        finally:
            w.close()
    return profiles


def run_scaling(threads: int, repeats: int, log) -> list[dict]:
    """bridge-core's forward and full cache against HF forward (eager), along three axes."""
    rows = []
    base = dict(family="gpt2", d_model=256, heads=8, kv_heads=8, vocab=workloads.VOCAB, batch=1)
    points = [("layers", n, ModelShape(layers=n, seq=128, **base)) for n in (2, 6, 12, 24)]
    points += [("seq", n, ModelShape(layers=6, seq=n, **base)) for n in (32, 128, 512, 1024)]
    hooks_shape = ModelShape(layers=6, seq=128, **base)
    for axis, value, shape in points:
        ops = {"forward": {"workload": "forward"}, "cache_all": {"workload": "cache_all"}}
        rows.append(_scale_point(axis, value, shape, ops, threads, repeats))
        log(f"scaling {axis}={value}")
    ops = {f"cache_{n}": {"workload": "cache_n", "kwargs": {"n_hooks": n}} for n in (1, 10, 40, 115)}
    rows.append(_scale_point("hooks", "1/10/40/115", hooks_shape, ops, threads, repeats))
    log("scaling hooks")
    rows.append(stop_at_scaling(threads, repeats))
    log("scaling stop_at_layer")
    return rows


STOP_AT = (0, 1, 3, 6, 9, 12)


def stop_at_scaling(threads: int, repeats: int) -> dict:
    """`bridge(tokens, stop_at_layer=k)` on 12 layers: its cost should grow with k, the blocks it runs."""
    base = dict(family="gpt2", d_model=256, heads=8, kv_heads=8, vocab=workloads.VOCAB, batch=1)
    shape = ModelShape(layers=12, seq=128, **base)
    ops = {f"stop_{k}": {"workload": "stop_at", "kwargs": {"stop_at": k}} for k in STOP_AT}
    ops["forward"] = {"workload": "forward"}
    return _scale_point("stop_at_layer", "/".join(map(str, STOP_AT)), shape, ops, threads, repeats)


def _scale_point(axis, value, shape, ops, threads, repeats) -> dict:
    hf = Worker("hf", shape, "eager", {"forward": {"workload": "forward"}}, threads, False)
    bc = Worker("bridge_core", shape, "eager", ops, threads, False)
    times: dict[str, list[float]] = {"hf": [], **{k: [] for k in ops}}
    try:
        hf.ask(), bc.ask()
        hf.run("forward", 1)
        for name in ops:
            bc.run(name, 1)
        for _ in range(repeats):
            times["hf"] += hf.run("forward", 1)
            for name in ops:
                times[name] += bc.run(name, 1)
    finally:
        hf.close(), bc.close()
    med = {k: 1e3 * statistics.median(v) for k, v in times.items() if v}
    return {"axis": axis, "value": value, "shape": shape.describe(), "median_ms": med,
            "ratio": {k: v / med["hf"] for k, v in med.items() if k != "hf" and "hf" in med},
            "error": hf.error or bc.error}  # fmt: skip


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("torch", "transformers", "bridge-core", "transformer-lens", "nnsight"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small set, fewer repeats (about a minute)")
    parser.add_argument("--full", action="store_true", help="the default: every comparison and the scaling table")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for latest.md and latest.json")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch.set_num_threads in every worker (default: 2, the core count of the reference machine; "
        "1 when the machine is already loaded, where two OpenMP threads wait on each other at every op)",
    )
    parser.add_argument("--repeats", type=int, help="timed rounds (default 10; 3 with --quick)")
    parser.add_argument("--only", help="run only comparisons whose id contains this")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--scaling-only", action="store_true", help="only the scaling tables, to results/scaling.md")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--stop-at-only", action="store_true", help="only the stop_at_layer table, to results/stop_at.md"
    )
    args = parser.parse_args(argv)
    if args.threads is None:
        busy = os.getloadavg()[0] > (os.cpu_count() or 2) - 0.5
        args.threads = 1 if busy else min(2, os.cpu_count() or 2)
    repeats = args.repeats or (3 if args.quick else 10)
    warmup = 1 if args.quick else 2
    comps = [c for c in COMPARISONS if (c.quick or not args.quick) and (not args.only or args.only in c.id)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(text: str) -> None:
        print(text, flush=True)

    if args.stop_at_only:
        lines = report.stop_at_lines(stop_at_scaling(args.threads, repeats))
        (out / "stop_at.md").write_text(
            "\n".join([f"# bridge-core stop_at_layer (threads {args.threads})", *lines]) + "\n"
        )
        log("\n".join(lines))
        return 0
    if args.scaling_only:
        rows = run_scaling(args.threads, repeats, log)
        header = [
            "# bridge-core scaling",
            "",
            f"Run {time.strftime('%Y-%m-%d %H:%M:%S')}: medians of {repeats} rounds, {args.threads} thread(s), "
            f"load average {os.getloadavg()[0]:.1f}; machine as in latest.md.",
            "",
        ]
        (out / "scaling.md").write_text("\n".join(header + report.scaling_lines(rows)) + "\n")
        log(f"wrote {out / 'scaling.md'}")
        return 0

    started = time.time()
    load_before = os.getloadavg()
    log(f"{len(comps)} comparisons, {repeats} rounds, {warmup} warm-up, {args.threads} threads")
    for comp in comps:
        run_comparison(comp, repeats, warmup, args.threads, log)
        comp.results["verdict"] = verdict(comp)
    profiles = {} if args.no_profile else profile_misses(comps, args.threads, log)
    scaling = [] if (args.quick or args.no_scaling or args.only) else run_scaling(args.threads, repeats, log)
    meta = {
        **machine(),
        "threads": args.threads,
        "mode": "quick" if args.quick else "full",
        "repeats": repeats,
        "warmup": warmup,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "models": {k: v.describe() for k, v in MODELS.items()},
    }
    data = {"meta": meta, "comparisons": [asdict(c) for c in comps], "scaling": scaling, "profiles": profiles}
    (out / "latest.json").write_text(json.dumps(data, indent=1))
    (out / "latest.md").write_text(report.markdown(data, LABEL, HERE / "results" / "analysis.md"))
    log(f"wrote {out / 'latest.md'} ({meta['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
