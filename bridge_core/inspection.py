"""`bridge-core inspect ARCH`: one forward with the cache, and everything a newcomer wants to see.

Registered by the core CLI through `register(subparsers)`. `inspect_bridge(bridge, ...)` returns the
same report as a plain dict (what `--json` prints); `docs/gen_reference.py` reuses its tables.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BridgeCoreError, TokenizerError
from .records import record

if TYPE_CHECKING:  # torch and rich are imported where they are used, so `bridge-core --help` stays light
    import torch
    from rich.console import Console

ATTENTION_VIEWS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
GQA_VIEWS = ("W_K_raw", "W_V_raw")  # [n_kv_heads, ...]: only worth showing when n_kv_heads != n_heads
LATENT_VIEWS = ("W_Q_a", "b_Q_a", "W_Q_b", "W_KV_a", "b_KV_a", "W_K_rope", "b_K_rope", "W_K_b", "W_V_b")
MLP_VIEWS = ("W_in", "W_gate", "W_out", "b_in", "b_gate", "b_out")
NORMS = ("ln1", "ln2", "ln3")
MODEL_VIEWS = ("W_E", "W_pos", "W_U", "b_U")


# ---------------------------------------------------------------------------------------------- building
def build_bridge(arch: str | None, model: str | None = None, seed: int = 0):
    """A bridge on a checkpoint (`model`), or on a tiny random model built from the spec `arch`."""
    from .bridge import Bridge, loading

    if model:
        # a local path that does not exist is one line, not transformers' hub repo-id traceback
        model = loading.require_checkpoint(model)
        return Bridge.from_pretrained(model, spec=None if arch in (None, "auto") else arch)
    if arch in (None, "auto"):
        raise BridgeCoreError("name an architecture (a registered spec or a spec file), or give --model PATH")
    return Bridge.from_spec(arch, tiny=True, seed=seed)


def spec_source(bridge) -> dict[str, Any]:
    """Where the bridge's spec came from: its registry origin (`builtin`, `path:DIR`, a distribution) and file."""
    name, file = bridge.spec.name, bridge.spec_file
    origin = "file"
    try:
        if bridge.registry.file(name) == file:
            origin = bridge.registry.origin(name)
    except BridgeCoreError:
        pass
    return {"name": name, "origin": origin, "file": file, "extends": bridge.spec.extends}


# ---------------------------------------------------------------------------------------------- inputs
@record
class Inputs:
    """What `inspect` feeds the model: token ids `[1, pos]`, and the decoder's for encoder-decoders."""

    tokens: torch.Tensor
    decoder_input_ids: torch.Tensor | None
    source: str  # "prompt" or "random"

    def kwargs(self) -> dict[str, Any]:
        return {} if self.decoder_input_ids is None else {"decoder_input_ids": self.decoder_input_ids}


