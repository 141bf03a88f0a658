"""Model classes for a model type, tiny models built from shrunk configs, and the scope of the drafter.

`model_class_for(config)` is the causal-LM (else seq2seq-LM) class transformers' auto mappings pair with
the config; `tiny_model` builds and forwards one (a test configuration is one HF itself runs);
`out_of_scope` says why a model is not a text transformer the spec vocabulary describes, from what the
class and config show (their inputs and sub-configs), never from a list of names.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers
from torch import nn

from .errors import DraftingError
from .shrink import shrink

_SIGNAL_INPUTS = ("input_features", "input_values", "audio_values", "input_audio_embeds")
_NON_TEXT = ("vision_config", "audio_config", "speech_config", "vision_tower", "image_token_id", "mm_tokens_per_image")


def mapping_names() -> tuple[dict[str, str], dict[str, str]]:
    """transformers' causal-LM and seq2seq-LM auto mappings: model_type -> class name."""
    from transformers.models.auto import modeling_auto

    return dict(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), dict(
        modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    )


def model_class_for(model_type: str) -> type[nn.Module]:
    causal, seq2seq = mapping_names()
    # a type in both mappings (BART's family) is an encoder-decoder whose causal class is its decoder alone
    name = seq2seq.get(model_type) or causal.get(model_type)
    if name is None:
        raise DraftingError(
            "model class", f"transformers has no causal or seq2seq LM class for {model_type!r}"
        ) from None
    cls = getattr(transformers, name, None)
    if cls is None:
        raise DraftingError("model class", f"transformers {transformers.__version__} cannot import {name}") from None
    return cls


def default_config(cls: type[nn.Module], model_type: str | None = None) -> Any:
    try:
        return cls.config_class()
    except Exception as exc:  # some config classes need arguments: the auto config then
        if model_type is None:
            raise DraftingError("config", f"{cls.config_class.__name__}() failed: {exc}") from None
        try:
            return transformers.AutoConfig.for_model(model_type)
        except Exception as auto_exc:
            raise DraftingError(
                "config",
                f"transformers' own default {cls.config_class.__name__} does not validate: "
                f"{type(auto_exc).__name__}: {auto_exc}",
            ) from None


def out_of_scope(cls: type[nn.Module], config: Any) -> str | None:
    """Why a model class is not a text transformer drafted here, or None."""
    main_input = getattr(cls, "main_input_name", "input_ids")
    if main_input != "input_ids":
        return f"audio/speech or non-text input (the model's main input is `{main_input}`)"
    from transformers.models.auto import modeling_auto as _auto

    speech = _auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES.get(getattr(config, "model_type", None))
    if speech and getattr(config, "is_encoder_decoder", False) and cls.__name__ != speech:
        if "decoder_input_ids" not in inspect.signature(cls.forward).parameters:
            return f"the text decoder of a speech encoder-decoder ({speech} reads audio features)"
        return f"a speech encoder-decoder family ({speech} reads audio features; {cls.__name__} is its text path)"
    wrapped = getattr(config, "text_config", None)
    if any(getattr(config, key, None) is not None for key in _NON_TEXT):
        text = getattr(wrapped, "model_type", None)
        also = f"; its text stack is model type `{text}`" if text else ""
        return f"multimodal wrapper (vision/audio sub-config){also}"
    signal = next((p for p in inspect.signature(cls.forward).parameters if p in _SIGNAL_INPUTS), None)
    if signal:
        return f"audio/speech encoder (the model's forward takes `{signal}` beside the token ids)"
    from transformers.models.auto import modeling_auto

    masked = getattr(config, "model_type", None) in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    causal = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config, "model_type", None))
    if masked and cls.__name__ == causal:  # the causal head of a masked-LM family
        if getattr(config, "is_encoder_decoder", False):
            return "the decoder half of an encoder-decoder model used alone (see its seq2seq class)"
        return "encoder-only model used as a decoder (a masked-LM family; `is_decoder` is off by default)"
    from .scope import borrowed_kv_reason, codebook_reason, composite_reason, recurrent_reason

    return (
        composite_reason(config)
        or borrowed_kv_reason(cls)
        or recurrent_reason(cls, config)
        or codebook_reason(cls, config)
    )


def tiny_config(cls: type[nn.Module], base: Any) -> tuple[dict[str, Any], list[str], Any]:
    """The shrink overrides of `base`, their notes, and the config class built from them."""
    overrides, notes = shrink(base)
    return overrides, notes, config_from(cls, overrides)


def config_from(cls: type[nn.Module], overrides: dict[str, Any]) -> Any:
    """`cls`'s config class built from the shrunk overrides, or the drafting step that failed."""
    try:
        return cls.config_class(**overrides)
    except Exception as exc:
        raise DraftingError(
            "shrink", f"{cls.config_class.__name__}(**tiny) failed: {type(exc).__name__}: {exc}"
        ) from None


def build(cls: type[nn.Module], config: Any, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return cls(config).eval()
        except Exception as exc:
            error = DraftingError(
                "build", f"{cls.__name__}(tiny config) failed{_where(exc)}: {type(exc).__name__}: {exc}"
            )
            error.reads = _config_reads(exc)
            raise error from None


def builds_on_meta(cls: type[nn.Module], config: Any) -> bool:
    """Whether `cls` builds from `config` at full size (on the meta device: no memory, no initialization)."""
    try:
        with torch.device("meta"):
            cls(config)
    except Exception:
        return False
    return True


def example_inputs(model: nn.Module, seq: int = 6) -> dict[str, torch.Tensor]:
    vocab = int(getattr(model.config, "vocab_size", 50) or 50)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, max(4, vocab), (1, seq), generator=generator)
    inputs = {"input_ids": tokens}
    if getattr(model.config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = tokens[:, : seq - 1]
    return inputs


def forward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
    try:
        with torch.no_grad():
            return model(**inputs, use_cache=False)
    except Exception as exc:
        raise DraftingError(
            "forward", f"the tiny {type(model).__name__} failed to run{_where(exc)}: {type(exc).__name__}: {exc}"
        ) from None


def _where(exc: BaseException) -> str:
    """Where in transformers an exception was raised (` in modeling_x.py:123 (Cls.__init__)`), or ''."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "transformers" in f.filename]
    if not frames:
        return ""
    last = frames[-1]
    return f" in {last.filename.rsplit('/', 1)[-1]}:{last.lineno} ({last.name})"


def _config_reads(exc: BaseException) -> list[str]:
    """The config attributes the failing line reads (`config.layer_types[...]`) or that were missing (an
    AttributeError's name): where a default config leaves a field unset, these name it."""
    import re
    import traceback

    names = [exc.name] if isinstance(exc, AttributeError) and isinstance(exc.name, str) else []
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "transformers" in f.filename]
    if frames and frames[-1].line:
        names += re.findall(r"config\.(\w+)", frames[-1].line)
    return list(dict.fromkeys(names))
