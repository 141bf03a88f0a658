"""`bridge-core scaffold`: a draft spec for a model type or a checkpoint's config.

A thin shim over `bridge_core.drafting`, which drafts by observing a tiny model's forward
(docs/decisions/0018-drafting-by-observation.md). `meta_model` stays for callers that want the full-size
module tree without allocating it.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn

from .drafting import Draft, draft_config, draft_model_type, to_yaml
from .errors import ScaffoldError

__all__ = ["Draft", "draft_text", "meta_model", "scaffold", "to_yaml"]


def meta_model(model_type: str | None = None, path: str | None = None) -> tuple[nn.Module, Any]:
    """The model class for a model type or checkpoint, built on the meta device from its config."""
    try:
        config = (
            transformers.AutoConfig.from_pretrained(path) if path else transformers.AutoConfig.for_model(model_type)
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ScaffoldError(f"cannot read a config for {path or model_type!r}: {exc}") from None
    with torch.device("meta"):
        try:
            model = transformers.AutoModelForCausalLM.from_config(config)
        except ValueError:
            model = transformers.AutoModelForSeq2SeqLM.from_config(config)
    return model, config


def scaffold(model: nn.Module, config: Any) -> Draft:
    """A draft for the model's class and config (the model itself is not run: a tiny twin is)."""
    return draft_config(config, type(model))


def draft_text(model_type: str | None = None, path: str | None = None) -> str:
    """The YAML draft `bridge-core scaffold` prints."""
    if path:
        try:
            config = transformers.AutoConfig.from_pretrained(path)
        except (OSError, ValueError, KeyError) as exc:
            raise ScaffoldError(f"cannot read a config for {path!r}: {exc}") from None
        return to_yaml(draft_config(config))
    return to_yaml(draft_model_type(model_type))
