"""Check a bridge over a model spread across several GPUs (prepared for a multi-GPU machine; not run in CI).

Two modes, each compared with the single-device run of the same tiny checkpoint:
  python scripts/multi_gpu_check.py device-map            # accelerate device_map over every visible GPU
  torchrun --nproc_per_node N scripts/multi_gpu_check.py tp  # transformers tp_plan="auto" over NCCL
Prints the largest difference per check and exits non-zero when one exceeds the tolerance.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from bridge_core import Bridge

TOLERANCE = 1e-4  # GPU kernels differ from one another more than CPU ones do
TOKENS = torch.tensor([[1, 5, 9, 3, 7, 11, 13, 2], [2, 4, 6, 8, 10, 12, 14, 16]])
NAMES = ("blocks.0.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.2.mlp.hook_post", "blocks.3.hook_resid_post")


def _checkpoint(path: str) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)


def _zero_head_7(tensor: torch.Tensor, hook) -> None:
    tensor[:, :, 7] = 0.0  # the last head: held by the last rank under tensor parallelism


def _run(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    bridge = Bridge.from_hf(model)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(TOKENS, names_filter=lambda n: n in NAMES, device="cpu")
        ablated = bridge.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.attn.hook_z", _zero_head_7)])
        found = {"logits": logits.cpu(), "ablated": ablated.cpu(), **{n: cache[n] for n in NAMES}}
        found["generate"] = bridge.generate(TOKENS[:1], max_new_tokens=6, do_sample=False, verbose=False).cpu()
        found["W_Q"] = bridge.blocks[1].attn.W_Q.detach().cpu()
    return found


def _compare(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], who: str) -> bool:
    ok = True
    for key, value in expected.items():
        got = found[key]
        if key == "generate":
            same = torch.equal(got, value)
            print(f"{who} {key}: {'same tokens' if same else 'DIFFERENT tokens'}")
            ok &= same
            continue
        diff = (got.double() - value.double()).abs().max().item()
        print(f"{who} {key}: max |diff| {diff:.2e}")
        ok &= diff <= TOLERANCE
    return ok


def device_map_check(path: str) -> bool:
    count = torch.cuda.device_count()
    if count < 2:
        print(f"device-map: {count} GPU(s) visible, need 2")
        return False
    expected = _run(AutoModelForCausalLM.from_pretrained(path))
    spread = {f"model.layers.{i}": i * count // 4 for i in range(4)}
    spread.update({"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": count - 1, "lm_head": count - 1})
    model = AutoModelForCausalLM.from_pretrained(path, device_map=spread)
    return _compare(_run(model), expected, "device-map")


def tensor_parallel_check(path: str) -> bool:
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    model = AutoModelForCausalLM.from_pretrained(path, tp_plan="auto")
    found = _run(model)
    expected = _run(AutoModelForCausalLM.from_pretrained(path)) if rank == 0 else None
    ok = _compare(found, expected, f"tp rank {rank}") if rank == 0 else True
    dist.barrier()
    return ok


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "device-map"
    path = os.environ.get("CHECKPOINT") or os.path.join(tempfile.gettempdir(), "bridge_core_multi_gpu_llama")
    if int(os.environ.get("RANK", "0")) == 0 and not os.path.exists(os.path.join(path, "config.json")):
        _checkpoint(path)
    if mode == "tp":
        import torch.distributed as dist

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        if not dist.is_initialized():  # backend-neutral: NCCL on GPUs, gloo on a CPU-only machine
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        dist.barrier()  # rank 0 has written the checkpoint
        return 0 if tensor_parallel_check(path) else 1
    return 0 if device_map_check(path) else 1


if __name__ == "__main__":
    sys.exit(main())
