"""The typed schema of an architecture spec (docs/architecture.md#specs), as pydantic v2 models.

`Spec` is what a YAML file validates into. Field docstrings (`description=`) are the source of the
generated spec reference and of the JSON Schema that editors use (`bridge-core schema`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .choices import BLOCK_KINDS, GROUPED_QKV_ORDERS, QKV_ORDERS  # noqa: F401  (their home before choices.py)

ModulePath = str | list[str]
"""A dotted module path, or a list of alternatives (first that exists wins: `[lm_head, embed_out]`)."""

ConfigValue = str | int | float | bool | None
"""A config field: a literal, or an expression over HF config attribute names (`n_embd // n_head`)."""

REQUIRED_CONFIG_FIELDS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab")
_VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")


class StrictModel(BaseModel):
    # defer_build: the validators are built on the first validation, not at import; a built-in spec
    # read from spec/validated_cache.py never needs them (a first bridge pays only for what it uses)
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, defer_build=True)


class Match(StrictModel):
    """Which Hugging Face models this spec claims."""

    architectures: list[str] = Field(default_factory=list, description="HF `config.architectures` class names.")
    model_type: list[str] = Field(default_factory=list, description="HF `config.model_type` values.")


class NormSpec(StrictModel):
    """A normalization module and its kind (a registered norm kind: layernorm, rmsnorm, ...)."""

    path: ModulePath = Field(description="Module path, relative to the enclosing block (or the model).")
    kind: str = Field(description="Norm kind name, registered by a plugin (`layernorm`, `rmsnorm`, ...).")
    optional: bool = Field(default=False, description="The module may be absent in some configs (OPT post-norm).")


class QKVSpec(StrictModel):
    """How queries, keys and values are projected."""

    kind: Literal["fused", "separate", "latent"] = Field(
        description="One fused projection, q/k/v modules, or multi-head latent attention (`latent`, DeepSeek V2/V3, "
        "MiniCPM3: queries through a low-rank latent, keys and values expanded from one compressed latent)."
    )
    path: ModulePath | None = Field(default=None, description="The fused projection (kind: fused).")
    order: str = Field(
        default="qkv",
        description="Fused layout: `qkv` = [q | k | v] along the output; `per_head_interleaved` = "
        "[h0: q k v | h1: q k v | ...] (GPT-NeoX); or an expression over the HF config giving one "
        "(GPTBigCode: `\"'qkv' if multi_query else 'per_head_interleaved'\"`). `grouped_<parts>` (`grouped_qvk`): "
        "the output holds `groups` equal groups, each three slices in that order, q heads in group order (CodeGen: "
        "4 groups of [q | v | k]; its q/k/v hooks and W_Q/W_K/W_V are then copies, not views).",
    )
    groups: ConfigValue = Field(
        default=None,
        description="order `grouped_*`: how many groups the fused output holds (an int or an expression over the HF "
        "config; CodeGen: 4, its `mp_num`).",
    )
    q: ModulePath | None = Field(
        default=None,
        description="Query projection (kind: separate; kind: latent: the plain q_proj of configs without a query "
        "latent, used when q_a is absent from the model).",
    )
    k: ModulePath | None = Field(default=None, description="Key projection (kind: separate).")
    v: ModulePath | None = Field(default=None, description="Value projection (kind: separate).")
    q_a: ModulePath | None = Field(
        default=None, description="Query down-projection to the query latent (kind: latent; DeepSeek q_a_proj)."
    )
    q_a_norm: NormSpec | None = Field(
        default=None, description="Norm of the query latent (kind: latent; DeepSeek q_a_layernorm)."
    )
    q_b: ModulePath | None = Field(
        default=None, description="Query up-projection from the latent to the heads (kind: latent; q_b_proj)."
    )
    kv_a: ModulePath | None = Field(
        default=None,
        description="Down-projection to [kv latent | shared rotary key] (kind: latent; kv_a_proj_with_mqa).",
    )
    kv_a_norm: NormSpec | None = Field(
        default=None, description="Norm of the kv latent (kind: latent; kv_a_layernorm)."
    )
    kv_b: ModulePath | None = Field(
        default=None,
        description="Up-projection of the kv latent to [k_nope | v] per head (kind: latent; kv_b_proj).",
    )
    rope_deinterleave: ConfigValue = Field(
        default=False,
        description="kind: latent: HF reorders each rope part to [even dims | odd dims] as it rotates (DeepSeek-V3's "
        "`rope_interleave`), so the rope part HF hands attention is that permutation of the projection's "
        "(an expression over the HF config: `rope_interleave`).",
    )

    @model_validator(mode="after")
    def _paths_match_kind(self) -> QKVSpec:
        latent_parts = ("q_a", "q_a_norm", "q_b", "kv_a", "kv_a_norm", "kv_b")
        if self.kind == "latent":
            missing = [n for n in ("kv_a", "kv_a_norm", "kv_b") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"qkv kind 'latent' needs {', '.join(missing)}")
            lora = [getattr(self, n) is not None for n in ("q_a", "q_a_norm", "q_b")]
            if any(lora) and not all(lora):
                raise ValueError("qkv kind 'latent' takes all of q_a, q_a_norm, q_b or none of them")
            if self.q is None and not all(lora):
                raise ValueError(
                    "qkv kind 'latent' needs q_a, q_a_norm and q_b, or q (or both, for configs without a query latent)"
                )
            if self.path is not None or self.k is not None or self.v is not None:
                raise ValueError("qkv kind 'latent' takes no 'path', 'k' or 'v'")
            return self
        if self.groups is not None and self.kind != "fused":
            raise ValueError(f"qkv kind '{self.kind}' takes no 'groups' (a fused projection of order grouped_* does)")
        if any(getattr(self, n) is not None for n in latent_parts):
            raise ValueError(f"qkv kind '{self.kind}' takes none of {', '.join(latent_parts)} (kind: latent does)")
        if self.kind == "fused":
            if self.path is None:
                raise ValueError("qkv kind 'fused' needs 'path' (the fused projection module)")
            if any(p is not None for p in (self.q, self.k, self.v)):
                raise ValueError("qkv kind 'fused' takes 'path', not 'q'/'k'/'v'")
        else:
            missing = [n for n in ("q", "k", "v") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"qkv kind 'separate' needs {', '.join(missing)}")
            if self.path is not None:
                raise ValueError("qkv kind 'separate' takes 'q', 'k', 'v', not 'path'")
        return self


class OutGateSpec(StrictModel):
    """A gate on the attention output before the output projection: `z * act(gate(x))`, `x` the attention
    module's hidden input (AFMoE's `gate_proj`, sigmoid)."""

    path: ModulePath = Field(description="The gate projection, relative to the attention module.")
    act: str = Field(
        default="sigmoid",
        description="Activation kind applied to the gate projection's output. A gate as wide as the attention "
        "output scales each element; one value per head (`n_heads` wide) scales each head.",
    )


class AttentionSpec(StrictModel):
    """The attention module of a block."""

    path: ModulePath = Field(description="The attention module, relative to the block.")
    layout: Literal["conv1d", "linear"] = Field(
        description="Weight storage: `conv1d` = [in, out] (GPT-2's Conv1D), `linear` = [out, in]."
    )
    qkv: QKVSpec = Field(description="How queries, keys and values are projected (fused or separate).")
    o: ModulePath = Field(description="Output projection, relative to the attention module.")
    out_gate: OutGateSpec | None = Field(
        default=None,
        description="A gate on the attention output before the output projection (AFMoE): `hook_z` is the gated "
        "output, what the output projection reads.",
    )
    o_norm: NormSpec | None = Field(
        default=None,
        description="A norm over the whole attention output (all heads together) before the output projection "
        "(BitNet's `attn_sub_norm`), relative to the attention module: `hook_z` is its input, `hook_result` the "
        "output projection of its output per head.",
    )
    implementation: Literal["interface", "reimplement"] = Field(
        default="interface",
        description="`interface`: the module dispatches through transformers' AttentionInterface; "
        "`reimplement`: attention is recomputed from captured inputs when an internal hook is attached.",
    )
    softmax_dtype: Literal["input", "float32"] = Field(
        default="input", description="dtype the family's eager attention takes softmax in."
    )
    output_index: int | None = Field(
        default=0, description="Which element of the module's output tuple is the attention output."
    )
    residual_kwarg: str | None = Field(
        default=None,
        description="Keyword of a residual the module adds to its own output (BLOOM's attention adds `residual`); "
        "hook_attn_out then sits on the output projection (block.attn_out_at).",
    )
    own_causal_mask: bool = Field(
        default=False,
        description="The module masks future keys itself, on top of any mask it is handed (OpenAI GPT's `bias` "
        "buffer: the model hands no causal mask); the reimplement path adds a causal mask. Only with "
        "`implementation: reimplement` (on the interface path HF builds the mask).",
    )
    q_prescaled: bool = Field(
        default=False,
        description="HF multiplies the queries by the score scale before the attention function and passes "
        "scaling=1 (OPT); hook_q is the unscaled projection, as in HookedTransformer.",
    )
    softcap: ConfigValue = Field(
        default=None, description="Attention logit softcap for the reimplement path (Gemma 2: attn_logit_softcapping)."
    )
    sinks: str | None = Field(
        default=None,
        description="Name of the attention module's per-head attention-sink parameter `[n_heads]` (GPT-OSS, Granite "
        "SWA, Flint `sinks`, passed to the attention function as `s_aux`): one extra logit per head in every "
        "softmax row, attending to nothing. hook_attn_scores leaves it out; hook_pattern is the probabilities of the "
        "real keys (what multiplies the values), so its rows sum to less than 1.",
    )
    q_norm: NormSpec | None = Field(default=None, description="Norm applied to queries per head (Gemma 3).")
    k_norm: NormSpec | None = Field(default=None, description="Norm applied to keys per head (Gemma 3).")
    qk_norm_layout: Literal["bhsd", "bshd", "flat"] = Field(
        default="bhsd",
        description="Layout of the tensor the q/k norms receive: `bhsd` = [batch, heads, pos, d_head] "
        "(Gemma 3 normalizes after the transpose), `bshd` = [batch, pos, heads, d_head] (Cohere), `flat` = "
        "[batch, pos, heads * d_head]: one norm over the whole projection before the head split (OLMo 2; "
        "its hooks show that shape, as HookedTransformer's OLMo 2 q_norm / k_norm do).",
    )
    qk_norm_at: Literal["before_rotary", "after_rotary"] = Field(
        default="before_rotary",
        description="Where the q/k norms sit relative to rotary: `before_rotary` (Gemma 3, OLMo 2, Qwen 3: "
        "rotary turns the normed q/k) or `after_rotary` (HunYuan: the norms take the rotated q/k, and their output "
        "is what attention sees). hook_rot_q / hook_rot_k are the q/k the scores are made of either way.",
    )
    rotary: ConfigValue = Field(
        default=True,
        description="Whether this layer's attention rotates q and k by the rotary position kind: true, or an "
        "expression over the HF config and `layer` (SmolLM3: `no_rope_layers[layer] == 1`; Cohere 2: "
        "`layer_types[layer] == 'sliding_attention'`). A layer where it is false attends with unrotated q/k "
        "(NoPE); its hook_rot_q / hook_rot_k equal the q/k the scores are made of, unrotated.",
    )

    @model_validator(mode="after")
    def _own_mask_on_reimplement(self) -> AttentionSpec:
        if self.own_causal_mask and self.implementation != "reimplement":
            raise ValueError("'own_causal_mask' is for 'implementation: reimplement' (HF builds the mask otherwise)")
        return self


class MoESpec(StrictModel):
    """A sparse mixture-of-experts MLP (Mixtral, Qwen2-MoE, OLMoE): a router, experts, and an optional shared
    expert; paths relative to the MLP module. Used in layers whose MLP kind evaluates to `moe`."""

    router: ModulePath = Field(
        default="gate", description="The router module; element `router_logits_index` of its output is the logits."
    )
    router_weight: ModulePath | None = Field(
        default=None,
        description="The router's linear layer `[n_experts, d]` where the router module holds none itself "
        "(HunYuan-MoE: `gate.wg`); null: the router's own `weight`.",
    )
    router_output: list[Literal["logits", "weights", "indices"]] = Field(
        default_factory=lambda: ["logits", "weights", "indices"],
        description="What each element of the router's output tuple is (Mixtral: logits, top-k weights, indices).",
    )
    experts: ModulePath = Field(
        default="experts",
        description="The experts module, called as `experts(hidden [tokens, d], top_k_index, top_k_weights)`.",
    )
    storage: Literal["fused", "modules"] = Field(
        default="fused",
        description="`fused`: 3-D parameters `[n_experts, 2*d_mlp, d]` (gate|up) and `[n_experts, d, d_mlp]` "
        "(transformers 5); `modules`: a ModuleList of expert MLPs named by `expert_in/gate/out`.",
    )
    gate_up: str = Field(default="gate_up_proj", description="Fused storage: the gate|up parameter of the experts.")
    down: str = Field(default="down_proj", description="Fused storage: the down parameter of the experts.")
    gate_first: bool = Field(
        default=True, description="Fused storage: the gate half comes first along dim 1 of `gate_up` (else up)."
    )
    fused_layout: Literal["linear", "conv1d"] = Field(
        default="linear",
        description="Fused storage: `linear` = `[n_experts, out, in]` (Mixtral: gate_up `[E, 2*d_mlp, d]`, down "
        "`[E, d, d_mlp]`); `conv1d` = `[n_experts, in, out]` (GPT-OSS: gate_up `[E, d, 2*d_mlp]`, down "
        "`[E, d_mlp, d]`).",
    )
    gate_up_split: Literal["halves", "interleaved"] = Field(
        default="halves",
        description="Fused storage: how gate and up share the gate_up outputs: `halves` (one half each, see "
        "`gate_first`) or `interleaved` (alternating outputs, GPT-OSS: gate `[..., ::2]`, up `[..., 1::2]` when "
        "`gate_first`).",
    )
    gate_up_bias: str | None = Field(
        default=None,
        description="Fused storage: the experts' gate_up bias parameter `[n_experts, 2*d_mlp]`, split as gate_up "
        "(GPT-OSS `gate_up_proj_bias`); null: none.",
    )
    down_bias: str | None = Field(
        default=None,
        description="Fused storage: the experts' down bias parameter `[n_experts, d]` (GPT-OSS `down_proj_bias`).",
    )
    clamp_limit: ConfigValue = Field(
        default=None,
        description="A clamped GLU (GPT-OSS `swiglu_limit`): the gate is clamped to at most the limit and the up "
        "projection to [-limit, limit] before `act(gate) * (up + up_offset)`; null: no clamp.",
    )
    up_offset: ConfigValue = Field(
        default=0,
        description="Added to the up projection before the product with the activated gate (GPT-OSS: 1, "
        "`(up + 1) * act(gate)`); hook_pre shows the up projection without it.",
    )
    expert_in: ModulePath = Field(default="up_proj", description="Modules storage: each expert's up projection.")
    expert_gate: ModulePath = Field(default="gate_proj", description="Modules storage: each expert's gate projection.")
    expert_out: ModulePath = Field(default="down_proj", description="Modules storage: each expert's down projection.")
    n_experts: ConfigValue = Field(description="Number of routed experts (`num_local_experts`).")
    top_k: ConfigValue = Field(description="Experts per token (`num_experts_per_tok`).")
    scoring: Literal["softmax_then_topk", "topk_then_softmax", "sigmoid", "sparsemixer"] = Field(
        default="softmax_then_topk",
        description="How the router turns logits into the top-k weights: softmax over all experts then top-k "
        "(Mixtral, Qwen2-MoE, OLMoE), top-k logits then softmax over those (GraniteMoE), or `sigmoid`: each "
        "expert's score is the sigmoid of its logit, the top-k scores are the weights (renormalized by "
        "`norm_topk_prob`; DeepSeek-V3, GLM-4-MoE, MiniMax-M2), or `sparsemixer` (PhiMoE, eval mode; top_k 2): the "
        "best logit, weighted by its softmax over the experts within `jitter_eps` of it, then the best other logit, "
        "weighted likewise among the rest.",
    )
    jitter_eps: ConfigValue = Field(
        default=None,
        description="scoring `sparsemixer`: the ε of its masks, which keep expert j beside the best logit m while "
        "(m - logit_j) / max(|logit_j|, m) <= 2ε (PhiMoE: `router_jitter_noise`).",
    )
    correction_bias: str | None = Field(
        default=None,
        description="A buffer `[n_experts]` added to the scores only to *select* the experts; the weights stay the "
        "uncorrected scores (DeepSeek-V3's `e_score_correction_bias`). A dotted path relative to the MLP module, "
        "its last part the buffer's name: `gate.e_score_correction_bias` (on the router) or "
        "`e_score_correction_bias` (on the MoE module, MiniMax-M2).",
    )
    correction_bias_on: Literal["scores", "logits"] = Field(
        default="scores",
        description="What the correction bias is added to for selection: the scores (DeepSeek-V3) or the raw "
        "router logits (Kolibri).",
    )
    norm_topk_prob: ConfigValue = Field(
        default=True, description="The top-k weights are renormalized to sum to 1 (expression over the HF config)."
    )
    selection: str = Field(
        default="greedy",
        description="How the top-k experts are picked from the softmax over all experts: `greedy` (plain top-k) or "
        "`group_limited_greedy` (DeepSeek-V2: the experts split into `n_group` groups, the `topk_group` groups with "
        "the highest best score kept, top-k among their experts), or an expression over the HF config giving one "
        "(DeepSeek: `topk_method`); group-limited selection needs scoring `softmax_then_topk`. `noaux_tc` "
        "(DeepSeek-V3): the groups ranked by the sum of their two best (bias-corrected) scores, any scoring.",
    )
    n_group: ConfigValue = Field(default=1, description="Group-limited selection: number of expert groups (`n_group`).")
    topk_group: ConfigValue = Field(
        default=1, description="Group-limited selection: groups kept per token (`topk_group`)."
    )
    d_mlp: ConfigValue = Field(
        default=None,
        description="Each routed expert's width where it differs from `config.d_mlp`, the dense layers' "
        "(DeepSeek: `moe_intermediate_size`); null: `config.d_mlp`.",
    )
    routed_scaling: ConfigValue = Field(
        default=1,
        description="Factor multiplying the routed top-k weights after selection and any renormalization "
        "(DeepSeek `routed_scaling_factor`).",
    )
    shared_expert: ModulePath | None = Field(
        default=None,
        description="A shared expert run on every token (Qwen2-MoE `shared_expert`, DeepSeek `shared_experts`), "
        "an MLP whose projections are the MLP spec's `in`/`gate`/`out`.",
    )
    shared_expert_gate: ModulePath | None = Field(
        default=None, description="Linear d->1 whose sigmoid scales the shared expert's output (Qwen2-MoE)."
    )


class GateUpSpec(StrictModel):
    """A gated MLP's gate and up projections fused in one module (Phi-3, GLM's `gate_up_proj`)."""

    path: ModulePath = Field(description="The fused projection, relative to the MLP module.")
    order: Literal["gate_up", "up_gate"] = Field(
        default="gate_up",
        description="Which half of the fused output (chunked in two along the last dim) is the gate: `gate_up` = "
        "[gate | up] (Phi-3, GLM, GLM-4), `up_gate` = [up | gate].",
    )


class MLPSpec(StrictModel):
    """The MLP of a block."""

    path: ModulePath = Field(description="The MLP module, relative to the block (`.`: the block itself, OPT).")
    kind: str = Field(
        default="plain",
        description="`plain` or `gated` (act(gate(x)) * in(x)) or `moe` (see `moe`), or an expression over the HF "
        "config and `layer` giving one (`\"'gated' if is_gated_act else 'plain'\"`, "
        "`\"'moe' if layer >= first_k_dense_replace else 'gated'\"`).",
    )
    layout: Literal["conv1d", "linear"] = Field(
        description="Weight storage of the projections: `conv1d` = [in, out], `linear` = [out, in]."
    )
    in_: ModulePath | None = Field(
        alias="in",
        description="Input projection (the `up` projection when gated); optional for kind `moe`; absent with "
        "`gate_up`.",
    )
    gate: ModulePath | None = Field(default=None, description="Gate projection (used when the kind is gated).")
    gate_up: GateUpSpec | None = Field(
        default=None,
        description="Gate and up projections fused in one module (kind gated, instead of `in` and `gate`): "
        "hook_pre / hook_pre_linear are its two halves, W_gate / W_in views of its weight.",
    )
    out: ModulePath | None = Field(description="Output projection; optional for kind `moe`.")
    out_norm: NormSpec | None = Field(
        default=None,
        description="A norm over the activations before the output projection (BitNet's `ffn_sub_norm`), relative "
        "to the MLP: `hook_post` is its input.",
    )
    act_fn: str | None = Field(
        default=None, description="Activation kind name; defaults to the normalized `act_fn` config field."
    )
    act_module: ModulePath | None = Field(
        default=None,
        description="The MLP's own activation module (relative to the MLP), called as HF calls it, instead of an "
        "activation kind: for activations with learned parameters per MLP (Apertus's xIELU, `act_fn`).",
    )
    flat_tokens: bool = Field(
        default=False,
        description="The MLP runs on [batch*pos, d] (OPT flattens before fc1); hooks still show [batch, pos, ...].",
    )
    moe: MoESpec | None = Field(default=None, description="The mixture of experts, in layers of kind `moe`.")

    @model_validator(mode="before")
    @classmethod
    def _moe_needs_no_projections(cls, data: Any) -> Any:
        # a mixture of experts has no dense projections (they name a shared expert's, when given)
        if isinstance(data, dict) and data.get("kind") == "moe":
            return {"in": None, "out": None, **data}
        if isinstance(data, dict) and data.get("gate_up") is not None:  # the fused module replaces `in`
            return {"in": None, **data}
        return data

    @model_validator(mode="after")
    def _gate_matches_kind(self) -> MLPSpec:
        if self.act_fn is not None and self.act_module is not None:
            raise ValueError("'act_fn' (an activation kind) and 'act_module' (the MLP's own module) exclude each other")
        if self.gate_up is not None:
            if self.in_ is not None or self.gate is not None:
                raise ValueError("'gate_up' (the fused gate and up projection) takes the place of 'in' and 'gate'")
            if self.kind in ("plain", "moe"):
                raise ValueError(f"'gate_up' is for a gated MLP, not kind '{self.kind}'")
            if self.out is None:
                raise ValueError("'gate_up' needs 'out'")
            if self.flat_tokens:
                raise ValueError("'gate_up' with 'flat_tokens' is not supported (no known model has both)")
            return self
        if self.kind == "gated" and self.gate is None:
            raise ValueError("'gate' is required for kind 'gated'")
        if self.kind == "plain" and self.gate is not None:
            raise ValueError("'gate' is not allowed for kind 'plain'")
        if self.kind in ("plain", "gated") and (self.in_ is None or self.out is None):
            raise ValueError(f"kind '{self.kind}' needs 'in' and 'out'")
        if self.kind == "moe" and self.moe is None:
            raise ValueError("kind 'moe' needs 'moe' (the router and experts)")
        return self


class CrossAttentionSpec(StrictModel):
    """A decoder block's attention over the encoder output (a registered cross-attention kind)."""

    kind: str = Field(default="encoder_output", description="Cross-attention kind: where keys and values come from.")
    attn: AttentionSpec = Field(description="The cross-attention module and its projections.")
    ln: NormSpec | None = Field(default=None, description="Norm before cross attention (named ln2 in hooks).")
    residual_at: ModulePath | None = Field(
        default=None,
        description="Module whose output (element 0) is the residual after cross attention (hook_resid_mid_cross).",
    )
    encoder_states_kwarg: str = Field(
        default="encoder_hidden_states", description="Keyword of the encoder output when a decoder block is called."
    )
    encoder_mask_kwarg: str = Field(
        default="encoder_attention_mask", description="Keyword of the encoder padding mask for cross attention."
    )


