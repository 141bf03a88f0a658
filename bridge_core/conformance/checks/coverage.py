"""Variant coverage: every conditional expression of a spec (`x if c else y`) must take both branches
over the spec's tiny test models (`test_config` and each of its `variants`), so that each branch is
held to HF by the rest of the catalogue on at least one of them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...spec.expressions import BranchKey, conditionals, recording_branches
from ...spec.schema import Spec
from ..catalogue import Meter, Skip, check
from ..context import CheckContext

_NOT_EXPRESSIONS = {"name", "description", "extends", "override", "match", "hf_class", "test_config", "variants"}


def spec_strings(spec: Spec) -> Iterator[tuple[str, str]]:
    """(dotted field, text) of every string in the spec that may be an expression."""

    def walk(value: Any, path: str) -> Iterator[tuple[str, str]]:
        if isinstance(value, str):
            yield path, value
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from walk(item, f"{path}.{i}")

    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    for key, value in dumped.items():
        if key not in _NOT_EXPRESSIONS:
            yield from walk(value, key)


def branches_taken(ctx: CheckContext) -> tuple[dict[BranchKey, set[bool]], list[tuple[str, str]]]:
    """Bind a fresh tiny model of the base test config and of each variant, recording conditionals;
    returns the sides taken and (variant, error) for test models that would not build or bind."""
    from ...bridge import Bridge, loading

    taken: dict[BranchKey, set[bool]] = {}
    broken = []
    for variant in [None, *ctx.spec.variants]:
        with recording_branches() as seen:
            try:
                model = loading.random_model(ctx.spec, seed=ctx.seed, variant=variant)
                ctx.registry.plugins.results("bridge_core_prepare_model", spec=ctx.spec, model=model)
                Bridge(model, ctx.spec, registry=ctx.registry, spec_file=ctx.spec_file)
            except Exception as exc:  # reported as this check's failure, naming the variant
                broken.append((variant or "test_config", f"{type(exc).__name__}: {exc}"))
        for key, sides in seen.items():
            taken.setdefault(key, set()).update(sides)
    return taken, broken


@check(
    "variant_coverage",
    statement="every conditional expression of the spec (`x if c else y`) took both branches over its test_config "
    "and variants, so each branch met HF in the other checks",
    family="config",
    figure="one-sided conditionals",
)
def variant_coverage(ctx: CheckContext, m: Meter) -> None:
    if ctx.spec is None:
        raise Skip("the spec did not load")
    if ctx.variant is not None:
        raise Skip("checked once per spec, on its base test model")
    taken, broken = branches_taken(ctx)
    for variant, error in broken:
        m.fail(f"test model '{variant}' does not build or bind: {error}", f"variants.{variant}")
    one_sided = 0
    for field, text in spec_strings(ctx.spec):
        for key in conditionals(text):
            sides = taken.get(key, set())
            if len(sides) == 2:
                continue
            one_sided += 1
            took = (
                "neither branch (never evaluated)"
                if not sides
                else f"only the {'if' if True in sides else 'else'} branch"
            )
            m.fail(
                f"{field}: '{text}' took {took} over test_config and {len(ctx.spec.variants)} variant(s); "
                "add a variant that takes the other",
                field,
            )
    m.count(one_sided, "conditional expressions that took one branch only")
