"""Checks that the bridge leaves no trace: nothing left attached after reset_hooks, a failing hook or
a hooks() context, and the model left as found (runs after every other check)."""

from __future__ import annotations

import torch

from ..catalogue import Meter, Skip, check
from ..context import CheckContext
from ..snapshot import config_state, hook_state


class _Deliberate(Exception):
    """Raised by the check's own failing hook."""


def _leftovers(ctx: CheckContext, when: str, m: Meter) -> None:
    hooks = hook_state(ctx.model)
    extra = sorted(k for k in set(hooks) | set(ctx.snapshot.hooks) if hooks.get(k) != ctx.snapshot.hooks.get(k))
    m.count(len(extra), f"hook dictionaries changed {when}" + (f" (e.g. {extra[0]})" if extra else ""))
    m.require(config_state(ctx.model) == ctx.snapshot.configs, f"a config object was left changed {when}")


@check(
    "hygiene",
    statement="after reset_hooks, after a hook that raises (module and attention points), and after a hooks() "
    "context, no hook is left attached, configs are restored, and the forward is HF's again",
    family="hygiene",
    figure="leftover hooks",
)
def hygiene(ctx: CheckContext, m: Meter) -> None:
    bridge = ctx.bridge
    fired = {"n": 0}

    def counting(tensor: torch.Tensor, hook) -> None:
        fired["n"] += 1

    with torch.no_grad():
        bridge.add_hook(lambda name: True, counting)
        bridge(ctx.tokens, **ctx.inputs)
        _leftovers(ctx, "between calls while hooks are added", m)
        bridge.reset_hooks()
        before = fired["n"]
        bridge(ctx.tokens, **ctx.inputs)
        m.require(before > 0 and fired["n"] == before, "a hook kept firing after reset_hooks()")
        _leftovers(ctx, "after reset_hooks()", m)
        names = bridge.hook_names()
        targets = [n for n in names if n.endswith(("hook_pattern", "hook_resid_mid", "mlp.hook_post"))] or names[:1]
        for target in targets:
            error = _Deliberate(target)

            def failing(tensor: torch.Tensor, hook, error=error) -> None:
                raise error

            try:
                ctx.bridge_hooked([(lambda name: True, counting), (target, failing)])
                m.require(False, f"a hook raising at '{target}' did not propagate its exception")
            except _Deliberate as raised:
                m.require(raised is error, f"a hook raising at '{target}' propagated another exception object")
            _leftovers(ctx, f"after a hook raised at '{target}'", m)
        try:
            with bridge.hooks(fwd_hooks=[(lambda name: True, counting)]):
                raise _Deliberate("inside hooks()")
        except _Deliberate:
            pass
        _leftovers(ctx, "after an exception inside bridge.hooks()", m)
        fired["n"] = 0
        logits = bridge(ctx.tokens, **ctx.inputs)
        m.require(fired["n"] == 0, "hooks added inside hooks() still fire after it exited")
        m.compare("logits after all of the above vs HF", logits, ctx.plain_logits, tolerance=0.0)


@check(
    "model_left_as_found",
    statement="after every other check, parameters and buffers are bitwise the same tensors, and the module tree, "
    "config objects and every hook dictionary equal the snapshot taken before the bridge was built",
    family="hygiene",
    figure="differences",
    needs_bridge=False,
    final=True,
)
def model_left_as_found(ctx: CheckContext, m: Meter) -> None:
    if ctx.snapshot is None:
        raise Skip("no model was built, so there is nothing to compare")
    differences = ctx.snapshot.differences(ctx.model)
    for line in differences[:5]:
        m.fail(line)
    m.count(len(differences), "differences from the snapshot")