class BlockSpec(StrictModel):
    """One transformer block; paths are relative to the block module."""

    kind: str = Field(
        default="sequential",
        description="`sequential` (pre-norm), `parallel` (attention and MLP read the same residual, GPT-NeoX, "
        "GPT-J; a parallel block with `ln1` and no `ln2` has one norm whose output feeds both, GPT-J and Phi) "
        "or `post_norm` (norm after each residual add, OPT-350m; BART, beside cross attention too); or an "
        "expression over the HF config "
        "giving one of them (`\"'parallel' if use_parallel_residual else 'sequential'\"`).",
    )
    ln1: NormSpec | None = Field(
        default=None,
        description="Norm before attention (after it, in post-norm blocks); in a parallel block without `ln2`, "
        "the one norm feeding both attention and MLP.",
    )
    attn: AttentionSpec = Field(description="The block's self-attention.")
    ln2: NormSpec | None = Field(
        default=None,
        description="Norm before the MLP (after it, in post-norm blocks; named ln3 beside cross attention).",
    )
    mlp: MLPSpec = Field(description="The block's MLP.")
    cross_attn: CrossAttentionSpec | None = Field(default=None, description="Cross attention (decoders of T5).")
    attn_out_at: ModulePath | None = Field(
        default=None,
        description="Module whose output is the attention's contribution to the residual, when the attention module "
        "returns more than that (BLOOM: self_attention.dense).",
    )
    mlp_out_at: ModulePath | None = Field(
        default=None,
        description="Module whose output is the MLP's contribution to the residual (BLOOM: mlp.dense_4h_to_h).",
    )
    resid_mid_at: ModulePath | None = Field(
        default=None,
        description="Module whose output (element 0) is the mid residual (T5: layer.0); default: ln2's input.",
    )
    ln1_post: NormSpec | None = Field(
        default=None,
        description="Norm on the attention output, before the residual add (Gemma 2/3). With no `ln1` (OLMo 2 "
        "normalizes only after the sublayers) its hooks are `ln1.*`, as HookedTransformer names OLMo 2's.",
    )
    ln2_post: NormSpec | None = Field(
        default=None,
        description="Norm on the MLP output, before the residual add (Gemma 2/3). With no `ln2` its hooks are "
        "`ln2.*` (OLMo 2, as in HookedTransformer).",
    )
    output_index: int | None = Field(
        default=None,
        description="Element of the block's output tuple that is the hidden state; null: a tensor.",
    )
    hidden_states_kwarg: str = Field(
        default="hidden_states", description="Keyword name of the hidden states in the block's forward."
    )


