"""A module whose points only the cache reads gets its reads-only hooks (`bridge/read_hooks.py`, decision
0030). Checked as behaviour: a plain `run_with_cache` registers them and no general hook there; a module
where a user hook edits keeps the general hook (and the edit works) while the other modules still read
fast; q, k and v taken out by the fused split are HF's own `c_attn` output, same storage, offsets and
strides as one view each; a point learned during the call gets the general hook's copy."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bridge_core import Bridge
from bridge_core.bridge import read_hooks


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    return model, Bridge.from_hf(model), torch.randint(0, 100, (2, 7))


def _registered_at(model, module, run):
    """The forward hooks `module` carries while `run()` runs (seen from a hook on the LM head)."""
    seen: list = []
    handle = model.lm_head.register_forward_hook(lambda *a: seen.extend(module._forward_hooks.values()))
    try:
        result = run()
    finally:
        handle.remove()
    return seen, result


def _registered_kind(bridge, module, seen: list) -> str | None:
    """Which of the kept plans' prepared forward hooks of `module` is in `seen`: "fast" (reads-only), "general"."""
    for plan in bridge._plans.values():
        for entry in plan.hooks:
            if entry.module is module and not entry.pre:
                if entry.fast is not None and entry.fast in seen:
                    return "fast"
                if entry.hook in seen:
                    return "general"
    return None


def test_a_plain_cache_registers_the_reads_only_hooks(tiny):
    model, bridge, tokens = tiny
    c_attn = model.transformer.h[0].attn.c_attn
    with torch.no_grad():
        bridge.run_with_cache(tokens)  # the plan is built and kept
        seen, _ = _registered_at(model, c_attn, lambda: bridge.run_with_cache(tokens))
    assert _registered_kind(bridge, c_attn, seen) == "fast"
    general = [h.hook for p in bridge._plans.values() for h in p.hooks if h.module is c_attn and not h.pre]
    assert _registered_kind(bridge, c_attn, general) == "general"  # broken input: the general hook is told apart


def test_an_editing_hook_keeps_the_general_hook_there_and_its_edit(tiny):
    model, bridge, tokens = tiny
    edited, other = model.transformer.h[0].attn.c_attn, model.transformer.h[1].attn.c_attn
    qs: dict[str, torch.Tensor] = {}
    handle = edited.register_forward_hook(lambda m, a, out: qs.__setitem__("q", out[..., :64].clone()))

    def double(t, hook):
        return t * 2

    try:
        with torch.no_grad(), bridge.hooks(fwd_hooks=[("blocks.0.attn.hook_q", double)]):
            bridge.run_with_cache(tokens)
            seen_edited, (logits, cache) = _registered_at(model, edited, lambda: bridge.run_with_cache(tokens))
            seen_other, _ = _registered_at(model, other, lambda: bridge.run_with_cache(tokens))
    finally:
        handle.remove()
    assert _registered_kind(bridge, edited, seen_edited) == "general"
    assert _registered_kind(bridge, other, seen_other) == "fast"
    expected = (qs["q"] * 2).unflatten(-1, (4, 16))
    assert torch.equal(cache["blocks.0.attn.hook_q"], expected)
    with torch.no_grad():
        plain = model(tokens).logits
    assert not torch.equal(logits, plain)  # the edit reached the forward


def _same_split(cache, out: torch.Tensor, layer: int) -> bool:
    """Each of q, k, v is HF's c_attn output as `narrow` + `unflatten` shows it: values, storage, offset, strides."""
    for i, name in enumerate("qkv"):
        want = out.narrow(-1, 64 * i, 64).unflatten(-1, (4, 16))
        got = cache[f"blocks.{layer}.attn.hook_{name}"]
        if not (
            torch.equal(got, want)
            and got.data_ptr() == want.data_ptr()
            and got.stride() == want.stride()
            and got.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
        ):
            return False
    return True


def test_the_fused_split_shows_hf_s_own_q_k_v(tiny):
    model, bridge, tokens = tiny
    outs: dict[int, torch.Tensor] = {}
    handles = [
        model.transformer.h[i].attn.c_attn.register_forward_hook(lambda m, a, out, i=i: outs.__setitem__(i, out))
        for i in (0, 1)
    ]
    try:
        with torch.no_grad():
            _, cache = bridge.run_with_cache(tokens)
    finally:
        for handle in handles:
            handle.remove()
    assert all(_same_split(cache, outs[i], i) for i in (0, 1))
    swapped = dict(cache.cache_dict)  # broken input: k and v exchanged
    swapped["blocks.0.attn.hook_k"], swapped["blocks.0.attn.hook_v"] = (
        cache["blocks.0.attn.hook_v"],
        cache["blocks.0.attn.hook_k"],
    )
    assert not _same_split(swapped, outs[0], 0)


def test_a_point_learned_during_the_call_gets_the_general_hook_s_copy(tiny, monkeypatch):
    model, bridge, tokens = tiny
    c_fc = model.transformer.h[0].mlp.c_fc
    outs: list[torch.Tensor] = []
    handle = c_fc.register_forward_hook(lambda m, a, out: outs.append(out))

    def cached_pre_is_a_copy(learned_check: bool) -> bool:
        learned: list = []
        original = read_hooks.ModuleReads.post_hook

        def learn_first(self, *args):  # as `Watch.add` does in a long generate, after the hooks were chosen
            if self.general.module is c_fc:
                learned.extend(self.runs)
                for run in self.runs:
                    run.clone = True
            return original(self, *args)

        monkeypatch.setattr(read_hooks.ModuleReads, "post_hook", learn_first)
        if not learned_check:  # broken input: the reads-only hook ignores a point learned mid-call
            monkeypatch.setattr(read_hooks.ModuleReads, "_learned", lambda self: False)
        outs.clear()
        try:
            with torch.no_grad():
                _, cache = bridge.run_with_cache(tokens, names_filter=["blocks.0.mlp.hook_pre"])
        finally:
            monkeypatch.undo()
            for run in learned:
                run.clone = False
        value = cache["blocks.0.mlp.hook_pre"]
        return bool(learned) and torch.equal(value, outs[0]) and value.data_ptr() != outs[0].data_ptr()

    try:
        assert cached_pre_is_a_copy(True)
        assert not cached_pre_is_a_copy(False)
    finally:
        handle.remove()
