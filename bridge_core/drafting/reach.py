"""Reach: conformance for a model type, with its registered spec or a drafted one.

`conform_model_type(T)` builds nothing itself: a registered spec (matched by the class and model type)
runs on its own tiny test models; otherwise the drafter's spec runs on the tiny model it observed.
The outcome is one of: builtin (registered spec), passing (drafted, every check passed), failing (which
checks, or which drafting step, and the missing vocabulary), out_of_scope (why).
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from ..errors import BridgeCoreError, SpecNotFoundError
from ..records import record

FAST_CHECKS = (
    "bind",
    "config_fields",
    "forward_parity",
    "hook_fire_counts",
    "attention_semantics",
    "qkv_recompute",
    "attn_output",
    "norms",
    "norm_roles",
    "residual_stream",
    "mlp",
    "embed",
    "pos_embed",
    "unembed",
)
"""The subset automatic onboarding runs (a few seconds): binding, config, parity with HF's forward, and the
per-role checks that catch a wrong role or kind; interventions, generation and hygiene are left to
`bridge-core conform`."""


@record
class Outcome:
    model_type: str
    status: str  # builtin | passing | failing | out_of_scope
    detail: str = ""
    failing: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    spec: str | None = None  # the registered spec's name
    reports: list[Any] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "reports"}
        out["reports"] = [r.to_dict() for r in self.reports]
        return out


def registered_spec(model_type: str, registry=None) -> str | None:
    from ..registry import default_registry
    from .build import model_class_for

    registry = registry or default_registry()

    class _Config:  # what resolve reads: the class a mapping pairs with the type, and the type
        pass

    _Config.architectures = [model_class_for(model_type).__name__]
    _Config.model_type = model_type
    try:
        return registry.resolve(_Config).name
    except SpecNotFoundError:
        return None


def conform_model_type(
    model_type: str, *, checks=None, registry=None, variants: bool = True, run_builtin: bool = True
) -> Outcome:
    import time

    from ..conformance.runner import run, variants_of
    from .drafter import draft_model_type
    from .emit import to_spec
    from .errors import DraftingError, OutOfScopeError

    start = time.perf_counter()
    outcome = Outcome(model_type, "failing")
    try:
        name = registered_spec(model_type, registry)
    except BridgeCoreError as exc:
        outcome.detail = str(exc)
        return outcome
    try:
        if name is not None:
            outcome.status, outcome.spec = "builtin", name
            if run_builtin:
                loads = variants_of(_registry(registry).get(name)) if variants else [None]
                outcome.reports = [run(name, checks=checks, registry=registry, variant=v) for v in loads]
        else:
            draft = draft_model_type(model_type)
            outcome.gaps = [str(g) for g in draft.gaps]
            spec = to_spec(draft)
            loads = variants_of(spec) if variants else [None]
            for variant in loads:  # the base test model first; its failures are the finding, variants add cost
                outcome.reports.append(run(spec, checks=checks, registry=registry, variant=variant))
                if not outcome.reports[-1].ok:
                    break
    except OutOfScopeError as exc:
        outcome.status, outcome.detail = "out_of_scope", exc.reason
        return outcome
    except DraftingError as exc:
        outcome.detail = f"drafting step '{exc.step}': {exc.reason}"
        outcome.gaps = [*outcome.gaps, *exc.gaps]  # a draft that did not validate keeps its own gaps
        outcome.seconds = time.perf_counter() - start
        return outcome
    failed = sorted({r.name for rep in outcome.reports for r in rep.failed()})
    outcome.failing = failed
    if outcome.status != "builtin":
        # a draft with gaps describes part of the model (MoE drafted as its shared expert): never "passing"
        outcome.status = "failing" if failed or outcome.gaps else "passing"
    if outcome.gaps and not failed and outcome.status == "failing":
        outcome.detail = "every check passed, but the draft describes only part of the model"
    if failed:
        first = next(r for rep in outcome.reports for r in rep.failed())
        outcome.detail = f"{first.name}: {first.message}"
    outcome.seconds = time.perf_counter() - start
    return outcome


def _registry(registry):
    from ..registry import default_registry

    return registry or default_registry()