class EmbedSpec(StrictModel):
    path: ModulePath = Field(description="The token embedding module (W_E is its weight).")
    norm: NormSpec | None = Field(
        default=None,
        description="Norm applied to the embeddings before the first block (BLOOM); hooks embed.ln.*, and "
        "hook_embed is its output (as in HookedTransformer).",
    )
    norm_after_pos: bool = Field(
        default=False,
        description="The norm takes the token embeddings plus positions (BART's layernorm_embedding): hook_embed "
        "and hook_pos_embed stay the two summands, the norm's output is the first block's input.",
    )
    project: ModulePath | None = Field(
        default=None, description="Projection from a narrower embedding to d_model, when present (OPT project_in)."
    )
    scale_at: Literal["module", "forward"] = Field(
        default="module",
        description="Where HF applies `config.embed_scale`: `module` = inside the embedding module, whose output is "
        "already scaled (Gemma); `forward` = the model's forward multiplies the module's output (Granite's "
        "embedding_multiplier). hook_embed is the scaled embedding either way; W_E is the raw table.",
    )
    scale: ConfigValue = Field(
        default=None,
        description="This stack's own embedding scale, where the stacks of an encoder-decoder scale differently "
        "(BlenderbotSmall's decoder never scales: `1`): a literal or an expression over the HF config; null: "
        "`config.embed_scale`. W_E[tokens] times it is this stack's token embedding.",
    )


