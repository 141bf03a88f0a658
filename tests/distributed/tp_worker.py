"""Two ranks of the tensor-parallel check: each loads the checkpoints with `tp_plan="auto"` under gloo,
runs the bridge and writes what it saw to `<out>/<checkpoint>.rank<r>.pt` (run by test_tensor_parallel.py)."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.distributed.tp_cases import run_cases


def main(rank: int, world: int, out: str, port: str, checkpoints: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from transformers import AutoModelForCausalLM

        for checkpoint in checkpoints:
            model = AutoModelForCausalLM.from_pretrained(checkpoint, tp_plan="auto")
            torch.save(run_cases(model), os.path.join(out, f"{os.path.basename(checkpoint)}.rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":  # python -m tests.distributed.tp_worker OUT PORT CHECKPOINT...
    mp.spawn(main, args=(2, sys.argv[1], sys.argv[2], sys.argv[3:]), nprocs=2)
