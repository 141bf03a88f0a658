"""The normalized config (`bridge.cfg`): a spec's `config:` expressions evaluated on an HF config.

Called by the bridge at bind time. Field names follow HookedTransformer (`n_layers`, `d_model`, ...).
"""

from __future__ import annotations

import weakref
from dataclasses import field
from typing import TYPE_CHECKING, Any

from ..errors import SpecError
from ..records import record
from .expressions import ExpressionError, evaluate

if TYPE_CHECKING:
    from .schema import ConfigValue, Spec

_PLAIN_VALUES = (int, float, str, bool, type(None), list, tuple, dict)


@record(frozen=True)
class BridgeConfig:
    """Normalized, architecture-neutral config of a bridged model."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_kv_heads: int
    n_ctx: int | None = None
    eps: float | None = None
    act_fn: str | None = None
    embed_scale: float = 1.0
    attn_scale: float | None = None  # scores are q·k / attn_scale (HookedTransformer); default sqrt(d_head)
    # HF multiplies each sublayer's output by this before adding it to the residual (Granite); 1: plain add
    residual_multiplier: float = 1.0
    logit_scale: float = 1.0  # HF multiplies the unembedding's output by this (Cohere; Granite 1 / logits_scaling)
    architecture: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # Spec-specific fields (e.g. `rotary_dim`) are readable as attributes too.
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        prop = getattr(type(self), name, None)
        if isinstance(prop, property):  # a model-dependent field raised AttributeError: show its message
            prop.fget(self)
        raise AttributeError(f"'BridgeConfig' has no field '{name}'")

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra" and not k.startswith("_")}
        out.update(self.extra)
        return out

    # HookedTransformerConfig fields that depend on the model the config describes. The bridge attaches
    # itself (a weak reference: a config copied or outliving its bridge holds no model) and answers them.
    def attach_model(self, source: Any) -> None:
        """Let `source` (the bridge) answer the model-dependent fields below."""
        self.__dict__["_source"] = weakref.ref(source)

    def _from_model(self, name: str) -> Any:
        ref = self.__dict__.get("_source")
        source = ref() if ref is not None else None
        if source is None:
            raise AttributeError(f"'{name}' depends on the model; this config is not attached to a bridge")
        return source.config_field(name)

    @property
    def device(self) -> Any:
        """The device of the embedding (torch.device)."""
        return self._from_model("device")

    @property
    def dtype(self) -> Any:
        """The dtype of the embedding weight."""
        return self._from_model("dtype")

    @property
    def normalization_type(self) -> str | None:
        """'LN' / 'RMS' (or 'LNPre' / 'RMSPre' once folded), None without norms, as HookedTransformer."""
        return self._from_model("normalization_type")

    @property
    def positional_embedding_type(self) -> str | None:
        """'standard' for a learned table, else the position kind's name ('rotary', ...)."""
        return self._from_model("positional_embedding_type")

    @property
    def default_prepend_bos(self) -> bool:
        return self._from_model("default_prepend_bos")

    @property
    def n_key_value_heads(self) -> int | None:
        """HookedTransformer's name for n_kv_heads: None when every query head has its own key head."""
        return None if self.n_kv_heads == self.n_heads else self.n_kv_heads

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab


_INT_FIELDS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_kv_heads", "n_ctx")


def config_lookup(hf_config: Any):
    """A name resolver that reads only public, plain-data attributes of an HF config."""

    def lookup(name: str) -> Any:
        if name.startswith("_"):
            raise KeyError(name)
        try:
            value = getattr(hf_config, name)
        except AttributeError:
            raise KeyError(name) from None
        if not isinstance(value, _PLAIN_VALUES):
            raise KeyError(name)
        return value

    return lookup


def spec_error(message: str, spec: Spec | None, spec_file: str | None, field_name: str) -> SpecError:
    """A SpecError at the file and line that define `field_name`, where the spec knows them."""
    file, line = spec.where(field_name) if spec is not None else (None, None)
    return SpecError(message, file=file or spec_file, line=line, field=field_name)


def evaluate_field(
    spec_file: str | None, field_name: str, value: ConfigValue, hf_config: Any, spec: Spec | None = None
) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return evaluate(value, config_lookup(hf_config))
    except ExpressionError as exc:
        raise spec_error(exc.reason + f" (expression '{value}')", spec, spec_file, field_name) from None


def normalize_config(spec: Spec, hf_config: Any, spec_file: str | None = None) -> BridgeConfig:
    """Evaluate every `config:` field of `spec` against `hf_config`."""
    values: dict[str, Any] = {}
    for name, expression in spec.config.items():
        values[name] = evaluate_field(spec_file, f"config.{name}", expression, hf_config, spec)
    values.setdefault("n_kv_heads", values["n_heads"])
    for name in _INT_FIELDS:
        value = values.get(name)
        if value is None and name == "n_ctx":
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise spec_error(f"must evaluate to a positive integer, got {value!r}", spec, spec_file, f"config.{name}")
        values[name] = value
    if values["n_heads"] % values["n_kv_heads"]:
        raise spec_error(
            f"n_heads ({values['n_heads']}) is not a multiple of n_kv_heads ({values['n_kv_heads']})",
            spec,
            spec_file,
            "config.n_kv_heads",
        )
    # eps may be 0 (torch's and HF's norms accept it); a scale of 0 zeroes every score or embedding
    ranges = (
        ("attn_scale", "> 0 (scores are q.k / attn_scale)", lambda v: v > 0),
        ("eps", ">= 0 (a norm's epsilon)", lambda v: v >= 0),
        ("embed_scale", "non-zero (embeddings are multiplied by it)", lambda v: v != 0),
        ("residual_multiplier", "non-zero (sublayer outputs are multiplied by it)", lambda v: v != 0),
        ("logit_scale", "non-zero (logits are multiplied by it)", lambda v: v != 0),
    )
    for name, allowed, check in ranges:
        value = values.get(name)
        if value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and abs(value) < float("inf")):  # also refuses nan
            raise spec_error(f"must evaluate to a finite number, got {value!r}", spec, spec_file, f"config.{name}")
        if not check(value):
            raise spec_error(f"must be {allowed}, got {value!r}", spec, spec_file, f"config.{name}")
    known = {f for f in BridgeConfig.__dataclass_fields__ if f != "extra"}
    extra = {k: v for k, v in values.items() if k not in known}
    base = {k: v for k, v in values.items() if k in known}
    base.setdefault("architecture", spec.name)
    for name in ("embed_scale", "residual_multiplier", "logit_scale"):
        if base.get(name) is None:
            base[name] = 1.0
    if base.get("attn_scale") is None:
        base["attn_scale"] = base["d_head"] ** 0.5
    return BridgeConfig(**base, extra=extra)