class PosEmbedSpec(StrictModel):
    """Positional information: a registered position kind (`learned`, `rotary`, `none`, ...)."""

    kind: str = Field(
        default="learned",
        description="Position kind, registered by a plugin (`learned`, `rotary` (rotate-half: dim j paired with "
        "j + rotary_dim/2), `rotary_interleaved` (adjacent pairs 2j, 2j+1: Cohere), `rotary_interleaved_table` (the "
        "same from a precomputed table of n_ctx positions: GPT-J), `rotary_interleaved_halves` (adjacent pairs, "
        "frequencies from the first half of a rotate-half table: GLM, Helium), `rotary_reversed` (rotate-half turned "
        "by -theta, `rotate_half = cat(x2, -x1)`: NanoChat), `none`).",
    )
    path: ModulePath | None = Field(
        default=None, description="The position table (learned) or the model's rotary module (rotary)."
    )
    offset: int = Field(default=0, ge=0, description="Rows of the position table before position 0 (OPT: 2).")
    rotary_output: Literal["cos_sin", "sin_cos"] = Field(
        default="cos_sin",
        description="Order of the pair the rotary module returns (and blocks receive as position embeddings): "
        "`cos_sin` (Llama, NeoX, Cohere), `sin_cos` (GPT-J). Read where the bridge rotates q and k itself.",
    )


