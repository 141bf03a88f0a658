"""In-process A/B of `run_with_cache` (every hook point but `hook_result`) against HF's own forward.

Issue #19's per-hook budget: on the tiny GPT-2 of `workloads.py`, batch 1 x 32, eager attention, a
cache of every point must cost at most 1.25x HF's plain forward; on GPT-2 small at most 1.03x. On a
shared, loaded machine wall time is noise, so HF and the bridge are called alternately in one process
(one thread, `torch.no_grad()` as in `run.py`), each call timed by `time.thread_time()`, and the
figure is the mean of the fastest 80 % of each side.

    python benchmarks/ab_cache.py                 # tiny, 400 calls of each
    python benchmarks/ab_cache.py --shape gpt2s --calls 40
    python benchmarks/ab_cache.py --workload forward   # the bridge with no hook attached
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import MODELS, bridge_core_op, build_model, hf_op


def trimmed_mean(times: list[float], keep: float = 0.8) -> float:
    """Mean of the fastest `keep` share: scheduling only ever adds time, so the slow tail is noise."""
    fastest = sorted(times)[: max(1, int(len(times) * keep))]
    return sum(fastest) / len(fastest)


def ab(shape_name: str, workload: str, calls: int, warmup: int) -> tuple[float, float]:
    """Trimmed-mean thread CPU seconds per call of HF and of the bridge, calls interleaved."""
    shape = MODELS[shape_name]
    model = build_model(shape, "eager")
    _, hf = hf_op("forward", model, shape)
    _, bridge = bridge_core_op(workload, model, shape)
    hf_times: list[float] = []
    bridge_times: list[float] = []
    with torch.no_grad():
        for _ in range(warmup):
            hf()
            bridge()
        for i in range(calls):
            order = ((hf, hf_times), (bridge, bridge_times)) if i % 2 == 0 else ((bridge, bridge_times), (hf, hf_times))
            for fn, times in order:
                start = time.thread_time()
                fn()
                times.append(time.thread_time() - start)
    return trimmed_mean(hf_times), trimmed_mean(bridge_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=sorted(MODELS))
    parser.add_argument("--workload", default="cache_all", help="a bridge_core_op workload of workloads.py")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    hf, bridge = ab(args.shape, args.workload, args.calls, args.warmup)
    load_after = os.getloadavg()[0]
    print(
        f"{args.shape}/{args.workload}: HF {hf * 1e3:.3f} ms, bridge {bridge * 1e3:.3f} ms CPU, "
        f"ratio {bridge / hf:.3f}x (+{(bridge - hf) * 1e3:.3f} ms), {args.calls} calls each, "
        f"load average {load_before:.2f} -> {load_after:.2f}"
    )


if __name__ == "__main__":
    main()
