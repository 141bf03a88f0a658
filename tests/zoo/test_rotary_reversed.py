"""NanoChat's rotary turns by -theta (`rotate_half` is `cat(x2, -x1)`): position kind `rotary_reversed`.
hook_rot_q / hook_rot_k equal HF's own apply_rotary_pos_emb of HF's projections (then HF's q/k norms, which
NanoChat applies after rotary), read with torch hooks on the untouched model; the drafter picks the kind by
observation; Llama's `rotary` in its place is caught by attention_paths_agree while the right kind passes it
(the shared model.norm fails other checks either way)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

from bridge_core import Bridge
from bridge_core.conformance import run

BROKEN = Path(__file__).resolve().parents[1] / "conformance" / "broken_specs" / "nanochat_llama_rotary.yaml"

pytest.importorskip("transformers.models.nanochat.modeling_nanochat")


@pytest.fixture(scope="module")
def right_spec(tmp_path_factory) -> Path:
    """The broken spec with its one defect undone (kind rotary_reversed)."""
    spec = yaml.safe_load(BROKEN.read_text())
    spec["pos_embed"]["kind"] = "rotary_reversed"
    spec["name"] = "nanochat_right_rotary"
    spec["match"]["architectures"] = ["NanoChatRightRotaryForTests"]
    path = tmp_path_factory.mktemp("nanochat") / "nanochat.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _tiny():
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "nanochat", vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval()


def test_rot_q_and_k_equal_hf_rotary_of_hf_projections(right_spec):
    from transformers.models.nanochat import modeling_nanochat as hf

    model = _tiny()
    reference = copy.deepcopy(model)
    tokens = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(1))
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in ("q_proj", "k_proj"):
        module = getattr(reference.model.layers[1].self_attn, name)
        handles.append(module.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out)))
    handles.append(
        reference.model.layers[1].register_forward_pre_hook(
            lambda m, a, kw: seen.__setitem__("pos", kw["position_embeddings"]), with_kwargs=True
        )
    )
    with torch.no_grad():
        hf_logits = reference(tokens).logits
    for h in handles:
        h.remove()
    d_head = reference.model.layers[1].self_attn.head_dim
    q = seen["q_proj"].view(2, 9, -1, d_head).transpose(1, 2)
    k = seen["k_proj"].view(2, 9, -1, d_head).transpose(1, 2)
    q_hf, k_hf = hf.apply_rotary_pos_emb(q, k, *seen["pos"])  # HF's own rotation: by -theta
    attn = reference.model.layers[1].self_attn
    with torch.no_grad():  # hook_rot_q/k are what the scores are made of: NanoChat's q/k norms come after rotary
        q_hf, k_hf = attn.q_norm(q_hf), attn.k_norm(k_hf)
    bridge = Bridge.from_hf(model, right_spec)
    with torch.no_grad():
        plain = bridge(tokens)
        logits, cache = bridge.run_with_cache(tokens)
    assert torch.equal(plain, hf_logits)  # no hooks: HF's own forward, bit for bit
    torch.testing.assert_close(logits, hf_logits, atol=1e-5, rtol=0)  # the rotary hooks run the bridge's rotation
    # the bridge's rotated hooks are [b, s, h, d] (TL's layout)
    torch.testing.assert_close(cache["blocks.1.attn.hook_rot_q"], q_hf.transpose(1, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(cache["blocks.1.attn.hook_rot_k"], k_hf.transpose(1, 2), atol=1e-6, rtol=0)
    # and they are not Llama's +theta rotation (the test can tell the two apart)
    cos, sin = seen["pos"]
    llama = q * cos.unsqueeze(1) + torch.cat((-q[..., d_head // 2 :], q[..., : d_head // 2]), -1) * sin.unsqueeze(1)
    assert not torch.allclose(attn.q_norm(llama), q_hf, atol=1e-3)


def test_right_kind_passes_attention_paths_agree_and_llama_kind_fails_it(right_spec):
    right, broken = run(right_spec), run(BROKEN)
    assert right["attention_paths_agree"].status == "pass", str(right)
    assert broken["attention_paths_agree"].status == "fail", str(broken)
    shared_norm = {"embed", "hook_fire_counts", "layer_ranges", "norms", "unembed"}
    assert {r.name for r in right.failed()} == shared_norm  # the one norm module in two roles, not rotary


def test_drafter_picks_rotary_reversed_and_names_the_shared_norm_in_both_roles():
    from bridge_core.drafting import draft_model_type

    draft = draft_model_type("nanochat")
    assert draft.fields["pos_embed"]["kind"] == "rotary_reversed"
    # one parameter-free norm after the embedding and as the final norm (decision 0024): one path, two roles
    assert draft.fields["ln_final"]["path"] == draft.fields["embed"]["norm"]["path"]
    assert not draft.gaps
