"""Getting a spec and a model: by name, by file, from an HF checkpoint, or tiny and random.

Used by the `Bridge.from_*` constructors; nothing here touches a model the user passed in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers
from torch import nn

from ..errors import ModelNotFoundError
from ..registry import Registry
from ..spec.config import spec_error
from ..spec.loader import read_raw_spec, resolve_extends, validate_spec
from ..spec.plain import PlainSpec, is_spec

if TYPE_CHECKING:
    from ..spec.schema import Spec


def spec_from(
    spec: Spec | str | Path | None, registry: Registry, model: nn.Module | None = None, *, binding: bool = False
) -> tuple[Spec | PlainSpec, str]:
    """A validated spec and the file it came from, from a Spec, a registered name or a YAML path.
    `binding`: a built-in spec found for `model` may come as the plain tree the binder reads
    (`Registry.for_binding`; the caller hands out `plain.public_spec` of it)."""
    if is_spec(spec):
        return spec, "<in-memory spec>"
    if spec is None:
        if model is None:
            raise ValueError("give a spec or a model")
        found = registry.for_binding_model(model) if binding else registry.resolve_for_model(model)
        return found, registry.file(found.name)
    text = str(spec)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        raw = resolve_extends(read_raw_spec(text), registry.raw_spec)
        validated = validate_spec(raw)
        registry._check_kinds(validated, raw)
        return validated, text
    return registry.get(text), registry.file(text)


def spec_or_draft(
    spec: Spec | str | Path | None,
    registry: Registry,
    model: nn.Module | None = None,
    *,
    config: Any = None,
    draft: bool = True,
    binding: bool = False,
) -> tuple[Spec | PlainSpec, str]:
    """`spec_from` (or the registry's match for `config`); when no registered spec matches and `draft` is on,
    a spec drafted and verified by `bridge_core.drafting.onboarding` (a one-line warning says so)."""
    from ..errors import SpecNotFoundError

    try:
        if config is not None and spec is None:
            found = registry.resolve(config)
            return found, registry.file(found.name)
        return spec_from(spec, registry, model, binding=binding)
    except SpecNotFoundError:
        if spec is not None or not draft:
            raise
        from ..drafting.onboarding import onboard

        return onboard(config if config is not None else model.config, registry, type(model) if model else None)


def model_class(spec: Spec) -> type[nn.Module]:
    """The transformers model class a spec names in `hf_class` (a SpecError at that field when it is none)."""
    cls = getattr(transformers, spec.hf_class, None)
    if cls is None or not isinstance(cls, type):
        raise spec_error(
            f"transformers {transformers.__version__} has no model class '{spec.hf_class}'", spec, None, "hf_class"
        )
    if issubclass(cls, transformers.PretrainedConfig):
        model = _causal_lm_for(cls)
        hint = f" (for this config: {model})" if model else ""
        raise spec_error(
            f"'{spec.hf_class}' is a config class, not a model class; hf_class names the model class built "
            f"from it{hint}",
            spec,
            None,
            "hf_class",
        )
    if not issubclass(cls, transformers.PreTrainedModel):
        raise spec_error(
            f"'{spec.hf_class}' is not a model class: hf_class names a transformers PreTrainedModel such as "
            "GPT2LMHeadModel",
            spec,
            None,
            "hf_class",
        )
    return cls


def _causal_lm_for(config_class: type) -> str | None:
    """The name of the causal-LM class transformers pairs with a config class, where it has one."""
    from transformers.models.auto import modeling_auto

    return modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config_class, "model_type", ""))


def random_model(
    spec: Spec, seed: int = 0, tiny: bool = True, variant: str | None = None, **config_overrides: Any
) -> nn.Module:
    """A random model built offline, in eval mode: from the spec's `test_config` when `tiny` (with the
    delta of `variant`, one of the spec's `variants`), else from the HF config class's defaults (full
    size); `config_overrides` apply on top of either."""
    cls = model_class(spec)
    base = {**spec.test_config, **variant_delta(spec, variant)} if tiny else {}
    try:
        config = cls.config_class(**{**base, **config_overrides})
    except (TypeError, ValueError) as exc:
        raise spec_error(f"cannot build the HF config: {exc}", spec, None, "test_config") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = cls(config)
        except (ImportError, ValueError, TypeError) as exc:
            # transformers checks the config when it builds the model (an attention implementation whose
            # package is missing, sizes that do not divide): that is the spec's test_config at fault.
            message = f"cannot build a {cls.__name__} from this config: {type(exc).__name__}: {exc}"
            raise spec_error(message, spec, None, _culprit(exc, base) if tiny else "hf_class") from None
    return model.eval()


def variant_delta(spec: Spec, variant: str | None) -> dict[str, Any]:
    """The `test_config` changes of one of the spec's variants (`{}` for None, the base test model)."""
    if variant is None:
        return {}
    if variant not in spec.variants:
        known = ", ".join(spec.variants) or "none"
        raise spec_error(f"the spec has no variant '{variant}' (it declares: {known})", spec, None, "variants")
    return dict(spec.variants[variant])


def _culprit(exc: Exception, test_config: dict[str, Any]) -> str:
    """The test_config field an error from building the model points at, or `test_config` as a whole."""
    if isinstance(exc, ImportError) and "attn_implementation" in test_config:
        return "test_config.attn_implementation"  # the only config value that needs an optional package
    named = [key for key in test_config if key in str(exc)]
    return f"test_config.{named[0]}" if len(named) == 1 else "test_config"


def looks_local(name_or_path: str | Path) -> bool:
    """Whether a checkpoint name is meant as a local path rather than a hub id (`name` or `org/name`)."""
    if isinstance(name_or_path, Path):
        return True
    text = str(name_or_path)
    return (
        text.startswith((".", "~", os.sep))
        or os.path.isabs(text)
        or (os.altsep is not None and os.altsep != "/" and os.altsep in text)
        or (os.sep != "/" and os.sep in text)
        or text.endswith(("/", os.sep))
        or text.count("/") > 1  # a hub id has at most one "/", never at the end
    )


def require_checkpoint(name_or_path: str | Path) -> str | Path:
    """`name_or_path`, with `~` expanded; a ModelNotFoundError when it is a local path that does not exist
    (rather than transformers' long traceback ending in a hub repo-id error)."""
    if not looks_local(name_or_path):
        return name_or_path
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(str(name_or_path))
    return path if isinstance(name_or_path, Path) else str(path)


def pretrained_model(spec: Spec, name_or_path: str | Path, **hf_kwargs: Any) -> nn.Module:
    cls = model_class(spec)
    return cls.from_pretrained(require_checkpoint(name_or_path), **hf_kwargs).eval()


def load_tokenizer(name_or_path: str | Path) -> Any | None:
    """The checkpoint's tokenizer, or None when it has none (a tokenizer is optional)."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # transformers 5 builds an empty tokenizer (vocabulary 0, only added special tokens) for a checkpoint
    # that ships no tokenizer files.
    return tokenizer if getattr(tokenizer, "vocab_size", 0) else None
