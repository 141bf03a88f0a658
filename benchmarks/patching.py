"""Activation-patching sweep throughput: `bridge_core.patching.patch_sweep` (batched) against one
forward per patch (bridge-core's run_with_hooks, plain HF pre-hooks as the nnsight-style loop, and
TransformerLens 3.9's `patching.get_act_patch_resid_pre` from .reference/tl39). Interleaved rounds, medians.

    .venv/bin/python benchmarks/patching.py [--shape tiny|gpt2s ...] [--repeats 3] [--out results/patching.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # name: (layers, d_model, heads, vocab, seq)
    "tiny": (4, 128, 4, 512, 8),
    "gpt2s": (12, 768, 12, 50257, 8),
}


def build(shape: str) -> tuple[GPT2LMHeadModel, torch.Tensor, torch.Tensor]:
    layers, d, heads, vocab, seq = SHAPES[shape]
    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_embd=d, n_head=heads, vocab_size=vocab, n_positions=64)
    model = GPT2LMHeadModel(config).eval()
    gen = torch.Generator().manual_seed(1)
    clean, corrupted = (torch.randint(0, vocab, (1, seq), generator=gen) for _ in range(2))
    return model, clean, corrupted


def metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 3] - logits[:, -1, 5]  # a logit difference at the last position


def implementations(model, clean, corrupted) -> dict[str, Callable[[], torch.Tensor]]:
    from bridge_core import Bridge
    from bridge_core.patching import patch_sweep

    bridge = Bridge.from_hf(model, spec="gpt2")
    n_layers, seq = model.config.n_layer, clean.shape[1]
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]

    def bridge_loop() -> torch.Tensor:
        _, cache = bridge.run_with_cache(clean, names_filter=names)
        out = torch.zeros(n_layers, seq)
        for layer, name in enumerate(names):
            for pos in range(seq):

                def patch(x, hook, name=name, pos=pos):
                    x[:, pos] = cache[name][:, pos]
                    return x

                out[layer, pos] = metric(bridge.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])).item()
        return out

    def hf_loop() -> torch.Tensor:  # what an nnsight-style trace per patch costs at least: one HF forward each
        blocks = model.transformer.h
        clean_in: list[torch.Tensor] = []
        handles = [b.register_forward_pre_hook(lambda m, a, k: clean_in.append(a[0]), with_kwargs=True) for b in blocks]
        model(clean)
        for h in handles:
            h.remove()
        out = torch.zeros(n_layers, seq)
        for layer, block in enumerate(blocks):
            for pos in range(seq):

                def patch(m, args, kwargs, layer=layer, pos=pos):
                    x = args[0].clone()
                    x[:, pos] = clean_in[layer][:, pos]
                    return (x, *args[1:]), kwargs

                handle = block.register_forward_pre_hook(patch, with_kwargs=True)
                out[layer, pos] = metric(model(corrupted).logits).item()
                handle.remove()
        return out

    impls = {
        "bridge-core patch_sweep": lambda: patch_sweep(bridge, clean, corrupted, metric),
        "bridge-core patch_sweep, logit_positions=-1:": lambda: patch_sweep(
            bridge, clean, corrupted, metric, logit_positions=slice(-1, None)
        ),
        "bridge-core loop": bridge_loop,
        "HF hooks loop (nnsight-style)": hf_loop,
    }
    sys.path.insert(0, str(ROOT))
    from tests.reference import hooked_transformer as ht

    if ht.available():
        from transformer_lens import patching

        hooked = ht.hooked_gpt2_from_hf(model)

        def tl39() -> torch.Tensor:
            _, cache = hooked.run_with_cache(clean)
            return patching.get_act_patch_resid_pre(hooked, corrupted, cache, metric)

        impls["TransformerLens 3.9 get_act_patch_resid_pre"] = tl39
    return impls


def measure(shape: str, repeats: int) -> list[str]:
    model, clean, corrupted = build(shape)
    impls = implementations(model, clean, corrupted)
    times: dict[str, list[float]] = {name: [] for name in impls}
    results = {}
    with torch.no_grad():
        for name, fn in impls.items():  # warm-up, and the values every implementation must agree on
            results[name] = fn()
        for round_ in range(repeats):
            order = list(impls)[round_ % len(impls) :] + list(impls)[: round_ % len(impls)]
            for name in order:
                start = time.perf_counter()
                impls[name]()
                times[name].append(time.perf_counter() - start)
    first = results["bridge-core patch_sweep"]
    n_patches = first.numel()
    base = statistics.median(times["bridge-core loop"])
    layers, d, _, vocab, seq = SHAPES[shape]
    lines = [
        f"### {shape}: {layers} layers, d_model {d}, vocab {vocab}, seq {seq}: {n_patches} resid_pre patches",
        "",
        "| implementation | median s / sweep | patches / s | × bridge-core loop | max abs diff vs sweep |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in impls:
        med = statistics.median(times[name])
        diff = (results[name].float() - first).abs().max().item()
        lines.append(f"| {name} | {med:.3f} | {n_patches / med:.0f} | {base / med:.2f} | {diff:.1e} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), help="default: tiny and gpt2s")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = [f"## Activation patching sweeps (torch threads {args.threads}, {args.repeats} interleaved rounds)", ""]
    for shape in args.shape or ["tiny", "gpt2s"]:
        lines += measure(shape, args.repeats)
        print("\n".join(lines), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