class UnembedSpec(StrictModel):
    path: ModulePath = Field(description="The unembedding (lm head); W_U is its weight transposed.")
    project: ModulePath | None = Field(
        default=None, description="Projection from d_model to the unembedding's width, when present (OPT project_out)."
    )
    pre_scale: ConfigValue = Field(
        default=None,
        description="Expression multiplying the residual before the unembedding (T5: d_model**-0.5).",
    )
    softcap: ConfigValue = Field(
        default=None,
        description="Final logit softcap: logits = c * tanh(unembed / c) (Gemma 2); hook_unembed is before it.",
    )
    bias: str | None = Field(
        default=None,
        description="Dotted name of a model tensor (parameter or buffer) added to the logits after the unembedding "
        "(BART's final_logits_bias); part of b_U, hook_unembed is before it.",
    )


class CallSpec(StrictModel):
    """How to call one block or attention module on its own (component checks, layer ranges).

    Expressions here may use `layer` (the block index) besides HF config fields.
    """

    mask_kwarg: str = Field(default="attention_mask", description="Keyword of the attention mask of a block.")
    attention_mask_kwarg: str | None = Field(
        default=None, description="Keyword of the mask of an attention module, when it differs (T5: mask)."
    )
    mask_format: str = Field(default="4d_additive", description="Mask format kind the module expects.")
    position_embeddings_kwarg: str | None = Field(
        default=None, description="Keyword receiving (cos, sin) from the rotary module (rotary models)."
    )
    position_ids_kwarg: str | None = Field(default=None, description="Keyword receiving position ids, if any.")
    position_bias_kwarg: str | None = Field(
        default=None, description="Keyword receiving the score bias [1 or b, h, q, k] (T5: position_bias)."
    )
    window: ConfigValue = Field(
        default=None,
        description="Sliding window of layer `layer`, or null (`sliding_window if layer_types[layer] == "
        "'sliding_attention' else None`).",
    )
    rotary_args: dict[str, ConfigValue] = Field(
        default_factory=dict,
        description="Extra keyword arguments for the rotary module per layer (Gemma 3: layer_type).",
    )
    extra_kwargs: dict[str, ConfigValue] = Field(
        default_factory=dict,
        description="Further keyword arguments a block and its attention module require when called alone, "
        "each a literal or an expression per layer (Falcon: `alibi: null`).",
    )


