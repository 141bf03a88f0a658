"""NanoChat calls one parameter-free RMSNorm (`model.norm`) twice in a forward: after the token embedding and
as the final norm. The unedited draft names that path as `embed.norm` and `ln_final`; each role's hooks act on
its own call (decision 0024), held here to HF's own two calls of the module."""

from __future__ import annotations

import copy

import pytest
import torch

from bridge_core import Bridge
from bridge_core.bridge import loading
from bridge_core.conformance.runner import perturb
from bridge_core.drafting import draft_model_type, to_spec
from bridge_core.errors import SpecError
from bridge_core.spec.schema import Spec

ROLES = ["hook_embed", "embed.ln.hook_scale", "embed.ln.hook_normalized", "ln_final.hook_scale",
         "ln_final.hook_normalized"]  # fmt: skip


def _setup():
    spec = to_spec(draft_model_type("nanochat"))
    model = loading.random_model(spec, seed=3, tiny=True)
    perturb(model, 3)
    hf = copy.deepcopy(model).eval()
    tokens = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
    return Bridge.from_hf(model, spec), hf, tokens


def _hf_calls(hf, tokens):
    """What HF's own `model.norm` received and returned on each of its calls, and HF's logits."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = hf.model.norm.register_forward_hook(lambda m, args, out: calls.append((args[0].clone(), out.clone())))
    try:
        with torch.no_grad():
            logits = hf(input_ids=tokens).logits
    finally:
        handle.remove()
    return calls, logits


def test_the_draft_names_one_path_in_both_roles():
    draft = draft_model_type("nanochat")
    assert not draft.gaps, draft.gaps
    assert draft.fields["embed"]["norm"]["path"] == draft.fields["ln_final"]["path"] == "model.norm"


def test_each_role_fires_once_with_hfs_own_call_of_the_module():
    bridge, hf, tokens = _setup()
    calls, hf_logits = _hf_calls(hf, tokens)
    assert len(calls) == 2
    fired: dict[str, int] = {}

    def count(tensor, hook):
        fired[hook.name] = fired.get(hook.name, 0) + 1

    with torch.no_grad():
        bridge.run_with_hooks(tokens, fwd_hooks=[(name, count) for name in ROLES])
        logits, cache = bridge.run_with_cache(tokens)
    assert fired == dict.fromkeys(ROLES, 1)
    torch.testing.assert_close(logits, hf_logits, rtol=0, atol=1e-5)  # eager attention while caching
    (embed_in, embed_out), (final_in, final_out) = calls
    torch.testing.assert_close(embed_in, hf.model.embed_tokens.weight[tokens], rtol=0, atol=0)  # the first call
    torch.testing.assert_close(cache["hook_embed"], embed_out, rtol=0, atol=0)
    torch.testing.assert_close(cache["embed.ln.hook_normalized"], embed_out, rtol=0, atol=1e-6)
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"], final_in, rtol=0, atol=1e-6)  # the second call
    torch.testing.assert_close(cache["ln_final.hook_normalized"], final_out, rtol=0, atol=1e-6)
    scale = final_in.pow(2).mean(-1, keepdim=True).add(hf.config.rms_norm_eps).sqrt()  # RMSNorm by hand
    torch.testing.assert_close(cache["ln_final.hook_scale"], scale, rtol=1e-6, atol=1e-6)


def test_an_edit_in_one_role_is_hfs_forward_with_that_call_edited():
    bridge, hf, tokens = _setup()
    calls_seen: list[int] = []

    def double_second_call(module, args, out):
        calls_seen.append(1)
        return out * 2 if len(calls_seen) == 2 else None

    handle = hf.model.norm.register_forward_hook(double_second_call)
    try:
        with torch.no_grad():
            expected = hf(input_ids=tokens).logits
    finally:
        handle.remove()
    with torch.no_grad():
        logits = bridge.run_with_hooks(tokens, fwd_hooks=[("ln_final.hook_normalized", lambda t, hook: t * 2)])
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_a_layer_range_past_the_embedding_runs_the_final_role_only():
    bridge, _, tokens = _setup()
    with torch.no_grad():
        full_logits, cache = bridge.run_with_cache(tokens)
    fired: dict[str, int] = {}

    def count(tensor, hook):
        fired[hook.name] = fired.get(hook.name, 0) + 1

    with torch.no_grad():
        logits = bridge.run_with_hooks(
            cache["blocks.1.hook_resid_pre"], start_at_layer=1, fwd_hooks=[(name, count) for name in ROLES]
        )
    assert fired == {"ln_final.hook_scale": 1, "ln_final.hook_normalized": 1}
    torch.testing.assert_close(logits, full_logits, rtol=0, atol=1e-5)


def test_a_norm_with_parameters_in_two_roles_is_refused():
    fields = draft_model_type("llama").fields  # LlamaRMSNorm holds a weight
    fields["embed"] = {**fields["embed"], "norm": dict(fields["ln_final"])}
    spec = Spec.model_validate(fields)
    model = loading.random_model(spec, seed=0, tiny=True)
    with pytest.raises(SpecError, match="one norm in two roles must hold none"):
        Bridge.from_hf(model, spec)
