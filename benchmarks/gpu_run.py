"""One short GPU benchmark: bridge-core against raw HF on GPT-2-small and a ~1B Llama shape in bf16
(forward, full cache, greedy generate with a steering hook, a resid_pre patching sweep). Random weights.

    python benchmarks/gpu_run.py [--out DIR]          # on a CUDA machine
    python benchmarks/gpu_run.py --cpu --tiny         # the reduced form the tests run, so it cannot rot
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

SHAPES = {  # name: (spec, config builder, batch, seq)
    "gpt2s": ("gpt2", lambda: GPT2Config(n_layer=12, n_embd=768, n_head=12), 8, 256),
    "llama1b": (
        "llama",
        lambda: LlamaConfig(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=2048,
        ),
        8,
        256,
    ),
    "gpt2-tiny": ("gpt2", lambda: GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=64), 2, 8),
    "llama-tiny": (
        "llama",
        lambda: LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=64,
            max_position_embeddings=64,
        ),
        2,
        8,
    ),
}


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def workloads(name: str, device: torch.device, dtype: torch.dtype) -> dict[str, dict[str, Callable[[], object]]]:
    """{workload: {"hf": fn, "bridge-core": fn}} on one random model shape."""
    from bridge_core import Bridge
    from bridge_core.patching import patch_sweep

    spec, config, batch, seq = SHAPES[name]
    torch.manual_seed(0)
    cfg = config()
    cls = GPT2LMHeadModel if spec == "gpt2" else LlamaForCausalLM
    model = cls(cfg).to(device=device, dtype=dtype).eval()
    bridge = Bridge.from_hf(model, spec=spec)
    vocab = cfg.vocab_size
    toks = torch.randint(0, vocab, (batch, seq), device=device)
    prompt = toks[:1, : max(2, seq // 4)]
    d_model, n_layers = bridge.cfg.d_model, bridge.cfg.n_layers
    vector = torch.randn(d_model, device=device, dtype=dtype) * 0.1
    mid = f"blocks.{n_layers // 2}.hook_resid_pre"
    blocks = bridge.bound.blocks
    clean, corrupted = toks[:1, :8], toks[1:2, :8]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, 0].float().mean()

    def hf_patch_loop() -> None:  # one HF forward per (layer, position), plain pre-hooks
        for block in blocks:
            for pos in range(clean.shape[1]):

                def edit(m, args, kwargs, pos=pos):
                    x = (args[0] if args else kwargs["hidden_states"]).clone()
                    x[:, pos] = 0
                    return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

                handle = block.module.register_forward_pre_hook(edit, with_kwargs=True)
                metric(model(corrupted).logits).item()
                handle.remove()

    new = 16
    gen = dict(max_new_tokens=new, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(prompt))
    return {
        "forward": {"hf": lambda: model(toks).logits, "bridge-core": lambda: bridge(toks)},
        "cache all": {
            "hf": lambda: model(toks, output_hidden_states=True, output_attentions=False),
            "bridge-core": lambda: bridge.run_with_cache(toks),
        },
        f"generate {new} steered": {
            "hf": lambda: model.generate(prompt, min_new_tokens=new, **gen),
            "bridge-core": lambda: _steered_generate(bridge, prompt, mid, vector, new),
        },
        "patch sweep resid_pre": {
            "hf": hf_patch_loop,
            "bridge-core": lambda: patch_sweep(bridge, clean, corrupted, metric, logit_positions=slice(-1, None)),
        },
    }


def _steered_generate(bridge, prompt: torch.Tensor, hook: str, vector: torch.Tensor, new: int) -> object:
    with bridge.hooks(fwd_hooks=[(hook, lambda t, hook: t + vector)]):
        return bridge.generate(prompt, max_new_tokens=new, stop_at_eos=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU in float32 (the tests' reduced form)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes instead of GPT-2-small and Llama-1B")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="folder for gpu_run.md and gpu_run.json")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    shapes = ["gpt2-tiny", "llama-tiny"] if args.tiny else ["gpt2s", "llama1b"]
    rows = []
    for name in shapes:
        with torch.no_grad():
            for workload, impls in workloads(name, device, dtype).items():
                times: dict[str, list[float]] = {impl: [] for impl in impls}
                for fn in impls.values():
                    fn()  # warm-up (and CUDA kernels / autotuning)
                for round_ in range(args.repeats):  # interleaved, the order alternating
                    for impl in list(impls)[:: 1 if round_ % 2 == 0 else -1]:
                        times[impl].append(timed(impls[impl], device))
                med = {impl: 1e3 * statistics.median(values) for impl, values in times.items()}
                rows.append(
                    {"shape": name, "workload": workload, "median_ms": med, "ratio": med["bridge-core"] / med["hf"]}
                )
    lines = [f"# bridge-core on {device.type} ({dtype}), {args.repeats} interleaved rounds", ""]
    lines += ["| shape | workload | HF ms | bridge-core ms | ratio |", "|---|---|---:|---:|---:|"]
    for row in rows:
        med = row["median_ms"]
        lines.append(
            f"| {row['shape']} | {row['workload']} | {med['hf']:.2f} | {med['bridge-core']:.2f} | {row['ratio']:.2f} |"
        )
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_run.md").write_text("\n".join(lines) + "\n")
        (args.out / "gpu_run.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