class ScoreBiasSpec(StrictModel):
    """An additive attention-score bias computed once per stack call (a registered score-bias kind)."""

    kind: str = Field(description="Score-bias kind (`t5_buckets`; plugins add e.g. `alibi`).")
    path: ModulePath | None = Field(
        default=None, description="Module holding the bias table (T5: the first block's relative_attention_bias)."
    )
    params: dict[str, ConfigValue] = Field(
        default_factory=dict,
        description="What the kind needs, each a literal or an expression over the HF config, evaluated once at "
        "bind (t5_buckets: `bidirectional`, `num_buckets`, `max_distance`).",
    )
    per_layer: bool = Field(
        default=False,
        description="Every block computes its own bias from its own table (UMT5), where T5 computes one in the first "
        "block and hands it on: `path` is then relative to each block, and the hooks are per layer "
        "(`{stack}.{i}.attn.hook_rel_pos_bias`, `blocks.{i}.attn.hook_rel_pos_bias`) instead of one per stack.",
    )


class StackSpec(StrictModel):
    """The encoder stack of an encoder-decoder model; paths are relative to the model."""

    embed: EmbedSpec = Field(description="The encoder's own embedding module (hook_embed).")
    blocks: ModulePath = Field(description="The ModuleList of encoder blocks.")
    block: BlockSpec = Field(description="One encoder block; paths relative to it.")
    ln_final: NormSpec | None = Field(default=None, description="The encoder's final norm (encoder_final_ln).")
    score_bias: ScoreBiasSpec | None = Field(default=None, description="The encoder's score bias (T5 buckets).")
    pos_embed: PosEmbedSpec | None = Field(
        default=None, description="The encoder's own position table (BART), hook_pos_embed; absent means none."
    )


