"""The contracts of the kinds plugins register, as `typing.Protocol`s, and the records they return.

A spec picks a kind by name (`kind: layernorm`). The plugin host checks every registered kind
against its contract once (`kind_checks.contract_problems`): a plugin's when kinds are collected, a
built-in one at its first lookup; the bridge, the reimplement path and conformance then call it
exactly as the Protocols below say. Built-in kinds live in `plugins/`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .records import record

if TYPE_CHECKING:  # annotations only: importing the contracts (a plugin does) must not load torch
    import torch
    from torch import nn

# --------------------------------------------------------------------------- callable contracts


class ActivationFunction(Protocol):
    """An MLP activation, registered by name through `bridge_core_activation_functions`."""

    def __call__(self, x: torch.Tensor, /) -> torch.Tensor:
        """The activation applied elementwise.

        :param x: The MLP's pre-activation (`hook_pre`), any shape.
        :returns: A tensor of the same shape and dtype.

        Called by the bridge as `bridge.act_fn(x)` and by conformance, which recomputes every MLP
        with it and compares with the model: the name must mean exactly what the model computes.
        """


class Rotate(Protocol):
    """`PositionKind.rotate`: rotary position embedding applied to queries and keys."""

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
        """`x` with positions rotated in.

        :param x: Queries or keys, `[b, h, s, d_head]`.
        :param cos: The cosine half of the rotary module's output (`position_embeddings`),
            `[b, s, >= rotary_dim]`.
        :param sin: The sine half, same shape as `cos`.
        :param rotary_dim: How many leading dims of each head are rotated (`cfg.rotary_dim`, else `d_head`).
        :returns: A tensor shaped like `x`.

        Called positionally by the reimplement attention path, once for queries and once for keys,
        before `hook_rot_q` / `hook_rot_k`.
        """


class MaskBuilder(Protocol):
    """`MaskFormat.build`: the attention mask a module takes when the core calls it on its own."""

    def __call__(
        self,
        padding_mask: torch.Tensor | None,
        batch: int,
        q_len: int,
        k_len: int,
        causal: bool,
        dtype: torch.dtype,
        device: torch.device,
        window: int | None,
    ) -> torch.Tensor | None:
        """The mask in the module's own format.

        :param padding_mask: `[batch, k_len]` bool, True at real tokens; None when nothing is padded.
        :param batch: Batch size.
        :param q_len: Number of queries (they are the last `q_len` of the `k_len` keys).
        :param k_len: Number of keys.
        :param causal: Whether a query may only attend to keys at or before its position (False
            for encoder stacks and cross attention).
        :param dtype: The hidden states' dtype (for additive masks).
        :param device: Where the mask must live.
        :param window: Sliding-window size of this layer (`call.window`), or None for full attention.
        :returns: What the module's mask keyword takes, or None to pass no mask.

        Called positionally, in this order, when the bridge calls a block or an attention module
        alone (`bridge.components`) and by cross-attention kinds for the encoder mask.
        `additive_mask` computes the `[b, 1, q, k]` float form most formats derive from.
        """


class MaskReader(Protocol):
    """`MaskFormat.to_additive`: a mask the model hands its attention, read as an additive mask."""

    def __call__(self, mask: torch.Tensor, dtype: torch.dtype, /) -> torch.Tensor:
        """`mask` as scores add it: 0 where attended, dtype-min (or a finite bias) elsewhere.

        :param mask: The mask the attention module received (`call.mask_kwarg`), in this format.
        :param dtype: The scores' dtype.
        :returns: A tensor broadcastable to `[b, h, q, k]`.

        Called positionally by the reimplement attention path on every recomputed forward, so that
        the recomputed pattern masks exactly what the module masks (a boolean mask may mean
        "attend" or "masked": the format says which).
        """


class ScoreBiasCompute(Protocol):
    """`ScoreBiasKind.compute`: an additive attention-score bias shared by the layers of one stack."""

    def __call__(
        self,
        *,
        table: nn.Module | None,
        q_len: int,
        k_len: int,
        offset: int,
        padding_mask: torch.Tensor | None,
        n_heads: int,
        dtype: torch.dtype,
        device: torch.device,
        params: Mapping[str, Any],
    ) -> torch.Tensor:
        """The bias added to every attention score of the stack.

        :param table: The module at the spec's `score_bias.path` (a learned table), or None.
        :param q_len: Number of queries.
        :param k_len: Number of keys.
        :param offset: Position of the first query (`k_len - q_len` with cached keys, else 0).
        :param padding_mask: `[b, k_len]` bool, True at real tokens; None when nothing is padded.
        :param n_heads: Number of attention heads.
        :param dtype: dtype of the result.
        :param device: Device of the result.
        :param params: The spec entry's `score_bias.params`, each value evaluated once at bind time
            against the HF config (empty when the spec gives none). A kind that misses a param it
            needs raises `SpecError(..., field="score_bias.params")`.
        :returns: `[1 or b, n_heads, q_len or 1, k_len]`, broadcast over what is 1.

        Called with keywords only (take what you need, `**_` for the rest) by the bridge's component
        calls, by the reimplement attention path on every forward, and by conformance's
        `rel_pos_bias` check, which compares it with the bias the HF model computes.
        """


class BiasView(Protocol):
    """`ScoreBiasKind.hook_view`: the bias table module's output shown as `hook_rel_pos_bias`."""

    def __call__(self, values: torch.Tensor, /) -> torch.Tensor:
        """A view of `values` as `[1, h, q, k]`.

        :param values: The output of the `score_bias.path` module on a forward (T5: `[q, k, h]`).
        :returns: A view, not a copy, so that an edit made at `{stack}.hook_rel_pos_bias` reaches
            every layer sharing the bias.

        Called by the hook layout on each forward that hooks `hook_rel_pos_bias`.
        """


