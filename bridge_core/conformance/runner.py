"""`run(spec) -> Report`: load the spec and a model (tiny from `test_config` and one of its `variants`, or
a checkpoint), snapshot it, deep-copy it, bind the bridge, and run every catalogued check against that
one context. `run_variants` runs the catalogue on every tiny test model a spec declares.

Used by `bridge-core conform`, the pytest plugin and tests; `build_context` and `run_checks` are
separate so a test can tamper with a context before its checks run (the suite proving itself).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import BridgeCoreError, SpecNotFoundError
from ..registry import Registry, default_registry
from ..spec.schema import Spec
from .catalogue import Check, Meter, Skip, catalogue
from .context import CheckContext
from .report import CheckResult, Report
from .snapshot import ModelSnapshot

Progress = Callable[[CheckResult], None]


def _label(spec: Spec | str | Path) -> str:
    if isinstance(spec, Spec):
        return spec.name
    text = str(spec)
    return Path(text).stem if text.endswith((".yaml", ".yml")) else text


EAGER = "eager"
"""The load every spec gets besides its own: the base test model in eager attention (unless the spec's
`test_config` already names an attention implementation)."""

PERTURBATION = 0.3
"""Std of the noise added to every 1-d parameter (norm weights and biases) and 2-d `*_bias` parameter (fused
experts' biases) of a tiny test model: HF
initializes them to ones and zeros, where a swapped norm or a dropped bias changes nothing; buffers named
`*logits_bias` (BART's final_logits_bias, zeros at init) and `*correction_bias` (DeepSeek-V3's selection-only
`e_score_correction_bias`, zeros at init) likewise, and every all-zero parameter matrix (AFMoE's router weight)."""


def perturb(model: nn.Module, seed: int) -> None:
    """Deterministically randomize the norm weights and biases of a tiny model built for the checks (never a
    model the user passed in); done before the snapshot and the untouched copy are taken."""
    generator = torch.Generator().manual_seed(seed + 1009)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            # 1-d: norm weights and biases; 2-d `*_bias`: fused experts' biases [n_experts, width] (GPT-OSS's
            # gate_up_proj_bias), zeros at init too; any all-zero matrix (AFMoE's router starts at zero: its logits
            # would be 0 and every scoring would route alike)
            floating = parameter.dtype.is_floating_point
            is_bias = parameter.dim() == 1 or (parameter.dim() == 2 and name.endswith("_bias"))
            zero = parameter.dim() > 1 and floating and not parameter.any()
            if (is_bias and floating) or zero:
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                parameter.add_((noise * PERTURBATION).to(parameter.dtype))
        for name, buffer in sorted(model.named_buffers()):  # zero-initialized output biases (final_logits_bias)
            if name.endswith(("logits_bias", "correction_bias")) and buffer.dtype.is_floating_point:
                noise = torch.randn(buffer.shape, generator=generator, dtype=torch.float32)
                buffer.add_((noise * PERTURBATION).to(buffer.dtype))


def variants_of(spec: Spec) -> list[str | None]:
    """Every tiny test model of a spec: None (the base `test_config`), each declared variant, and `eager`."""
    loads = [None, *spec.variants]
    if EAGER not in spec.variants and "attn_implementation" not in spec.test_config:
        loads.append(EAGER)
    return loads


def _load_kwargs(spec: Spec, variant: str | None) -> dict:
    if variant == EAGER and variant not in spec.variants:
        return {"attn_implementation": "eager"}
    return {"variant": variant}


def build_context(
    spec: Spec | str | Path | None,
    model: nn.Module | str | Path | None = None,
    *,
    seed: int = 0,
    registry: Registry | None = None,
    variant: str | None = None,
) -> CheckContext:
    """Everything the checks need; a spec or model that cannot be loaded or bound is kept as `error`
    (the `bind` check reports it). An unknown spec name raises `SpecNotFoundError`. `variant`: one of
    the spec's `variants` (or `eager`) for the tiny model; ignored when a model is given."""
    from ..bridge import Bridge, loading

    registry = registry or default_registry()
    label = _label(spec) if spec is not None else str(model)
    try:
        if spec is None:
            if not isinstance(model, (str, Path)):
                found, file = loading.spec_from(None, registry, model)
            else:
                import transformers

                found = registry.resolve(transformers.AutoConfig.from_pretrained(model))
                file = registry.file(found.name)
        else:
            found, file = loading.spec_from(spec, registry)
        label = found.name if variant is None or model is not None else f"{found.name}[{variant}]"
    except SpecNotFoundError:
        raise
    except (BridgeCoreError, OSError) as exc:
        return CheckContext(None, str(spec), label, error=exc, seed=seed, model_source="not built", registry=registry)
    kept = {"registry": registry}
    source = "tiny random model from test_config" + (f" + variant {variant}" if variant else "")
    made_here = model is None
    try:
        if model is None:
            model = loading.random_model(found, seed=seed, tiny=True, **_load_kwargs(found, variant))
            perturb(model, seed)
        elif isinstance(model, (str, Path)):
            source = f"checkpoint {model}"
            model = loading.pretrained_model(found, model)
        else:
            source = f"given {type(model).__name__}"
        registry.plugins.results("bridge_core_prepare_model", spec=found, model=model)
    except (BridgeCoreError, OSError, ValueError) as exc:
        return CheckContext(found, file, label, error=exc, seed=seed, model_source=source, variant=variant, **kept)
    snapshot = ModelSnapshot.take(model)
    twin = copy.deepcopy(model).eval()
    parts = {"model": model, "copy": twin, "snapshot": snapshot, "seed": seed, "model_source": source}
    parts["variant"] = variant if made_here else None
    parts["registry"] = registry
    try:
        bridge = Bridge(model, found, registry=registry, spec_file=file)
    except Exception as exc:  # any failure to bind is the `bind` check's finding, whatever its type
        return CheckContext(found, file, label, error=exc, **parts)
    ctx = CheckContext(found, file, label, bridge=bridge, **parts)
    ctx.warm_up()
    return ctx


def run_check(item: Check, ctx: CheckContext) -> CheckResult:
    """Run one check; its exceptions become failures, `Skip` a skip with its reason."""
    start = time.perf_counter()
    meter = Meter(item.tolerance, item.rtol)
    result = CheckResult(item.name, item.family, item.statement, "pass", None, item.figure, item.tolerance)
    try:
        if item.needs_bridge and ctx.bridge is None:
            raise Skip(f"the spec did not bind ({type(ctx.error).__name__})")
        if item.needs_bridge and not item.encoder_decoder and ctx.is_encoder_decoder:
            raise Skip("encoder-decoder models are not covered by this check yet (it feeds decoder-only inputs)")
        item.function(ctx, meter)
    except Skip as skip:
        result.status, result.message = "skip", str(skip)
    except Exception as exc:
        meter.fail(f"raised {type(exc).__name__}: {exc}", _field_of(exc))
    if result.status != "skip":
        if meter.compared == 0 and not meter.failures:
            meter.fail("compared nothing (a check must measure something)")
        result.figure = meter.figure
        if meter.failures:
            result.status = "fail"
            result.message = meter.failures[0].message
            result.field = meter.failures[0].field
            result.details = [f.message for f in meter.failures[1:6]]
    result.seconds = time.perf_counter() - start
    return result


def _field_of(exc: BaseException) -> str | None:
    return getattr(exc, "spec_path", None) or getattr(exc, "field", None)


def run_checks(ctx: CheckContext, checks: Sequence[str] | None = None, progress: Progress | None = None) -> Report:
    start = time.perf_counter()
    report = Report(ctx.label, ctx.spec_file, ctx.model_source)
    for item in catalogue(checks):
        result = run_check(item, ctx)
        report.results.append(result)
        if progress is not None:
            progress(result)
    report.seconds = time.perf_counter() - start
    return report


def run(
    spec: Spec | str | Path | None,
    model: nn.Module | str | Path | None = None,
    *,
    checks: Sequence[str] | None = None,
    seed: int = 0,
    registry: Registry | None = None,
    progress: Progress | None = None,
    variant: str | None = None,
) -> Report:
    """Run the conformance catalogue on a spec (a Spec, a registered name or a YAML path).

    `model`: an HF model you hold or a checkpoint path; by default a tiny random model built offline
    from the spec's `test_config` (plus the delta of `variant`). The model is snapshotted first and
    checked left as found at the end.
    """
    ctx = build_context(spec, model, seed=seed, registry=registry, variant=variant)
    return run_checks(ctx, checks, progress)


def run_variants(
    spec: Spec | str | Path,
    *,
    checks: Sequence[str] | None = None,
    seed: int = 0,
    registry: Registry | None = None,
    progress: Progress | None = None,
) -> list[Report]:
    """One report per tiny test model of the spec (`variants_of`); a spec that cannot be read gives one."""
    registry = registry or default_registry()
    return [
        run(spec, checks=checks, seed=seed, registry=registry, progress=progress, variant=variant)
        for variant in variant_names(spec, registry)
    ]


def variant_names(spec: Spec | str | Path, registry: Registry | None = None) -> list[str | None]:
    """`variants_of` a spec given by name or file; `[None]` when it cannot be read (its report says why)."""
    from ..bridge import loading

    try:
        found, _ = loading.spec_from(spec, registry or default_registry())
    except SpecNotFoundError:
        raise
    except (BridgeCoreError, OSError):
        return [None]
    return variants_of(found)


def all_names(registry: Registry | None = None) -> list[str]:
    return (registry or default_registry()).names()
