"""Cold start: the first bridge in a fresh process beyond importing torch and transformers, a warm
build, and the wall time of `bridge-core --help` / `list`. Fresh interpreters, interleaved, medians.

    .venv/bin/python benchmarks/cold_start.py [--repeats 5] [--out results/cold_start.md]

Bytecode is written on the first run (PYTHONDONTWRITEBYTECODE is cleared), as an installed package has it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROBE = """
import json, time
t0 = time.perf_counter()
import torch, transformers
from transformers import GPT2Config, GPT2LMHeadModel
t1 = time.perf_counter()
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, bos_token_id=0,
                                   eos_token_id=0)).eval()
t2, c2 = time.perf_counter(), time.process_time()
from bridge_core import Bridge
Bridge.from_hf(model)
t3, c3 = time.perf_counter(), time.process_time()
Bridge.from_hf(model)
t4 = time.perf_counter()
print(json.dumps({"import torch+transformers": t1 - t0, "first bridge (wall)": t3 - t2,
                  "first bridge (CPU)": c3 - c2, "warm build": t4 - t3}))
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cli = [sys.executable, "-m", "bridge_core"]
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats + 1):  # the first round writes bytecode and is dropped
        done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
        sample = json.loads(done.stdout.strip().splitlines()[-1])
        for command in ("--help", "list"):
            start, used = time.perf_counter(), _children_cpu()
            subprocess.run([*cli, command], capture_output=True, env=env, check=True)
            sample[f"bridge-core {command} (wall)"] = time.perf_counter() - start
            # CPU time (user + sys) of the command: what the wall time would be on an idle core
            sample[f"bridge-core {command} (CPU)"] = _children_cpu() - used
        if times or args.repeats == 0:
            for key, value in sample.items():
                times.setdefault(key, []).append(value)
        else:
            times = {key: [] for key in sample}
    load = os.getloadavg()[0]
    lines = [f"| measure ({args.repeats} fresh processes; load average {load:.1f}) | median ms |", "|---|---:|"]
    lines += [f"| {key} | {1e3 * statistics.median(values):.0f} |" for key, values in times.items()]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("# bridge-core cold start\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
