"""Norm values that only the cache reads, computed once the forward is over (decision 0028).

`hook_scale` and `hook_normalized` are not tensors HF computes: the bridge recomputes them from the
norm's input (`kind.prepare`, `kind.scale`, a division: seven small kernels). On a small CPU model each
kernel costs about as much in dispatch as in arithmetic, so a `run_with_cache` of every point spent a
fifth of its time there. When a norm's points have only the cache's own functions (nothing edits,
nothing needs a gradient hook), the hook keeps the norm's input and the values are computed after the
forward, every norm of one kind, epsilon, shape and dtype in one stacked computation.

The values are the same bits: every step works along the last dimension only, row by row, and a CPU
reduction along a contiguous last dimension reduces each row alone, however many rows there are (the
tests compare with the per-norm computation and with HookedTransformer's formula by `torch.equal`).
Only CPU tensors of at most `MAX_NUMEL` elements are deferred: there dispatch dominates, and a GPU
reduction may choose its strategy by the number of rows. Plugin norm kinds (anything that is not the
built-in `NormKind`) are computed at the hook as before.

The input is held until the flush; its version is recorded with the forward's other hooked tensors
(`hook_values.py`), so if HF changes it in place later the point is learned, `run_with_cache` runs
again, and from then on the point is cloned, which is never deferred.
"""

from __future__ import annotations

from typing import Any

import torch

from ..kinds import NormKind

MAX_NUMEL = 1 << 16  # elements of one norm's input; larger inputs are computed at the hook


class DeferredNorms:
    """The norms of one forward whose values wait for `flush`."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        # (kind, eps, input, its version at the hook, {"scale" | "normalized": run})
        self.items: list[tuple[NormKind, float, torch.Tensor, int, dict[str, Any]]] = []

    @staticmethod
    def accepts(kind: Any, x: torch.Tensor, runs: dict[str, Any]) -> bool:
        """Whether this norm's values may wait: only the cache reads them, on a small CPU tensor."""
        return (
            type(kind) is NormKind
            and x.device.type == "cpu"
            and x.numel() <= MAX_NUMEL
            and not x.is_inference()  # no version counter: a later in-place change could not be seen
            and not any(run.writes or run.bwd or run.clone for run in runs.values())
        )

    def add(self, kind: NormKind, eps: float, x: torch.Tensor, runs: dict[str, Any]) -> None:
        """Keep the norm's input; its points' functions get it now as a placeholder, so a cache
        (whose functions store by name, `HookEntry.reads_only`) keeps the order the points fired in."""
        version = x._version
        self.items.append((kind, eps, x, version, runs))
        for run in runs.values():
            point = run.point
            for fn in run.fwd:
                fn(x, point)
            if run.watched is not None:
                run.watched.add(run, x, version)

    def clear(self) -> None:
        self.items = []

    def flush(self) -> None:
        """Compute every kept norm's values and give them to its points' functions."""
        items, self.items = self.items, []
        groups: dict[tuple, list[tuple[torch.Tensor, dict[str, Any]]]] = {}
        for kind, eps, x, version, runs in items:
            if x._version != version:
                continue  # changed in place since the hook: the guard learns it, run_with_cache runs again
            groups.setdefault((kind, eps, x.shape, x.dtype), []).append((x, runs))
        for (kind, eps, _, _), members in groups.items():
            single = len(members) == 1
            x = members[0][0] if single else torch.stack([m[0] for m in members])
            prepared = kind.prepare(x)
            scale = kind.scale(prepared, eps)
            wanted = any("normalized" in runs for _, runs in members)
            normalized = prepared / scale if wanted else None
            scales = (scale,) if single else scale.unbind(0)
            normals = (normalized,) if single or normalized is None else normalized.unbind(0)
            for i, (_, runs) in enumerate(members):
                for which, run in runs.items():
                    value = scales[i] if which == "scale" else normals[i]
                    point = run.point
                    for fn in run.fwd:
                        fn(value, point)
