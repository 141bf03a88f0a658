"""CodeGen (issue 17): one fused qkv_proj whose output HF splits into `mp_num` (4) groups, each laid out
[q | v | k] (qkv.order grouped_qvk, qkv.groups 4). hook_q/k/v and W_Q/W_K/W_V must be HF's own q, k and v,
and an edit of one head of hook_v must reach exactly that head's slice of the projection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from bridge_core import Bridge, SpecError
from bridge_core.drafting.drafter import draft_model_type
from bridge_core.drafting.onboarding import DraftedSpecWarning

# two heads per group (8 heads of 8 dims, 4 groups), so heads of one group sit next to each other
CONFIG = dict(n_layer=2, n_embd=64, n_head=8, rotary_dim=4, vocab_size=101, n_positions=32)
CONFIG.update(bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="module")
def codegen():
    config = transformers.AutoConfig.for_model("codegen", **CONFIG)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with pytest.warns(DraftedSpecWarning):
        bridge = Bridge.from_hf(model)
    return model, bridge


def _hf_split(out: torch.Tensor, attn) -> dict[str, torch.Tensor]:
    """HF's own split of qkv_proj's output (modeling_codegen.CodeGenAttention.forward), as [b, s, h, d]."""
    local = attn.embed_dim // attn.mp_num
    q, v, k = out.view(*out.shape[:-1], -1, 3 * local).split(local, dim=-1)
    return {n: t.reshape(*out.shape[:-1], -1, attn.head_dim) for n, t in zip("qvk", (q, v, k), strict=True)}


def test_drafted_order_is_grouped_q_v_k():
    qkv = draft_model_type("codegen").fields["block"]["attn"]["qkv"]
    assert (qkv["kind"], qkv["path"], qkv["order"], qkv["groups"]) == ("fused", "qkv_proj", "grouped_qvk", 4)


def test_hooks_and_weights_are_hfs_q_k_v(codegen):
    model, bridge = codegen
    attn = model.transformer.h[1].attn
    seen = {}
    handle = attn.qkv_proj.register_forward_hook(lambda m, a, out: seen.update(x=a[0], out=out))
    tokens = torch.randint(3, 101, (2, 7))
    with torch.no_grad():
        model(tokens)
        handle.remove()
        _, cache = bridge.run_with_cache(tokens)
    hf = _hf_split(seen["out"], attn)
    weights = bridge.blocks[1].attn
    for n in "qkv":
        torch.testing.assert_close(cache[f"blocks.1.attn.hook_{n}"], hf[n])  # layer 0 ran eager in the cache
        recomputed = torch.einsum("bsm,hmd->bshd", seen["x"], getattr(weights, f"W_{n.upper()}"))
        torch.testing.assert_close(recomputed, hf[n])


def test_editing_one_value_head_edits_that_heads_slice(codegen):
    model, bridge = codegen
    attn = model.transformer.h[0].attn
    head, d, local = 3, attn.head_dim, attn.embed_dim // attn.mp_num
    per_group = local // d
    # head 3 is the second head of group 1; in each group the v slice is the middle one of [q | v | k]
    start = (head // per_group) * 3 * local + local + (head % per_group) * d

    def zero_slice(module, args, out):
        out = out.clone()
        out[..., start : start + d] = 0
        return out

    tokens = torch.randint(3, 101, (2, 7))
    handle = attn.qkv_proj.register_forward_hook(zero_slice)
    with torch.no_grad():
        expected = model(tokens).logits
    handle.remove()

    def zero_head(v, hook):
        v[:, :, head] = 0  # in place: written back into the strided group slices

    with torch.no_grad():
        edited = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_v", zero_head)])
        plain = bridge(tokens)
    torch.testing.assert_close(edited, expected, rtol=0, atol=0)
    assert not torch.equal(edited, plain)


@pytest.mark.parametrize(
    "old,new,message",
    [
        (", groups: 4}", "}", "order 'grouped_qvk' needs 'groups'"),
        ("groups: 4", "groups: 3", "3 groups cannot split"),
        ("order: grouped_qvk, groups: 4", "order: qkv, groups: 4", "expected a positive int, with an order grouped_*"),
    ],
    ids=["no_groups", "uneven_groups", "groups_without_grouped_order"],
)
def test_a_bad_group_count_is_a_spec_error_naming_the_field(tmp_path, old, new, message):
    broken = Path(__file__).parents[1] / "conformance" / "broken_specs" / "codegen_grouped_qkv.yaml"
    text = broken.read_text(encoding="utf-8").replace("grouped_qkv,", "grouped_qvk,")
    assert text.count(old) == 1
    path = tmp_path / "codegen.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        Bridge.from_spec(path)
    assert info.value.field == "block.attn.qkv.groups" and message in str(info.value)
