"""Hook values are what the hook point saw, whatever HF does to the tensor afterwards (decision 0017).

A hook function gets HF's own tensor (no copy: the per-hook cost stays small). Some families change
that tensor in place after the hook point (Falcon's parallel block: `mlp_output += attention_output`
after `hook_mlp_out` saw the MLP output), so a cached tensor, or one a user hook stored, would hold
the later value. Each session records every hooked tensor's version counter after its hook functions
ran and compares it when the forward is over. A point found changed is learned by the bridge: from
then on its tensor is cloned before the hook functions see it. `run_with_cache`, whose functions only
read, re-runs a forward that found a new such point, so even the first cache is right; a call with
the user's own functions warns instead (its functions must not run twice).

Inference tensors (`torch.inference_mode`) have no version counter: there, only points learned
earlier on the bridge are cloned.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch


class HookValueChanged(UserWarning):
    """HF changed a hooked tensor in place after the hook; the hook's stored reference shows the later value."""


class Watch:
    """One forward's hooked tensors with their versions after the hook functions ran.

    Held strongly: a cached alias (`tensor.detach()`) shares the version counter but not the Python
    object, so a weak reference would die with HF's tensor. A point fires at most once per forward,
    so once more than twice `size` entries are held (a long `generate`), all but the last `size`
    belong to forwards already over: they are checked then and dropped, bounding what stays alive.
    """

    __slots__ = ("entries", "guard", "size")

    def __init__(self) -> None:
        self.entries: list[tuple[Any, torch.Tensor, int]] = []
        self.guard: HookValueGuard | None = None
        self.size = 64

    def add(self, run: Any, tensor: torch.Tensor, version: int) -> None:
        self.entries.append((run, tensor, version))
        if len(self.entries) > 2 * self.size:
            done, self.entries = self.entries[: -self.size], self.entries[-self.size :]
            if self.guard is not None:
                self.guard.learn(done)

    def clear(self) -> None:
        self.entries = []


class HookValueGuard:
    """Per bridge: the hook points whose tensor HF changes in place after the hook, learned from forwards."""

    def __init__(self) -> None:
        self.clone_points: set[str] = set()
        self.learned = 0  # bumped whenever a forward finds a new point (run_with_cache re-runs then)

    def mark(self, runs: list[Any], watch: Watch) -> None:
        """Before a forward: the point runs of learned points copy their tensor for the hook functions."""
        if self.clone_points:  # none learned: no run was ever marked (the set only grows)
            for run in runs:
                run.clone = run.point.name in self.clone_points
        watch.guard, watch.size = self, max(64, len(runs))

    def check(self, watch: Watch) -> None:
        """After a forward: learn every watched point whose tensor changed since its hook functions ran."""
        self.learn(watch.entries)
        watch.clear()

    def learn(self, entries: list[tuple[Any, torch.Tensor, int]]) -> None:
        new = {}
        for run, tensor, version in entries:
            if tensor._version != version and run.point.name not in self.clone_points:
                new[run.point.name] = run
        if not new:
            return
        for run in new.values():
            run.clone = True  # for the rest of this session too (the next steps of a generate)
        self.clone_points |= set(new)
        self.learned += 1
        users = sorted(name for name, run in new.items() if run.writes)
        if users:
            warnings.warn(
                f"HF changed the tensor of {', '.join(users)} in place after your hook saw it, so a reference "
                "your hook kept now holds the later value; from now on this bridge gives hooks there a copy",
                HookValueChanged,
                stacklevel=2,
            )
