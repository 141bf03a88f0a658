"""A bridge over a transformers tensor-parallel model (`tp_plan="auto"`, two gloo ranks on CPU) shows and
edits the same global heads and neurons as over the untouched single-process model on the same weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from tests.distributed.tp_cases import run_cases

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is unavailable"
)
ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5


def _checkpoints(root: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    llama = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    neox = GPTNeoXConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.5,
    )  # fmt: skip
    paths = {"llama": root / "llama", "neox": root / "neox"}
    LlamaForCausalLM(llama).save_pretrained(paths["llama"])
    GPTNeoXForCausalLM(neox).save_pretrained(paths["neox"])
    return paths


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, list[dict]]]:
    """Per model: the single-process results, and each rank's results from two tensor-parallel ranks."""
    root = tmp_path_factory.mktemp("tp")
    paths = _checkpoints(root)
    out = root / "out"
    out.mkdir()
    command = [sys.executable, "-m", "tests.distributed.tp_worker", str(out), _free_port(), *map(str, paths.values())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    found = {}
    for name, path in paths.items():
        single = run_cases(AutoModelForCausalLM.from_pretrained(path))
        ranks = [torch.load(out / f"{name}.rank{r}.pt") for r in range(2)]
        found[name] = (single, ranks)
    return found


def _largest_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(b.shape)}, single process {tuple(a.shape)}"
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("model", ["llama", "neox"])
def test_every_rank_sees_the_single_process_values(runs, model: str) -> None:
    single, ranks = runs[model]
    assert any(".attn.hook_pattern" in k for k in single) and any(".mlp.hook_post" in k for k in single)
    for rank, found in enumerate(ranks):
        assert found.keys() == single.keys()
        for key, expected in single.items():
            if key == "generate":
                assert torch.equal(found[key], expected), f"rank {rank}: greedy generation differs"
            else:
                assert _largest_difference(expected, found[key]) <= TOLERANCE, f"rank {rank}: {key}"


@pytest.mark.parametrize("model", ["llama", "neox"])
def test_ablating_a_head_held_by_rank_1_matches_the_single_process_ablation(runs, model: str) -> None:
    single, ranks = runs[model]
    for key in ("ablate_z", "ablate_result", "ablate_q", "ablate_rot_k", "ablate_pattern", "ablate_neuron"):
        # the edit changes the output, and changes it on both ranks exactly as in one process
        assert _largest_difference(single["logits"], single[key]) > 1e-4, key
        for found in ranks:
            assert _largest_difference(single[key], found[key]) <= TOLERANCE, key


def test_ablating_the_wrong_head_is_told_apart(runs) -> None:
    # the broken input kept: head 1 (rank 0's) ablated instead of head 3 (rank 1's) must not pass the check
    single, ranks = runs["llama"]
    for found in ranks:
        assert _largest_difference(single["ablate_z"], found["ablate_wrong_head"]) > 1e-3
