"""Getting a spec and a model: by name, by file, from an HF checkpoint, or tiny and random.

Used by the `Bridge.from_*` constructors; nothing here touches a model the user passed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from ..registry import Registry
from ..spec.config import spec_error
from ..spec.loader import read_raw_spec, resolve_extends, validate_spec
from ..spec.schema import Spec


def spec_from(spec: Spec | str | Path | None, registry: Registry, model: nn.Module | None = None) -> tuple[Spec, str]:
    """A validated spec and the file it came from, from a Spec, a registered name or a YAML path."""
    if isinstance(spec, Spec):
        return spec, "<in-memory spec>"
    if spec is None:
        if model is None:
            raise ValueError("give a spec or a model")
        found = registry.resolve_for_model(model)
        return found, registry.file(found.name)
    text = str(spec)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        raw = resolve_extends(read_raw_spec(text), registry.raw_spec)
        validated = validate_spec(raw)
        registry._check_kinds(validated, raw)
        return validated, text
    return registry.get(text), registry.file(text)


def model_class(spec: Spec) -> type[nn.Module]:
    cls = getattr(transformers, spec.hf_class, None)
    if cls is None or not isinstance(cls, type):
        raise spec_error(
            f"transformers {transformers.__version__} has no model class '{spec.hf_class}'", spec, None, "hf_class"
        )
    return cls


def random_model(spec: Spec, seed: int = 0, tiny: bool = True, **config_overrides: Any) -> nn.Module:
    """A random model built offline, in eval mode: from the spec's `test_config` when `tiny`, else
    from the HF config class's defaults (full size); `config_overrides` apply on top of either."""
    cls = model_class(spec)
    base = spec.test_config if tiny else {}
    try:
        config = cls.config_class(**{**base, **config_overrides})
    except (TypeError, ValueError) as exc:
        raise spec_error(f"cannot build the HF config: {exc}", spec, None, "test_config") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.eval()


def pretrained_model(spec: Spec, name_or_path: str | Path, **hf_kwargs: Any) -> nn.Module:
    return model_class(spec).from_pretrained(name_or_path, **hf_kwargs).eval()


def load_tokenizer(name_or_path: str | Path) -> Any | None:
    """The checkpoint's tokenizer, or None when it has none (a tokenizer is optional)."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # transformers 5 builds an empty tokenizer (vocabulary 0, only added special tokens) for a checkpoint
    # that ships no tokenizer files.
    return tokenizer if getattr(tokenizer, "vocab_size", 0) else None