class BiasFormat(Protocol):
    """`ScoreBiasKind.module_format`: the computed bias in the form the model's modules take."""

    def __call__(self, bias: torch.Tensor, /) -> torch.Tensor:
        """`bias` reshaped for the model (BLOOM: `[b*h, 1, k]`).

        :param bias: `ScoreBiasCompute`'s result expanded to the batch, `[b, h, q or 1, k]`.
        :returns: What the block's `call.position_bias_kwarg` takes.

        Called by the bridge when it calls a block or an attention module alone.
        """


class BiasLayoutFormat(Protocol):
    """`ScoreBiasKind.params_format`: like `BiasFormat`, for kinds whose layout is a spec param."""

    def __call__(self, bias: torch.Tensor, params: Mapping[str, Any], /) -> torch.Tensor:
        """`bias` in the layout `params` names (the general ALiBi kind: `params.layout`).

        :param bias: `ScoreBiasCompute`'s result expanded to the batch, `[b, h, q or 1, k]`.
        :param params: The spec's evaluated `score_bias.params`.
        :returns: What the block's `call.position_bias_kwarg` takes.

        Called positionally by the bridge when it calls a block or an attention module alone;
        used instead of `module_format` when both are given.
        """


class CrossAttentionKwargs(Protocol):
    """`CrossAttentionKind.block_kwargs`: how a decoder block with cross attention is called alone."""

    def __call__(
        self,
        encoder_states: torch.Tensor,
        encoder_mask: torch.Tensor | None,
        q_len: int,
        dtype: torch.dtype,
        mask_format: MaskFormat,
        states_kwarg: str,
        mask_kwarg: str,
    ) -> dict[str, Any]:
        """Keyword arguments the decoder block needs for cross attention.

        :param encoder_states: The encoder's final output, `[b, k, d_model]`.
        :param encoder_mask: The encoder's padding mask `[b, k]` (1 / True at real tokens), or None.
        :param q_len: Number of decoder positions.
        :param dtype: The decoder hidden states' dtype.
        :param mask_format: The spec's `call.mask_format` kind; build the cross mask with its
            `build` (non-causal, no window).
        :param states_kwarg: The block's keyword for the encoder states (`cross_attn.encoder_states_kwarg`).
        :param mask_kwarg: The block's keyword for the cross mask (`cross_attn.encoder_mask_kwarg`).
        :returns: A mapping merged into the block's call keywords.

        Called positionally, in this order, by `bridge.components.block` for decoder blocks whose
        spec has `cross_attn`.
        """


# --------------------------------------------------------------------------- object contracts


