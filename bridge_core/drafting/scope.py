"""Scope rules read from a model's config and class before anything is built: recurrent-state models (no
attention, or hybrids of attention and state-space / linear-attention / conv layers) and audio codebook models.

The drafter describes text transformers whose every block attends over keys and values. A config says when
layers keep a recurrent state instead: transformers' own cache vocabulary names such layers in `layer_types`
(`conv`, `linear_attention` hold a recurrent state; `hybrid` layers hold both), and state-space configs carry
their state's fields (`state_size`, `mamba_*`, `ssm_*`). Such a model is out of scope: with no attention head
count it has no attention at all; with one, it is a hybrid (see the legend of docs/reference/coverage.md).

A composite wrapper (transformers' EncoderDecoderModel) declares its `encoder` and `decoder` sub-configs as
`AutoConfig`: each stack is a whole model of another model type, drafted (or specified) as that type. A
speculative-decoding assistant (Gemma 4's) reads keys and values its target model computed (`shared_kv_states`
in its forward): it does not run on token ids alone.

A looped (recurrent-depth) model is in scope but has structure the spec cannot state: `structure_gaps` names
it from the config when drafting stops before a forward is observed.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from torch import nn

from .shrink import plain_fields

_RECURRENT = ("conv", "linear_attention")  # cache layers with a recurrent state and no keys/values
_BOTH = ("hybrid", "hybrid_sliding")  # one layer with a recurrent state and attention
_STATE_FIELD = re.compile(r"mamba|ssm|(?<!hidden_)state")  # a recurrent state's fields, not output_hidden_states
_ATTENTION = re.compile(r"^num_attention_heads$|attn_layer|attention_layer")


def recurrent_reason(cls: type[nn.Module], config: Any) -> str | None:
    """Why `config` describes a model whose layers keep a recurrent state, or None."""
    fields = plain_fields(config)
    types = fields.get("layer_types")
    types = [t for t in types if isinstance(t, str)] if isinstance(types, list) else []
    recurrent = sorted({t for t in types if t in _RECURRENT + _BOTH})
    state = [k for k in fields if _STATE_FIELD.search(k)]
    carried = "state" in inspect.signature(cls.forward).parameters  # RWKV: the forward passes its state along
    if not (recurrent or state or carried):
        return None
    attends = [k for k in fields if _ATTENTION.search(k) and fields[k] not in (None, 0, [])]
    attends += sorted({t for t in types if t not in _RECURRENT and t.endswith("attention")})
    seen = f"layer_types {recurrent}" if recurrent else f"config fields {state[:3]}" if state else "`state` input"
    if attends or any(t in _BOTH for t in recurrent):
        return f"hybrid: state-space / linear-attention layers beside attention ({seen}; attention: {attends[:2]})"
    return f"no attention: every layer keeps a recurrent state (state-space / recurrent model; {seen})"


def codebook_reason(cls: type[nn.Module], config: Any) -> str | None:
    """Why a model reads audio codec tokens (one embedding per codebook), or None; built on the meta device."""
    books = getattr(config, "num_codebooks", None)
    if not isinstance(books, int) or books < 2:
        return None
    import torch

    try:
        with torch.device("meta"):
            embeddings = cls(config).get_input_embeddings()
    except Exception:
        return None
    if isinstance(embeddings, nn.ModuleList) and len(embeddings) == books:
        return f"audio codebooks: one token embedding per codebook (num_codebooks {books}), not a text token stream"
    return None


def composite_reason(config: Any) -> str | None:
    """Why `config` composes two other model types (its encoder and decoder sub-configs are any model type's
    config: `AutoConfig` in its `sub_configs`), or None."""
    from transformers import AutoConfig

    declared = getattr(config, "sub_configs", None) or {}
    if not all(declared.get(key) is AutoConfig for key in ("encoder", "decoder")):
        return None
    types = {key: getattr(getattr(config, key, None), "model_type", "?") for key in ("encoder", "decoder")}
    return (
        f"composite wrapper: its encoder and decoder are whole models of other model types "
        f"(encoder `{types['encoder']}`, decoder `{types['decoder']}`); draft or specify those types"
    )


_BORROWED_KV = re.compile(r"(^|_)kv_states$")


def borrowed_kv_reason(cls: type[nn.Module]) -> str | None:
    """Why a model's forward needs keys and values computed by another model, or None (read from the class
    alone: such a config may not even build with its defaults)."""
    borrowed = [p for p in inspect.signature(cls.forward).parameters if _BORROWED_KV.search(p)]
    if not borrowed:
        return None
    return (
        f"speculative-decoding assistant: its forward reads keys and values its target model computed "
        f"(`{borrowed[0]}`); it does not run on token ids alone"
    )


def structure_gaps(config: Any) -> list[str]:
    """Structure a config states that the spec vocabulary cannot ("item: detail"): layers run more than once
    per forward (a loop count above 1: a recurrent-depth model), or stacks at several granularities (BLT)."""
    fields = plain_fields(config)
    gaps = []
    loops = {k: v for k, v in fields.items() if "loop" in k and isinstance(v, int) and not isinstance(v, bool)}
    loops = {k: v for k, v in loops.items() if v > 1}
    if loops:
        key, value = next(iter(sorted(loops.items())))
        gaps.append(f"looped layers: {key} {value} (layers run more than once per forward; spec blocks run once)")
    # stacks of one model at different granularities (BLT: a byte-level encoder and decoder around a global
    # transformer over patches): sub-configs of its own parts besides the encoder/decoder pair
    declared = getattr(type(config), "sub_configs", None) or {}
    parts = [k for k in declared if k.endswith("_config") and k != "text_config"]
    if len(parts) > 2 and "global_config" in parts:
        listed = ", ".join(parts)
        gaps.append(f"hierarchical stacks: {listed} (one model over bytes and patches; a spec has one stack per role)")
    return gaps