class TokenizerSpec(StrictModel):
    """How text becomes tokens for this family, when a tokenizer is present."""

    default_prepend_bos: bool | None = Field(
        default=None,
        description="Prepend BOS in to_tokens by default (TransformerLens's default_prepend_bos); null: prepend when "
        "the tokenizer has a BOS token.",
    )


class Spec(StrictModel):
    """An architecture spec: everything bridge-core needs to wrap one family of HF models."""

    name: str = Field(description="Unique architecture name (the file's stem by convention).")
    description: str = Field(default="", description="One line on which checkpoints this spec covers.")
    extends: str | None = Field(default=None, description="Name of a spec to inherit from and override.")
    override: bool = Field(default=False, description="Replace another spec's claim on the same match.")
    match: Match = Field(default_factory=Match, description="The HF classes and model types this spec claims.")
    hf_class: str = Field(
        description="transformers model class used by from_pretrained and to build the tiny test model."
    )
    config: dict[str, ConfigValue] = Field(
        description="Normalized config fields (n_layers d_model n_heads ...), as HF attribute names or "
        "arithmetic expressions over them."
    )
    test_config: dict[str, Any] = Field(
        default_factory=dict, description="HF config overrides that build a tiny random model offline."
    )
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Further tiny test models, each a delta on `test_config` (`{post_norm: {do_layer_norm_before: "
        "false}}`): conformance runs every check on each (reported as `spec[variant]`), and its `variant_coverage` "
        "check fails when a conditional expression of the spec took only one branch over all of them.",
    )
    embed: EmbedSpec = Field(description="The token embedding (of the decoder, in encoder-decoder models).")
    pos_embed: PosEmbedSpec | None = Field(default=None, description="How positions enter; absent means none.")
    blocks: ModulePath = Field(description="The ModuleList of blocks.")
    block: BlockSpec = Field(description="One block; all blocks share this layout, paths relative to the block.")
    ln_final: NormSpec | None = Field(default=None, description="The final norm before the unembedding.")
    score_bias: ScoreBiasSpec | None = Field(default=None, description="Score bias of the (decoder) stack.")
    encoder: StackSpec | None = Field(
        default=None,
        description="The encoder stack of an encoder-decoder model; the top-level embed/blocks/block/ln_final "
        "then describe the decoder.",
    )
    unembed: UnembedSpec = Field(description="The unembedding and what happens around it (pre-scale, softcap).")
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec, description="Tokenizer conventions.")
    call: CallSpec = Field(default_factory=CallSpec, description="Conventions for calling one block alone.")

    _source: Any = PrivateAttr(default=None)  # the RawSpec it was validated from (file and line of fields)

    def where(self, field: str) -> tuple[str | None, int | None]:
        """The file and line that define a dotted field (`config.n_heads`), where known."""
        if self._source is None:
            return None, None
        path = tuple(int(p) if p.isdigit() else p for p in field.split("."))
        return self._source.where(path)

    @field_validator("config")
    @classmethod
    def _required_config_fields(cls, value: dict[str, ConfigValue]) -> dict[str, ConfigValue]:
        missing = [f for f in REQUIRED_CONFIG_FIELDS if f not in value]
        if missing:
            raise ValueError(f"missing normalized field(s): {', '.join(missing)}")
        return value

    @field_validator("variants")
    @classmethod
    def _variants_are_deltas(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, delta in value.items():
            if not _VARIANT_NAME.fullmatch(name):
                raise ValueError(f"variant name '{name}' must be a word (letters, digits, '_', '-')")
            if not delta:
                raise ValueError(f"variant '{name}' changes nothing (give HF config keys and values)")
        return value

    @field_validator("match")
    @classmethod
    def _match_not_empty(cls, value: Match) -> Match:
        if not value.architectures and not value.model_type:
            raise ValueError("a spec must claim at least one HF architecture class or model_type")
        return value