def decoder_start_token(bridge) -> int:
    config = bridge.model.config
    for name in ("decoder_start_token_id", "pad_token_id", "bos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return 0


def make_inputs(bridge, prompt: str | None = None, seq: int = 8, seed: int = 0, decoder_len: int = 4) -> Inputs:
    """The prompt's tokens (needs a tokenizer), or `seq` random token ids. An encoder-decoder's decoder gets
    its start token, followed by `decoder_len - 1` random tokens when there is no prompt."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    if prompt is not None:
        if bridge.tokenizer is None:
            raise TokenizerError(
                "--prompt needs a tokenizer, and this bridge has none (a tiny model built from a spec never has "
                "one). Leave out --prompt to run on random token ids, or pass --model PATH for a checkpoint that "
                "ships its tokenizer files."
            )
        tokens, source = bridge.to_tokens(prompt, move_to_device=False), "prompt"
    else:
        seq = min(seq, bridge.cfg.n_ctx or seq)
        tokens, source = torch.randint(0, bridge.cfg.d_vocab, (1, seq), generator=generator), "random"
    decoder = None
    if bridge.is_encoder_decoder:
        start = torch.tensor([[decoder_start_token(bridge)]])
        extra = 0 if prompt is not None else max(decoder_len - 1, 0)
        decoder = torch.cat([start, torch.randint(0, bridge.cfg.d_vocab, (1, extra), generator=generator)], dim=1)
    return Inputs(tokens, decoder, source)


def token_labels(bridge, ids: torch.Tensor) -> list[str]:
    """Each token as a string when there is a tokenizer, else its id."""
    ids = ids.reshape(-1).tolist()
    if bridge.tokenizer is None:
        return [str(i) for i in ids]
    return [bridge.tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]


# ---------------------------------------------------------------------------------------------- tables
def run_and_count(bridge, inputs: Inputs) -> tuple[torch.Tensor, Any, list[dict[str, Any]]]:
    """One forward with the full cache and a counter on every hook point: logits, cache, hook rows."""
    import torch

    fires: dict[str, int] = {}

    def count(tensor: torch.Tensor, hook) -> None:
        fires[hook.name] = fires.get(hook.name, 0) + 1

    with torch.no_grad(), bridge.hooks(fwd_hooks=[(lambda name: True, count)]):
        logits, cache = bridge.run_with_cache(inputs.tokens, **inputs.kwargs())
    rows = [
        {"name": name, "shape": list(cache[name].shape) if name in cache else None, "fires": fires.get(name, 0)}
        for name in bridge.hook_names()
    ]
    return logits, cache, rows


def _stacks(bridge) -> list[tuple[str, list]]:
    if bridge.encoder is not None:
        return [("encoder", bridge.encoder), ("decoder", bridge.decoder)]
    return [("blocks", bridge.blocks)]


def _view(owner: Any, name: str) -> tuple[list[int] | None, str | None]:
    try:
        value = getattr(owner, name)
    except (AttributeError, BridgeCoreError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return (None, None) if value is None else (list(value.shape), None)


def weight_views(bridge) -> list[dict[str, Any]]:
    """Every weight view the bridge offers, with its shape: per block (`blocks.0.attn.W_Q`, for T5
    `encoder.0...` / `decoder.0.cross_attn...`), then the model's (`W_E`, `W_pos`, `W_U`, `b_U`).
    Views that do not exist for this model (no gate, no norm bias, no position table) are left out."""
    rows: list[dict[str, Any]] = []

    def add(name: str, owner: Any, attr: str, access: str) -> None:
        shape, error = _view(owner, attr)
        if shape is not None or (error and "has no" not in error):
            rows.append({"name": name, "shape": shape, "access": access, **({"error": error} if error else {})})

    gqa = bridge.cfg.n_kv_heads != bridge.cfg.n_heads
    for stack, blocks in _stacks(bridge):
        for i, block in enumerate(blocks):
            for part in ("attn", "cross_attn"):
                attn = getattr(block, part, None)
                if attn is None:
                    continue
                latent = LATENT_VIEWS if attn.bound.latent is not None else ()  # MLA's factored views
                for attr in ATTENTION_VIEWS + (GQA_VIEWS if gqa else ()) + latent:
                    add(f"{stack}.{i}.{part}.{attr}", attn, attr, f"bridge.{stack}[{i}].{part}.{attr}")
            for attr in MLP_VIEWS:
                add(f"{stack}.{i}.mlp.{attr}", block.mlp, attr, f"bridge.{stack}[{i}].mlp.{attr}")
            # a mixture of experts: each expert's views, and the shared expert's (bridge/moe_weights.py)
            parts = [(f"experts.{e}", f"experts[{e}]", x) for e, x in enumerate(getattr(block.mlp, "experts", ()))]
            shared = getattr(block.mlp, "shared_expert", None)
            parts += [("shared_expert", "shared_expert", shared)] if shared is not None else []
            for name, access, owner in parts:
                for attr in ("W_in", "W_gate", "W_out"):
                    add(f"{stack}.{i}.mlp.{name}.{attr}", owner, attr, f"bridge.{stack}[{i}].mlp.{access}.{attr}")
            for norm in NORMS:
                owner = getattr(block, norm, None)
                if owner is not None:
                    for attr in ("w", "b"):
                        add(f"{stack}.{i}.{norm}.{attr}", owner, attr, f"bridge.{stack}[{i}].{norm}.{attr}")
    for attr in MODEL_VIEWS:
        add(attr, bridge, attr, f"bridge.{attr}")
    return rows


_BLOCK_NAME = re.compile(r"^(\w+)\.(\d+)\.(.+)$")


def group_by_layer(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows `stack.i.rest` with the same shape folded into one `stack.*.rest` row with their layers."""
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        match = _BLOCK_NAME.match(row["name"])
        name, layer = (f"{match[1]}.*.{match[3]}", int(match[2])) if match else (row["name"], None)
        key = (name, str(row["shape"]))
        entry = grouped.setdefault(key, {**row, "name": name, "layers": []})
        if layer is not None:
            entry["layers"].append(layer)
    return list(grouped.values())


def layer_ranges(layers: list[int]) -> str:
    """`[0, 1, 2, 5]` -> `0-2, 5`."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and runs[-1][1] == layer - 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def top_tokens(bridge, logits: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
    """The `k` most likely next tokens after the last position, with probability (and text with a tokenizer)."""
    last = logits[0, -1].float()
    probs = last.softmax(-1)
    values, ids = probs.topk(min(k, probs.shape[-1]))
    labels = token_labels(bridge, ids) if bridge.tokenizer is not None else [None] * len(ids)
    return [
        {"id": int(i), "token": label, "prob": round(float(p), 6), "logit": round(float(last[i]), 6)}
        for i, p, label in zip(ids.tolist(), values.tolist(), labels, strict=True)
    ]


# ---------------------------------------------------------------------------------------------- plots
def attention_panels(bridge, cache: Any, inputs: Inputs) -> dict[str, list]:
    """Per layer label (`0`, `encoder.1`, `decoder.0`), the attention patterns of its heads, labelled."""
    from .plots import PatternPanel

    source = token_labels(bridge, inputs.tokens)
    target = token_labels(bridge, inputs.decoder_input_ids) if inputs.decoder_input_ids is not None else source
    layers: dict[str, list] = {}
    for name in bridge.hook_names():
        if not name.endswith(".hook_pattern") or name not in cache:
            continue
        block, attention, _ = name.rsplit(".", 2)
        label = block.removeprefix("blocks.")
        encoder_side = block.startswith("encoder.")
        queries = source if encoder_side else target
        keys = source if (encoder_side or attention == "cross_attn") else target
        panel = PatternPanel(attention, cache[name][0], queries, keys)
        layers.setdefault(label, []).append(panel)
    return layers


def plot_attention(bridge, cache: Any, inputs: Inputs, directory: str | Path) -> list[str]:
    """One PNG per layer in `directory` (every head of every attention of that layer), and beside it the
    circuitsvis-compatible `.json` and an offline `.html` page of the same patterns; the PNG paths."""
    from .plots import file_name, plot_layer, write_layer_page

    written = []
    arch = bridge.cfg.architecture
    for label, panels in attention_panels(bridge, cache, inputs).items():
        title = f"{arch} layer {label}: attention patterns (rows: query, columns: key)"
        write_layer_page(panels, directory, file_name(label).removesuffix(".png"), title)  # .json + .html beside
        written.append(str(plot_layer(panels, Path(directory) / file_name(label), title)))
    return written


# ---------------------------------------------------------------------------------------------- report
def _model_source(bridge, model: str | None, seed: int) -> str:
    return model if model else f"tiny random model from the spec's test_config (seed {seed})"


def inspect_bridge(
    bridge,
    prompt: str | None = None,
    *,
    seq: int = 8,
    seed: int = 0,
    top_k: int = 5,
    plot_dir: str | Path | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Everything `bridge-core inspect` shows, as JSON-ready data (one forward with the cache)."""
    inputs = make_inputs(bridge, prompt, seq=seq, seed=seed)
    logits, cache, hooks = run_and_count(bridge, inputs)
    n_params = sum(p.numel() for p in bridge.model.parameters())
    report: dict[str, Any] = {
        "architecture": bridge.cfg.architecture,
        "spec": spec_source(bridge),
        "model": {
            "class": type(bridge.model).__name__,
            "source": _model_source(bridge, model, seed),
            "parameters": n_params,
            "dtype": str(next(bridge.model.parameters()).dtype).removeprefix("torch."),
            "tokenizer": type(bridge.tokenizer).__name__ if bridge.tokenizer is not None else None,
            "encoder_decoder": bridge.is_encoder_decoder,
        },
        "config": {k: v for k, v in bridge.cfg.to_dict().items()},
        "input": {
            "source": inputs.source,
            "prompt": prompt,
            "tokens": inputs.tokens[0].tolist(),
            "str_tokens": token_labels(bridge, inputs.tokens) if bridge.tokenizer is not None else None,
            "decoder_input_ids": None if inputs.decoder_input_ids is None else inputs.decoder_input_ids[0].tolist(),
        },
        "logits_shape": list(logits.shape),
        "hooks": hooks,
        "weights": weight_views(bridge),
        "top_tokens": top_tokens(bridge, logits, top_k),
        "plots": plot_attention(bridge, cache, inputs, plot_dir) if plot_dir is not None else [],
    }
    report["ok"] = all(row["fires"] == 1 for row in hooks)
    return report


# ---------------------------------------------------------------------------------------------- output
def _shape(shape: list[int] | None) -> str:
    return "—" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def render(report: dict[str, Any], console: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    """The report as rich tables: spec and model, config, hooks, weight views, top tokens, plots."""
    spec, model = report["spec"], report["model"]
    console.rule(f"[bold]{escape(report['architecture'])}[/]  ·  {escape(model['class'])}")
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    extends = f" (extends {spec['extends']})" if spec.get("extends") else ""
    origin = f"[cyan]{escape(spec['origin'])}[/]"
    head.add_row("spec", f"{escape(spec['name'] + extends)} — origin {origin}, file {escape(str(spec['file']))}")
    head.add_row("model", escape(f"{model['source']}; {model['parameters']:,} parameters, {model['dtype']}"))
    head.add_row("tokenizer", escape(model["tokenizer"] or "none (token ids are shown instead of text)"))
    given = report["input"]
    text = f"{given['source']} tokens {given['tokens']}"
    if given["str_tokens"] is not None:
        text += f"\n{given['str_tokens']}"
    if given["decoder_input_ids"] is not None:
        text += f"\ndecoder_input_ids {given['decoder_input_ids']} (decoder start token first)"
    head.add_row("input", escape(text))
    head.add_row("logits", _shape(report["logits_shape"]))
    console.print(head)

    config = Table(title="normalized config (bridge.cfg)", title_justify="left")
    config.add_column("field")
    config.add_column("value")
    for key, value in report["config"].items():
        config.add_row(key, escape(str(value)))
    console.print(config)

    hooks = Table(title="hook points (one forward)", title_justify="left")
    hooks.add_column("hook name")
    hooks.add_column("shape")
    hooks.add_column("fires", justify="right")
    for row in report["hooks"]:
        style = None if row["fires"] == 1 else "bold red"
        hooks.add_row(escape(row["name"]), _shape(row["shape"]), str(row["fires"]), style=style)
    console.print(hooks)

    weights = Table(title="weight views (per block: the same shape in the layers listed)", title_justify="left")
    weights.add_column("view")
    weights.add_column("shape")
    weights.add_column("layers")
    for row in group_by_layer(report["weights"]):
        shape = _shape(row["shape"]) if "error" not in row else f"[red]{escape(row['error'])}[/]"
        weights.add_row(escape(row["name"]), shape, layer_ranges(row["layers"]))
    console.print(weights)

    top = Table(title="top predicted next tokens (last position)", title_justify="left")
    top.add_column("rank", justify="right")
    top.add_column("id", justify="right")
    top.add_column("token")
    top.add_column("prob", justify="right")
    for rank, row in enumerate(report["top_tokens"], 1):
        token = repr(row["token"]) if row["token"] is not None else "—"
        top.add_row(str(rank), str(row["id"]), escape(token), f"{row['prob']:.4f}")
    console.print(top)
    if report["plots"]:
        console.print(escape(f"wrote {len(report['plots'])} attention plot(s): {', '.join(report['plots'])}"))
    summary(report, console)


def summary(report: dict[str, Any], console: Console) -> None:
    from rich.markup import escape

    dead = [row for row in report["hooks"] if row["fires"] != 1]
    for row in dead:
        console.print(f"[bold red]hook {escape(row['name'])} fired {row['fires']} times (expected once)[/]")
    n = len(report["hooks"])
    state = "[green]all fired once[/]" if not dead else f"[bold red]{len(dead)} did not fire exactly once[/]"
    plots = f", {len(report['plots'])} plot(s) written" if report["plots"] else ""
    console.print(
        f"{escape(report['architecture'])}: {report['config']['n_layers']} layers, {n} hook points {state}, "
        f"{len(report['weights'])} weight views{plots}"
    )


def cmd_inspect(args: argparse.Namespace) -> int:
    bridge = build_bridge(args.arch, args.model, args.seed)
    report = inspect_bridge(
        bridge,
        args.prompt,
        seq=args.seq,
        seed=args.seed,
        top_k=args.top_k,
        plot_dir=args.plot_attention,
        model=args.model,
    )
    from rich.console import Console

    if args.json:
        print(json.dumps(report, indent=2, default=str))
    elif args.quiet:
        summary(report, Console(highlight=False))
    else:
        render(report, Console(highlight=False))
    return 0 if report["ok"] else 1


def register(sub: Any) -> None:
    inspect = sub.add_parser(
        "inspect",
        help="one forward with the cache: spec origin, config, hooks, weight views, top tokens (and plots)",
        description="Build the bridge (a tiny random model from the spec unless --model is given), run one "
        "forward with the cache and show what there is to see.",
    )
    from .cli import add_model_source  # here, not at the top: the CLI imports this module

    add_model_source(inspect)
    inspect.add_argument("--prompt", help="text to run (needs a tokenizer: a checkpoint's, via --model)")
    inspect.add_argument("--plot-attention", metavar="DIR", help="write one PNG of attention patterns per layer")
    inspect.add_argument("--seq", type=int, default=8, help="length of the random input (without --prompt)")
    inspect.add_argument("--top-k", type=int, default=5, help="how many predicted tokens to show")
    inspect.add_argument("--seed", type=int, default=0, help="seed of the tiny model and the random input")
    inspect.add_argument("--json", action="store_true", help="print the whole report as JSON to stdout")
    inspect.add_argument("-q", "--quiet", action="store_true", help="one summary line (and any hook that misfired)")
    inspect.set_defaults(func=cmd_inspect)
