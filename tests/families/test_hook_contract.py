"""The hook contract on hidden family configurations: untouched logits, identity hooks, each point once."""

from __future__ import annotations

import torch

from ._models import assert_close_at


def test_no_hook_logits_are_bit_identical_to_the_untouched_model(run):
    with torch.no_grad():
        expected = run.reference(input_ids=run.toks, attention_mask=run.mask).logits
        assert torch.equal(run.bridge(run.toks, attention_mask=run.mask), expected)


def test_cached_forward_logits_equal_the_untouched_model_at_real_positions(run):
    with torch.no_grad():
        expected = run.reference(input_ids=run.toks, attention_mask=run.mask, use_cache=False).logits
    assert_close_at(run.logits, expected, run.real)


def test_identity_hooks_on_every_listed_point_keep_logits_within_1e_5(run):
    with torch.no_grad():
        expected = run.reference(input_ids=run.toks, attention_mask=run.mask, use_cache=False).logits
        returned = run.bridge.run_with_hooks(
            run.toks, fwd_hooks=[(lambda name: True, lambda t, hook: t)], attention_mask=run.mask
        )
        # a fresh tensor counts as an edit: norms are recomputed and views written back everywhere
        cloned = run.bridge.run_with_hooks(
            run.toks, fwd_hooks=[(lambda name: True, lambda t, hook: t.clone())], attention_mask=run.mask
        )
    assert_close_at(returned, expected, run.real)
    assert_close_at(cloned, expected, run.real)


def test_every_listed_hook_fires_exactly_once_and_nothing_listed_is_dead(run):
    counts: dict[str, int] = {}

    def count(tensor, hook):
        counts[hook.name] = counts.get(hook.name, 0) + 1

    with torch.no_grad():
        run.bridge.run_with_hooks(run.toks, fwd_hooks=[(lambda name: True, count)], attention_mask=run.mask)
    names = run.bridge.hook_names()
    assert len(names) == len(set(names))
    assert counts == dict.fromkeys(names, 1)


def test_the_cache_holds_every_listed_hook_point(run):
    assert sorted(run.cache.keys()) == sorted(run.bridge.hook_names())
