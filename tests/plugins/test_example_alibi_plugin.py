"""The example third-party plugin (examples/bloom_alibi_plugin): installed from its own directory it is
discovered with no other step, and its BLOOM spec on the reimplement path matches the untouched HF model."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BloomConfig, BloomForCausalLM

from bridge_core import Bridge, Registry
from bridge_core.plugin_host import PluginHost

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "examples" / "bloom_alibi_plugin"


@pytest.fixture(scope="module")
def alibi_plugin():
    sys.path.insert(0, str(PLUGIN_DIR))
    try:
        import bridge_core_alibi

        yield bridge_core_alibi
    finally:
        sys.path.remove(str(PLUGIN_DIR))


@pytest.fixture(scope="module")
def registry(alibi_plugin) -> Registry:
    host = PluginHost()
    if not host.pm.is_registered(alibi_plugin):  # unless it is pip-installed in this environment
        host.register(alibi_plugin, name="bridge-core-alibi:alibi")
    return Registry(host, use_spec_path=False)


def bloom(n_head: int = 6, seed: int = 3) -> BloomForCausalLM:
    torch.manual_seed(seed)
    config = BloomConfig(n_layer=2, hidden_size=8 * n_head, n_head=n_head, vocab_size=97, hidden_dropout=0.0,
                         attention_dropout=0.0)  # fmt: skip
    model = BloomForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def padded(batch: int = 3, seq: int = 9):
    tokens = torch.randint(4, 97, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    mask[2, -2:] = 0  # right padding
    return tokens, mask


def test_installed_from_its_directory_the_plugin_is_discovered_with_no_other_step(tmp_path: Path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(PLUGIN_DIR)],
        check=True,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target)}
    listing = subprocess.run(
        [sys.executable, "-m", "bridge_core", "list", "--json"], env=env, capture_output=True, text=True, check=True
    )
    specs = {s["name"]: s for s in json.loads(listing.stdout)["specs"]}
    assert specs["bloom"]["origin"] == "bridge-core-alibi"
    assert specs["bloom"]["architectures"] == ["BloomForCausalLM"]
    hooks = subprocess.run(
        [sys.executable, "-m", "bridge_core", "hooks", "bloom", "--tiny", "--json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert {h["fires"] for h in json.loads(hooks.stdout)["hooks"]} == {1}


@pytest.mark.parametrize("n_head", [4, 6])
def test_bloom_on_the_reimplement_path_matches_hf(registry, n_head):
    model = bloom(n_head)
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, registry=registry)
    tokens, mask = padded()
    real = mask.bool()
    fires: dict[str, int] = {}

    def count(tensor, hook):
        fires[hook.name] = fires.get(hook.name, 0) + 1

    with torch.no_grad():
        hf = reference(tokens, attention_mask=mask, output_attentions=True)
        assert torch.equal(bridge(tokens, attention_mask=mask), hf.logits)
        logits, cache = bridge.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=[(lambda n: True, count)]), None
        _, cache = bridge.run_with_cache(tokens, attention_mask=mask)
    assert fires == dict.fromkeys(bridge.hook_names(), 1)
    torch.testing.assert_close(logits[real], hf.logits[real], atol=1e-5, rtol=0)
    for i in range(2):
        pattern = cache[f"blocks.{i}.attn.hook_pattern"]
        torch.testing.assert_close(
            pattern.permute(0, 2, 1, 3)[real], hf.attentions[i].permute(0, 2, 1, 3)[real], atol=1e-6, rtol=0
        )
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_attn_scores"].softmax(-1), pattern, atol=1e-6, rtol=0)


def test_alibi_kind_equals_blooms_own_alibi_with_padding(alibi_plugin):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    _, mask = padded()
    for n_heads in (4, 6, 12):
        ours = alibi_plugin.alibi_bias(
            table=None, q_len=9, k_len=9, offset=0, padding_mask=mask.bool(), n_heads=n_heads,
            dtype=torch.float32, device="cpu", params={},
        )  # fmt: skip
        theirs = build_alibi_tensor(mask, n_heads, torch.float32)  # [b*h, 1, k]
        torch.testing.assert_close(alibi_plugin.bloom_format(ours), theirs, atol=1e-6, rtol=0)  # float slopes


def test_alibi_fits_the_score_bias_contract_and_refuses_params(alibi_plugin):
    from bridge_core import SpecError
    from bridge_core.kind_checks import contract_problems
    from bridge_core.kinds import ScoreBiasKind

    (kind,) = alibi_plugin.bridge_core_score_bias_kinds()
    assert contract_problems(kind, ScoreBiasKind) == []
    with pytest.raises(SpecError) as info:
        alibi_plugin.alibi_bias(
            table=None, q_len=2, k_len=2, offset=0, padding_mask=None, n_heads=4,
            dtype=torch.float32, device="cpu", params={"max_bias": 8},
        )  # fmt: skip
    assert info.value.field == "score_bias.params" and "max_bias" in str(info.value)


def test_a_pattern_edit_on_the_reimplement_path_reaches_the_logits_as_it_would_by_hand(registry):
    model = bloom()
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, registry=registry)
    tokens = torch.randint(4, 97, (1, 9), generator=torch.Generator().manual_seed(1))

    def zero_head_2(pattern, hook):
        pattern[:, 2] = 0

    def zero_head_2_by_hand(module, args):  # head 2's slice of the dense input, on the untouched copy
        z = args[0].clone()
        z[..., 2 * 8 : 3 * 8] = 0
        return (z,)

    with torch.no_grad():
        edited = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", zero_head_2)])
        handle = reference.transformer.h[1].self_attention.dense.register_forward_pre_hook(zero_head_2_by_hand)
        expected = reference(tokens).logits
        handle.remove()
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=0)
    assert (edited - bridge(tokens)).abs().max() > 1e-3
