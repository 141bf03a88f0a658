"""Calls on one bridge from several threads at once: each call runs its own thread's hooks only and fills
only its own cache, equal to what the same call gives single-threaded (docs/architecture.md, "Threads and
inference mode"). `add_hook` hooks are bridge-wide and run in every thread.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from core._helpers import bridge_and_reference, hf_logits, tokens

from bridge_core import Bridge

CALLS = 30
SHAPE = "3L-h3-dh16-inner80"


def zero_head(head: int):
    def edit(tensor, hook):
        tensor[:, head] = 0.0  # in place: [batch, heads, q, k]

    return edit


def scale(factor: float):
    return lambda tensor, hook: tensor * factor


def add_to_head(head: int, value: float):
    def edit(tensor, hook):
        tensor[:, :, head] += value  # in place: [batch, pos, heads, d_head]

    return edit


# Different points, different edits, attention internals on the same layer in two threads, and
# different batch shapes (hook_pos_embed is shown broadcast to each call's own batch).
PLANS: dict[str, dict[str, Any]] = {
    "pattern_and_resid": dict(
        hooks=[("blocks.0.attn.hook_pattern", zero_head(1)), ("blocks.1.hook_resid_mid", scale(0.5))],
        toks=tokens(batch=3, seq=9, seed=1),
        kwargs={},
    ),
    "scores_pattern_and_z": dict(
        hooks=[
            ("blocks.0.attn.hook_pattern", scale(0.5)),
            ("blocks.1.attn.hook_attn_scores", scale(0.1)),
            ("blocks.2.attn.hook_z", add_to_head(0, 1.0)),
        ],
        toks=tokens(batch=2, seq=7, seed=2),
        kwargs={},
    ),
    # no route of its own: its layers keep sdpa while the other threads switch the shared config
    "no_hooks_stop_at_layer": dict(
        hooks=[],
        toks=tokens(batch=4, seq=5, seed=3),
        kwargs={"stop_at_layer": 2, "names_filter": lambda n: "resid" in n},
    ),
}


def one_call(bridge: Bridge, plan: dict[str, Any], fired: list) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A `hooks()` context around `run_with_cache`; every hook function notes the thread it ran in."""

    def noting(fn: Callable) -> Callable:
        def hook(tensor, point):
            fired.append(threading.get_ident())
            return fn(tensor, point)

        return hook

    with bridge.hooks(fwd_hooks=[(name, noting(fn)) for name, fn in plan["hooks"]]):
        out, cache = bridge.run_with_cache(plan["toks"], **plan["kwargs"])
    return out, dict(cache.items())


@pytest.fixture
def fast_switching():
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible: interleave the threads' hooks
    yield
    sys.setswitchinterval(interval)


@torch.no_grad()
def test_threads_calling_one_bridge_each_get_their_own_hooks_and_cache(fast_switching):
    bridge, reference = bridge_and_reference(SHAPE)
    expected = {name: one_call(bridge, plan, []) for name, plan in PLANS.items()}
    plain = hf_logits(reference, PLANS["pattern_and_resid"]["toks"], None)
    assert not torch.allclose(expected["pattern_and_resid"][0], plain), "the edits must change the logits"

    barrier = threading.Barrier(len(PLANS))
    problems: dict[str, list[str]] = {name: [] for name in PLANS}
    foreign: dict[str, int] = {}

    def worker(name: str) -> None:
        plan, fired = PLANS[name], []
        barrier.wait()
        try:
            for call in range(CALLS):  # grad mode is per thread: no_grad here too
                with torch.no_grad():
                    out, cache = one_call(bridge, plan, fired)
                want_out, want_cache = expected[name]
                if not torch.equal(out, want_out):
                    problems[name].append(f"call {call}: output differs")
                if cache.keys() != want_cache.keys():
                    problems[name].append(f"call {call}: cache keys differ")
                    continue
                wrong = [k for k, v in cache.items() if not torch.equal(v, want_cache[k])]
                if wrong:
                    problems[name].append(f"call {call}: {wrong[:3]} differ")
        except Exception as error:  # reported below with the thread's name
            problems[name].append(f"raised {type(error).__name__}: {error}")
        me = threading.get_ident()
        foreign[name] = sum(ident != me for ident in fired)
        if len(fired) - foreign[name] != CALLS * len(plan["hooks"]):
            problems[name].append(f"its hooks fired {len(fired) - foreign[name]} times in its own thread")

    threads = [threading.Thread(target=worker, args=(name,)) for name in PLANS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == {name: [] for name in PLANS}
    assert foreign == {name: 0 for name in PLANS}, "a thread's hook functions ran in another thread"
    assert torch.equal(bridge(PLANS["pattern_and_resid"]["toks"]), plain), "nothing is left attached"


@torch.no_grad()
def test_a_hooks_context_open_in_one_thread_does_not_reach_another_threads_calls():
    bridge, reference = bridge_and_reference(SHAPE)
    toks = tokens()
    plain = hf_logits(reference, toks, None)
    seen: dict[str, torch.Tensor] = {}
    opened, done = threading.Event(), threading.Event()

    def other_thread() -> None:
        opened.wait()
        seen["plain"] = bridge(toks)
        seen["cached"] = bridge.run_with_cache(toks, names_filter="blocks.1.attn.hook_pattern")[0]
        done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with bridge.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", zero_head(0)), ("hook_embed", scale(2.0))]):
        opened.set()
        done.wait()
        edited = bridge(toks)
    thread.join()
    assert not torch.allclose(edited, plain)
    assert torch.equal(seen["plain"], plain)
    torch.testing.assert_close(seen["cached"], plain, rtol=0, atol=1e-5)  # eager attention on layer 1


@torch.no_grad()
def test_add_hook_is_bridge_wide_and_runs_in_every_thread():
    bridge, _ = bridge_and_reference(SHAPE)
    toks = tokens()
    threads_seen: set[int] = set()
    lock = threading.Lock()

    def note(tensor, hook):
        with lock:
            threads_seen.add(threading.get_ident())

    bridge.add_hook("blocks.0.hook_resid_post", note)
    try:
        workers = [threading.Thread(target=bridge, args=(toks,)) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        bridge.reset_hooks()
    assert threads_seen == {worker.ident for worker in workers}