class Norm(Protocol):
    """A norm kind: `output = normalized * (w + weight_offset) + b` with `normalized = prepared / scale`.

    These are HookedTransformer's `hook_scale` / `hook_normalized`. `NormKind` implements it for the
    built-ins (LayerNorm, RMSNorm, Gemma's `(1 + w)` RMSNorm); a plugin may return any object that does.
    """

    @property
    def name(self) -> str:
        """The name a spec selects with `kind:` on a norm."""

    @property
    def centered(self) -> bool:
        """Whether `prepare` subtracts the mean (LayerNorm); `fold_ln`, `center_writing_weights` and
        the residual-stack analysis rely on it."""

    @property
    def weight_offset(self) -> float:
        """Added to the weight before it scales (Gemma: 1.0); weight folding uses it."""

    def eps(self, module: nn.Module) -> float:
        """The norm's epsilon.

        :param module: The HF norm module.
        :returns: Its epsilon (the spec's `config.eps` overrides it in conformance).

        Called on every forward that hooks the norm, and by conformance.
        """

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """What is normalized.

        :param x: The norm module's input, `[..., d]`.
        :returns: `x` centered and upcast as the norm does it (float32 for RMSNorm families).

        Called on every forward that hooks the norm, then `scale`, then (after an edit) `output`.
        """

    def scale(self, prepared: torch.Tensor, eps: float) -> torch.Tensor:
        """`hook_scale`.

        :param prepared: `prepare`'s result.
        :param eps: `eps(module)`, or the spec's `config.eps` in conformance.
        :returns: `[..., 1]`; `hook_normalized` is `prepared / scale`.
        """

    def output(
        self, normalized: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """The norm's output, rebuilt when a hook edited `hook_scale` or `hook_normalized`.

        :param normalized: (Possibly edited) normalized values.
        :param weight: The module's raw weight (without `weight_offset`), or None.
        :param bias: The module's bias, or None.
        :param dtype: dtype of the module's own output.
        :returns: What the module would have returned.

        The bridge returns the module's own output plus `output(edited) - output(unedited)`, so an
        edit that changes no value is exact whatever this computes; follow the module's order of
        casts (see `NormKind`) so that real edits, such as ablations, round as the module does.
        """

    def weight(self, module: nn.Module) -> torch.Tensor | None:
        """The weight the norm scales by.

        :param module: The HF norm module.
        :returns: Its raw weight parameter (a view, `weight_offset` not folded in), or None.

        Called by weight views (`bridge.blocks[i].ln1.w`) and `fold_ln`, which writes through it.
        """

    def bias(self, module: nn.Module) -> torch.Tensor | None:
        """The bias the norm adds.

        :param module: The HF norm module.
        :returns: Its bias parameter (a view), or None.
        """


class Position(Protocol):
    """A position kind: how positions enter the model. `PositionKind` implements it for the built-ins."""

    @property
    def name(self) -> str:
        """The name a spec selects with `pos_embed.kind`."""

    @property
    def limits_length(self) -> bool:
        """Whether inputs longer than `cfg.n_ctx` are refused (a learned table has `n_ctx` rows)."""

    @property
    def has_table(self) -> bool:
        """Whether `pos_embed.path` is a learned table (`W_pos`, `hook_pos_embed`)."""

    @property
    def table_attr(self) -> str:
        """The attribute of the `pos_embed.path` module that holds the table when `has_table` (`weight`)."""

    @property
    def from_ids(self) -> bool:
        """Whether the module numbers positions from the token ids (M2M100): tokens equal to `pos_embed.offset`
        - 1 (the padding index) read that row, the others count from the offset over non-pad tokens only."""

    @property
    def rotates_qk(self) -> bool:
        """Whether queries and keys are rotated inside attention (`hook_rot_q` / `hook_rot_k` exist)."""

    @property
    def rotate(self) -> Rotate | None:
        """The rotation the reimplement path applies when `rotates_qk`; None otherwise."""

    def table_rows(self, weight: torch.Tensor, offset: int, n_ctx: int | None) -> torch.Tensor:
        """The usable rows of a learned table, as `W_pos`.

        :param weight: The table's weight `[rows, d_model]`.
        :param offset: The spec's `pos_embed.offset` (OPT keeps 2 unused rows first).
        :param n_ctx: `cfg.n_ctx`, or None for all remaining rows.
        :returns: `[n_ctx, d_model]`, a view.

        Called positionally by `bridge.W_pos` when `has_table`.
        """


# --------------------------------------------------------------------------- records plugins return


@record(frozen=True)
class NormKind:
    """The built-in `Norm`: `prepared` is `x` minus its mean when `centered` (LayerNorm), `x` itself
    otherwise (RMSNorm); `scale = sqrt(mean(prepared^2) + eps)`. `output` follows the HF module's
    order of operations, so a rebuilt output rounds where the module's does."""

    name: str
    centered: bool
    weight_offset: float = 0.0
    upcast: bool = False  # compute in float32 and cast back (F.layer_norm in half precision, RMSNorm families)
    cast_first: bool = False  # cast to the output dtype before the weight multiplies (Llama, T5), not after (Gemma)
    eps_attributes: tuple[str, ...] = ("eps", "variance_epsilon", "epsilon")
    # an epsilon the module's forward passes as a literal, keeping no attribute (OLMo's OlmoLayerNorm: 1e-5)
    fixed_eps: float | None = None

    def eps(self, module: nn.Module) -> float:
        if self.fixed_eps is not None:
            return self.fixed_eps
        for name in self.eps_attributes:
            value = getattr(module, name, None)
            if isinstance(value, (int, float)):
                return float(value)
        raise AttributeError(
            f"norm kind '{self.name}' found no epsilon on {type(module).__name__} "
            f"(looked for {', '.join(self.eps_attributes)})"
        )

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.upcast:
            x = x.float()
        return x - x.mean(-1, keepdim=True) if self.centered else x

    def scale(self, prepared: torch.Tensor, eps: float) -> torch.Tensor:
        return (prepared.pow(2).mean(-1, keepdim=True) + eps).sqrt()

    def output(
        self, normalized: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor:
        out = normalized.to(dtype) if self.cast_first else normalized
        if weight is not None:
            w = weight.float() if self.upcast and not self.cast_first else weight
            out = out * (w + self.weight_offset) if self.weight_offset else out * w
        if bias is not None:
            out = out + (bias.float() if self.upcast and not self.cast_first else bias)
        return out.to(dtype)

    def weight(self, module: nn.Module) -> torch.Tensor | None:
        return getattr(module, "weight", None)

    def bias(self, module: nn.Module) -> torch.Tensor | None:
        return getattr(module, "bias", None)


@record(frozen=True)
class PositionKind:
    """The built-in `Position`: a learned table (`learned`), rotary (`rotary`) or nothing (`none`)."""

    name: str
    limits_length: bool
    has_table: bool
    rotates_qk: bool = False
    rotate: Rotate | None = None
    table_attr: str = "weight"  # the module attribute holding the table (M2M100 keeps a `weights` buffer)
    from_ids: bool = False  # positions counted from the token ids: pad tokens (id offset - 1) read row offset - 1

    def table_rows(self, weight: torch.Tensor, offset: int, n_ctx: int | None) -> torch.Tensor:
        end = None if n_ctx is None else offset + n_ctx
        return weight[offset:end]


@record(frozen=True)
class ScoreBiasKind:
    """A score-bias kind: `compute` builds the bias; `hook_view` (None when the bias has no table
    module) shows the table's output as `hook_rel_pos_bias`; `module_format` (None: `[b, h, q, k]`
    as is) converts it for the model's modules."""

    name: str
    compute: ScoreBiasCompute
    hook_view: BiasView | None = None
    module_format: BiasFormat | None = None
    params_format: BiasLayoutFormat | None = None


@record(frozen=True)
class CrossAttentionKind:
    """A cross-attention kind: where a decoder block's cross keys and values come from (`block_kwargs`)."""

    name: str
    block_kwargs: CrossAttentionKwargs


@record(frozen=True)
class MaskFormat:
    """A mask format (`call.mask_format`): what `build` returns is passed as the module's mask;
    `to_additive` (None: guess from the dtype, bool meaning True = attend) reads the mask the model
    passes its attention, for the reimplement path."""

    name: str
    build: MaskBuilder
    to_additive: MaskReader | None = None


def additive_mask(
    padding_mask: torch.Tensor | None,
    batch: int,
    q_len: int,
    k_len: int,
    causal: bool,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    window: int | None = None,
) -> torch.Tensor:
    """`[b, 1, q, k]` additive mask: 0 where attended, dtype-min elsewhere (queries are the last q keys)."""
    import torch

    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        allowed &= k_pos <= q_pos
    if window is not None:
        allowed &= q_pos - k_pos < window
    allowed = allowed[None, None].expand(batch, 1, q_len, k_len)
    if padding_mask is not None:
        allowed = allowed & padding_mask.to(torch.bool)[:, None, None, :]
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
