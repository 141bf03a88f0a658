"""What tensor parallelism costs a bridge: two gloo ranks on CPU against one process, same tiny Llama.

    python benchmarks/tp_overhead.py [--repeats N]

Times, per workload, the median seconds of one call in one process and on two ranks (rank 0's clock,
each call ended by a barrier), and prints the ratio. On CPU with gloo the ratio measures the
collectives' overhead, not a speed-up: tiny models have nothing to split.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from bridge_core import Bridge

TOKENS = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))


def _workloads(bridge: Bridge) -> dict[str, Callable[[], object]]:
    def zero_head(tensor: torch.Tensor, hook) -> None:
        tensor[:, :, -1] = 0.0

    every_pattern = lambda name: name.endswith("hook_pattern")  # noqa: E731
    return {
        "forward, no hooks": lambda: bridge(TOKENS),
        "cache resid_post only (nothing gathered)": lambda: bridge.run_with_cache(
            TOKENS, names_filter=lambda n: n.endswith("hook_resid_post")
        ),
        "cache every hook_pattern (gathered)": lambda: bridge.run_with_cache(TOKENS, names_filter=every_pattern),
        "cache everything": lambda: bridge.run_with_cache(TOKENS),
        "ablate one head (gather + scatter)": lambda: bridge.run_with_hooks(
            TOKENS, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)]
        ),
    }


def _time(bridge: Bridge, repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    found = {}
    with torch.no_grad():
        for name, call in _workloads(bridge).items():
            call()  # warm-up
            times = []
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                call()
                sync()
                times.append(time.perf_counter() - start)
            found[name] = statistics.median(times)
    return found


def _rank(rank: int, path: str, port: str, repeats: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE="2")
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    bridge = Bridge.from_hf(AutoModelForCausalLM.from_pretrained(path, tp_plan="auto"))
    found = _time(bridge, repeats, dist.barrier)
    if rank == 0:
        torch.save(found, out)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=128,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    torch.set_num_threads(1)  # one core per process in both runs: two ranks use two
    single = _time(Bridge.from_hf(AutoModelForCausalLM.from_pretrained(folder)), args.repeats, lambda: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = os.path.join(folder, "tp.pt")
    mp.spawn(_rank, args=(folder, port, args.repeats, out), nprocs=2)
    two = torch.load(out)
    print(f"tiny Llama: 4 layers, d_model 128, 8 heads (4 kv), batch {tuple(TOKENS.shape)}; torch threads 1")
    print("| workload | 1 process (ms) | 2 ranks, gloo (ms) | ratio |")
    print("|---|---:|---:|---:|")
    for name, seconds in single.items():
        print(f"| {name} | {seconds * 1e3:.2f} | {two[name] * 1e3:.2f} | {two[name] / seconds:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
