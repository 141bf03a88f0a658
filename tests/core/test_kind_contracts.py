"""Kind contracts (bridge_core.kinds): every registered kind fits its Protocol, a wrongly shaped kind is
caught at load as its plugin's failure, and `t5_buckets` computes what the new `params` contract says."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bridge_core import Bridge, Registry, SpecError, hookimpl
from bridge_core.errors import PluginError
from bridge_core.kind_checks import contract_problems
from bridge_core.kinds import (
    ActivationFunction,
    CrossAttentionKind,
    MaskFormat,
    Norm,
    NormKind,
    Position,
    PositionKind,
    ScoreBiasKind,
)
from bridge_core.plugin_host import PluginHost
from bridge_core.registry import default_registry

# Kinds field -> the contract each registered kind must fit.
CONTRACTS = {
    "norms": Norm,
    "activations": ActivationFunction,
    "positions": Position,
    "mask_formats": MaskFormat,
    "score_biases": ScoreBiasKind,
    "cross_attentions": CrossAttentionKind,
}
BUILTINS = {
    "norms": {"layernorm", "rmsnorm", "rmsnorm_offset"},
    "activations": {"gelu_new", "silu", "relu"},
    "positions": {"learned", "rotary", "none"},
    "mask_formats": {"2d", "4d_additive", "4d_bool", "none"},
    "score_biases": {"t5_buckets"},
    "cross_attentions": {"encoder_output"},
}


@pytest.mark.parametrize("field", CONTRACTS)
def test_every_registered_kind_fits_its_protocol(field):
    host = default_registry().plugins
    kinds = getattr(host.kinds, field)
    assert BUILTINS[field] <= set(kinds), "the built-ins are registered through the plugin host"
    for name, kind in kinds.items():
        assert contract_problems(kind, CONTRACTS[field]) == [], f"{field} '{name}'"
    assert not [f for f in host.failures if f.distribution == "bridge-core"], host.failures


# ----------------------------------------------------------------------------- broken kinds, one per contract
def _build_as_documented_before(padding_mask, q_len, causal, window, dtype):  # the 5-argument doc that lied
    return None


def _cross_kwargs_with_spec(encoder_states, encoder_mask, q_len, dtype, mask_format, spec):
    return {}


def _old_t5_compute(table, q_len, k_len, bidirectional, num_buckets, max_distance, offset=0):
    return torch.zeros(1)


def _rotate_three(x, cos, sin):
    return x


class _NormWithoutScale:
    name, centered, weight_offset = "no_scale", True, 0.0
    eps = prepare = output = weight = bias = NormKind.eps  # callables, but `scale` is missing


class _TwoArgActivation(nn.Module):
    def forward(self, x, gate):  # nn.Module.__call__ takes anything; forward is what counts
        return x * gate


BROKEN = {
    "mask format build with 5 parameters": (MaskFormat("bad", _build_as_documented_before), MaskFormat, "MaskBuilder"),
    "cross attention wanting a spec": (
        CrossAttentionKind("bad", _cross_kwargs_with_spec),
        CrossAttentionKind,
        "CrossAttentionKwargs",
    ),
    "score bias without params": (ScoreBiasKind("bad", _old_t5_compute), ScoreBiasKind, "ScoreBiasCompute"),
    "score bias hook_view taking none": (
        ScoreBiasKind("bad", lambda **_: torch.zeros(1), hook_view=lambda: None),
        ScoreBiasKind,
        "BiasView",
    ),
    "rotary rotate with 3 parameters": (
        PositionKind("bad", limits_length=False, has_table=False, rotates_qk=True, rotate=_rotate_three),
        Position,
        "Rotate",
    ),
    "norm without scale": (_NormWithoutScale(), Norm, "scale"),
    "position without table_rows": (object(), Position, "table_rows"),
    "activation of two tensors": (_TwoArgActivation(), ActivationFunction, "ActivationFunction"),
    "activation that is not callable": ("gelu", ActivationFunction, "not callable"),
    "mask format build missing": (MaskFormat("bad", None), MaskFormat, "is None"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_wrongly_shaped_kind_does_not_fit_its_protocol(case):
    kind, contract, named = BROKEN[case]
    problems = contract_problems(kind, contract)
    assert problems, f"{case} was accepted"
    assert named in " ".join(problems)


def test_optional_callables_may_be_none_and_extra_keywords_may_be_swallowed():
    def compute(*, q_len, k_len, params, **_):
        return torch.zeros(1, 1, q_len, k_len)

    assert contract_problems(ScoreBiasKind("ok", compute), ScoreBiasKind) == []
    assert contract_problems(PositionKind("ok", limits_length=True, has_table=True), Position) == []
    assert contract_problems(MaskFormat("ok", lambda *args, **kwargs: None), MaskFormat) == []


# ----------------------------------------------------------------------------- a plugin with a wrongly shaped kind
class WronglyShaped:
    """A plugin with one mask format as the old docs described it, one correct one, and a non-list answer."""

    @hookimpl
    def bridge_core_mask_formats(self):
        return [
            MaskFormat("fake_bad_mask", _build_as_documented_before),
            MaskFormat("fake_good_mask", lambda padding_mask, batch, q_len, k_len, causal, dtype, device, window: None),
        ]

    @hookimpl
    def bridge_core_norm_kinds(self):
        return NormKind("fake_single_norm", centered=True)  # not a list


def test_a_plugin_with_a_wrongly_shaped_kind_is_a_failing_plugin_and_the_builtins_keep_working():
    host = PluginHost()
    host.register(WronglyShaped(), "fake-shapes:kinds")
    kinds = host.kinds
    assert "fake_bad_mask" not in kinds.mask_formats, "a kind that would break at call time is not registered"
    assert "fake_good_mask" in kinds.mask_formats and "2d" in kinds.mask_formats
    failures = [f for f in host.failures if f.distribution == "fake-shapes"]
    assert [f.name for f in failures] == ["kinds", "kinds"]
    mask_failure = next(f.error for f in failures if "bridge_core_mask_formats" in f.error)
    assert "fake_bad_mask" in mask_failure and "MaskBuilder" in mask_failure
    assert any("bridge_core_norm_kinds" in f.error for f in failures)
    assert "layernorm" in kinds.norms
    bridge = Bridge.from_spec("gpt2", registry=Registry(plugins=host, use_spec_path=False))
    with torch.no_grad():
        assert bridge(torch.tensor([[1, 2, 3]])).shape[-1] == bridge.cfg.d_vocab


class MisfitBuiltin:
    @hookimpl
    def bridge_core_activation_functions(self):
        return {"fake_two_argument_act": lambda x, y: x}  # the bridge calls act_fn(x)


def test_a_builtin_kind_is_checked_at_its_first_lookup_and_a_misfit_is_bridge_cores_bug():
    """Built-in kinds are named at collection and checked when first looked up (docs/decisions/0031)."""
    host = PluginHost(load_entry_points=False)
    host.register(MisfitBuiltin(), "bridge-core:misfit")
    assert "fake_two_argument_act" in host.kinds.activations and not host.failures
    with pytest.raises(PluginError, match=r"fake_two_argument_act.*cannot be called as") as info:
        host.kinds.activations["fake_two_argument_act"]
    assert info.value.distribution == "bridge-core" and info.value.hook == "bridge_core_activation_functions"
    host.unregister("bridge-core:misfit")
    host.register(MisfitBuiltin(), "third-party:misfit")  # the same kind from a plugin: its failure at collection
    assert "fake_two_argument_act" not in host.kinds.activations
    assert [(f.distribution, f.name) for f in host.failures] == [("third-party", "misfit")]


# ----------------------------------------------------------------------------- t5_buckets under the params contract
def _t5(params, q_len=2, k_len=10, offset=8):
    table = nn.Embedding(8, 3)
    with torch.no_grad():  # row b, head h holds 10 * b + h, so the bias spells out each bucket
        table.weight.copy_(10 * torch.arange(8.0)[:, None] + torch.arange(3.0)[None, :])
    compute = default_registry().plugins.kinds.score_biases["t5_buckets"].compute
    return compute(
        table=table, q_len=q_len, k_len=k_len, offset=offset, padding_mask=None, n_heads=3,
        dtype=torch.float32, device=torch.device("cpu"), params=params,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("bidirectional", "buckets"),
    [
        # queries at 8 and 9 over keys 0..9; 8 buckets, max_distance 16.
        # Encoder: 4 per direction, exact below 2, then 2 + floor(log(d/2) / log(8) * 2), keys after the query +4.
        (True, [[3, 3, 3, 2, 2, 2, 2, 1, 0, 5], [3, 3, 3, 3, 2, 2, 2, 2, 1, 0]]),
        # Decoder: only looking back, exact below 4, then 4 + floor(log(d/4) / log(4) * 4).
        (False, [[6, 5, 5, 4, 4, 3, 2, 1, 0, 0], [6, 6, 5, 5, 4, 4, 3, 2, 1, 0]]),
    ],
)
def test_t5_buckets_with_params_equals_a_hand_computation(bidirectional, buckets):
    bias = _t5({"bidirectional": bidirectional, "num_buckets": 8, "max_distance": 16})
    expected = 10 * torch.tensor(buckets, dtype=torch.float32)[None, None] + torch.arange(3.0)[None, :, None, None]
    assert bias.shape == (1, 3, 2, 10)
    torch.testing.assert_close(bias, expected, rtol=0, atol=0)


def test_t5_buckets_missing_params_is_a_spec_error_naming_them():
    with pytest.raises(SpecError) as info:
        _t5({"bidirectional": True})
    assert info.value.field == "score_bias.params"
    assert "t5_buckets" in str(info.value) and "num_buckets" in str(info.value) and "max_distance" in str(info.value)
