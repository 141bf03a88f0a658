"""`CheckContext`: what every check sees — the spec, the bridge, the untouched deep copy, test tokens,
and the reference recordings made on the copy (computed once, on first use, and shared).

Built by the runner; checks never run the copy with bridge hooks, and never run the bridge's model raw.
Encoder-decoder models get encoder tokens (`tokens`) and decoder tokens (`decoder_tokens`); `layers`
and `attentions` walk every block and attention module of every stack under its hook-name prefix.
"""

from __future__ import annotations

import contextlib
from functools import cached_property
from typing import Any

import torch
from torch import nn

from .. import records
from ..bridge.bound import BoundAttention, BoundBlock, BoundModel, BoundNorm, Spot
from ..spec.schema import Spec
from .capture import AttentionCall, Recording, record
from .snapshot import ModelSnapshot


@records.record(frozen=True)
class Layer:
    """One block under its hook-name prefix (`blocks.0`, `encoder.0`, `decoder.0`)."""

    prefix: str
    stack: str  # "encoder" or "decoder" (decoder-only models: "decoder")
    index: int
    block: BoundBlock
    weights: Any  # BlockWeights

    def norm_roles(self) -> list[tuple[str, str, BoundNorm]]:
        """(hook prefix, spec field, norm) of each norm of the block, HookedEncoderDecoder's ln2/ln3 included."""
        return [(f"{self.prefix}.{norm.name}", norm.field, norm) for norm in self.block.norms()]


@records.record(frozen=True)
class Attention:
    """One attention module: self attention of a layer, or a decoder layer's cross attention."""

    prefix: str  # "blocks.0.attn", "decoder.0.cross_attn"
    layer: Layer
    bound: BoundAttention
    weights: Any  # AttentionWeights
    cross: bool

    @property
    def out_name(self) -> str:
        return f"{self.layer.prefix}.hook_cross_attn_out" if self.cross else f"{self.layer.prefix}.hook_attn_out"

    @property
    def contribution(self) -> Spot:
        """Where the bound model says this attention's contribution to the residual is."""
        block = self.layer.block
        return block.cross.out if self.cross else block.attn_out


class CheckContext:
    """One spec, one model, one bridge (or the error that kept it from binding), and references.

    Roles (which module's output is the attention contribution, which norm feeds what) come only from
    the bridge's bound model; the values compared against come from HF's own forward of the copy.
    """

    batch = 2
    max_seq = 16  # long enough that relative distances reach past small T5 bucket settings
    decoder_seq = 13  # differs from the encoder's length, so a swapped axis cannot go unnoticed

    def __init__(
        self,
        spec: Spec | None,
        spec_file: str,
        label: str,
        model: nn.Module | None = None,
        copy: nn.Module | None = None,
        snapshot: ModelSnapshot | None = None,
        bridge: Any = None,
        error: BaseException | None = None,
        seed: int = 0,
        model_source: str = "",
        variant: str | None = None,
        registry: Any = None,
    ) -> None:
        self.spec = spec
        self.spec_file = spec_file
        self.label = label
        self.model = model
        self.copy = copy
        self.snapshot = snapshot
        self.bridge = bridge
        self.error = error
        self.seed = seed
        self.model_source = model_source
        self.registry = registry  # the Registry the spec came from (plugin kinds)
        self.variant = variant  # which of the spec's tiny test models this is (None: the base one)

    @property
    def bound(self) -> BoundModel:
        return self.bridge.bound

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(getattr(self.copy, "config", None), "is_encoder_decoder", False))

    # ------------------------------------------------------------------ layers
    @cached_property
    def layers(self) -> list[Layer]:
        weights = [*(self.bridge.encoder or []), *self.bridge.blocks]
        return [
            Layer(block.prefix, block.stack, block.index, block, w)
            for block, w in zip(self.bound.all_blocks(), weights, strict=True)
        ]

    @cached_property
    def attentions(self) -> list[Attention]:
        out = []
        for layer in self.layers:
            block, weights = layer.block, layer.weights
            out.append(Attention(f"{layer.prefix}.attn", layer, block.attn, weights.attn, False))
            if block.cross is not None:
                out.append(Attention(f"{layer.prefix}.cross_attn", layer, block.cross.attn, weights.cross_attn, True))
        return out

    def final_norms(self) -> list[tuple[str, str, BoundNorm]]:
        """(hook prefix, spec field, norm) of the final norm of each stack."""
        return [(norm.name, norm.field, norm) for norm in self.bound.final_norms()]

    # ------------------------------------------------------------------ inputs
    @cached_property
    def vocab(self) -> int:
        return int(self.copy.get_input_embeddings().weight.shape[0])

    @cached_property
    def seq(self) -> int:
        config = self.copy.config
        n_ctx = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 8
        return min(self.max_seq, int(n_ctx))

    @cached_property
    def tokens(self) -> torch.Tensor:
        """`[2, seq]` random token ids, fixed by the seed (the encoder's, for encoder-decoder models)."""
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randint(0, self.vocab, (self.batch, self.seq), generator=generator)

    @cached_property
    def decoder_tokens(self) -> torch.Tensor | None:
        """`[2, decoder_seq]` decoder token ids for encoder-decoder models (None otherwise)."""
        if not self.is_encoder_decoder:
            return None
        generator = torch.Generator().manual_seed(self.seed + 7)
        return torch.randint(0, self.vocab, (self.batch, self.decoder_seq), generator=generator)

    @property
    def inputs(self) -> dict[str, Any]:
        """Keyword inputs besides the tokens that a forward of this model needs (decoder tokens)."""
        return {} if self.decoder_tokens is None else {"decoder_input_ids": self.decoder_tokens}

    def seq_of(self, stack: str) -> int:
        return self.decoder_seq if stack == "decoder" and self.is_encoder_decoder else self.seq

    def padding_mask(self, side: str, real: int | None = None) -> torch.Tensor:
        """Sequence 0 full, sequence 1 with only `real` tokens, padded on `side` ("left"/"right")."""
        real = real if real is not None else max(1, self.seq - 3)
        mask = torch.ones(self.batch, self.seq, dtype=torch.long)
        if side == "right":
            mask[1, real:] = 0
        else:
            mask[1, : self.seq - real] = 0
        return mask

    def masks_of(self, attention: Attention, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(query mask, key mask) `[b, q]`, `[b, k]` of an attention module, given the tokens' padding mask."""
        full_enc = torch.ones(self.batch, self.seq, dtype=torch.long) if mask is None else mask
        if not self.is_encoder_decoder:
            return full_enc, full_enc
        dec = torch.ones(self.batch, self.decoder_seq, dtype=torch.long)
        if attention.layer.stack == "encoder":
            return full_enc, full_enc
        return dec, (full_enc if attention.cross else dec)

    def causal(self, attention: Attention) -> bool:
        return not attention.cross and attention.layer.stack == "decoder"

    def window(self, attention: Attention) -> int | None:
        """The sliding window the spec's `call.window` declares for this layer (self attention only)."""
        if attention.cross or attention.layer.stack == "encoder":
            return None
        return self.bridge.components.window(attention.layer.index)

    # ------------------------------------------------------------------ naming
    @cached_property
    def _names(self) -> dict[int, str]:
        return {id(m): n for n, m in self.model.named_modules()}

    def name_of(self, module: nn.Module) -> str:
        """The module's dotted path in the model (the same path names its twin in the copy)."""
        return self._names[id(module)]

    @cached_property
    def embedding_name(self) -> str:
        """HF's own input embedding (`get_input_embeddings()`), not the spec's path."""
        return self.name_of(self.model.get_input_embeddings())

    @cached_property
    def recorded_modules(self) -> list[str]:
        bound = self.bound
        modules = [bound.embed, bound.pos_embed, bound.unembed, bound.embed_project, bound.unembed_project]
        modules += [self.model.get_input_embeddings(), bound.embed_spot.module]
        modules += [norm.module for norm in bound.final_norms()]
        if bound.embed_norm is not None:
            modules.append(bound.embed_norm.module)
        for stack in bound.stacks():
            modules += [stack.embed, stack.pos_embed, stack.embed_norm.module if stack.embed_norm else None]
            modules.append(stack.output().module)
        for block in bound.all_blocks():
            modules += [block.module, block.mlp.module, block.mlp.w_in, block.mlp.w_out, block.mlp.input.module]
            modules += [block.mlp.out_norm.module] if block.mlp.out_norm is not None else []
            if block.mlp.moe is not None:  # the router's logits and the experts' output (checks/moe.py)
                modules += [block.mlp.moe.router, block.mlp.moe.experts]
            modules += [norm.module for norm in block.norms()]
            spots = [block.attn_out, block.mlp_out, block.resid_mid, block.resid_post]
            if block.cross is not None:
                spots += [block.cross.out, block.cross.residual]
            modules += [spot.module for spot in spots if spot is not None]
        for attention in self.attentions:
            modules += [attention.bound.module, attention.bound.o, *attention.bound.qkv.values()]
            qko = (attention.bound.q_norm, attention.bound.k_norm, attention.bound.o_norm)
            modules += [n.module for n in qko if n is not None]
            modules += [attention.bound.out_gate.module] if attention.bound.out_gate is not None else []
            latent = attention.bound.latent
            if latent is not None:  # latent attention: its factored projections and latent norms
                modules += [latent.query, latent.kv_a, latent.kv_b, latent.kv_a_norm.module]
                modules += [latent.q_a_norm.module] if latent.q_a_norm is not None else []
        return list(dict.fromkeys(self.name_of(m) for m in modules if m is not None))

    # ------------------------------------------------------------------ references (the copy)
    def reference_run(
        self, attention_mask: torch.Tensor | None = None, edits: list = (), capture: bool = True, **kwargs: Any
    ) -> Recording:
        """A forward of the untouched copy: eager through the capture function unless `capture` is
        False (then in the implementation it was loaded with), recording every bound module."""
        return record(
            self.copy,
            self.recorded_modules,
            capture=capture,
            edits=list(edits),
            input_ids=self.tokens,
            attention_mask=attention_mask,
            use_cache=False,
            **{**self.inputs, **kwargs},
        )

    def hf_logits(self, tokens: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """The copy's logits in the implementation it was loaded with (`tokens` default: the test tokens),
        called as `bridge(tokens)` calls the model: `use_cache` as the config says (T5's eager decoder
        differs by 1e-6 between its cached and uncached paths)."""
        tokens = self.tokens if tokens is None else tokens
        extra = dict(self.inputs)
        if "decoder_input_ids" in extra:
            extra["decoder_input_ids"] = extra["decoder_input_ids"][: tokens.shape[0]]
        with torch.no_grad():
            return self.copy(input_ids=tokens, **{**extra, **kwargs}).logits

    def warm_up(self) -> None:
        """One forward of the copy, discarded, before anything is compared: the checks compare forwards
        with each other, and torch's first one in a process can differ from every later one (measured
        on torch 2.13 with 2 threads: the first float `tanh` of a fresh process was off by up to 5e-5 in
        about 2% of processes, enough to fail `mlp` on a correct GPT-2 spec). It runs for every context,
        not once per process: whether only a process's first forward is affected, and not also a later
        model's first use of an op, was not established."""
        with contextlib.suppress(Exception):  # a model that cannot run: the checks that run it say why
            self.hf_logits()

    @cached_property
    def reference(self) -> Recording:
        """The copy's eager forward on `tokens` (no padding), with attention calls captured."""
        return self.reference_run()

    @cached_property
    def plain_logits(self) -> torch.Tensor:
        """The copy's logits in the attention implementation it was loaded with."""
        return self.hf_logits()

    def hf_in(self, module: nn.Module, recording: Recording | None = None, role: str | None = None) -> torch.Tensor:
        """What HF passed `module` (its twin in the copy) on the reference forward: on its first call, or on its last
        for `role` "final" (a norm in two roles)."""
        recording = recording or self.reference
        return self._recorded(recording.inputs, module, recording.last_inputs if role == "final" else None)

    def hf_at(self, spot: Spot, recording: Recording | None = None) -> torch.Tensor:
        """HF's value at a spot the bound model located (a module's main output, or its hidden input), times the
        spot's scale where HF multiplies that tensor outside the module (Granite's residual multiplier)."""
        at = (spot.module, recording, spot.role)
        tensor = self.hf_in(*at) if spot.side == "input" else self.hf_out(*at)
        return tensor if spot.scale is None else tensor * spot.scale

    def hf_out(self, module: nn.Module, recording: Recording | None = None, role: str | None = None) -> torch.Tensor:
        """What `module`'s twin in the copy returned on the reference forward (element 0 of a tuple); on its last
        call for `role` "final"."""
        recording = recording or self.reference
        return self._recorded(recording.outputs, module, recording.last_outputs if role == "final" else None)

    def _recorded(self, table: dict[str, torch.Tensor], module: nn.Module, last: dict | None = None) -> torch.Tensor:
        name = self.name_of(module)
        if last is not None and name in last:
            table = last
        if name not in table:
            raise LookupError(f"HF never called '{name}' on a forward, so there is no tensor of it to compare")
        tensor = table[name]
        if tensor.dim() == 2 and tensor.shape[0] == self.batch * self.seq:  # flattened tokens (OPT's MLP)
            tensor = tensor.unflatten(0, (self.batch, self.seq))
        return tensor

    def attention_call(self, attention: Attention | int, recording: Recording | None = None) -> AttentionCall | None:
        recording = recording or self.reference
        module = self.bound.blocks[attention].attn.module if isinstance(attention, int) else attention.bound.module
        return recording.call(self.name_of(module))

    # ------------------------------------------------------------------ the bridge
    def bridge_cache(self, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        """`run_with_cache` of the bridge on the test tokens (and decoder tokens)."""
        with torch.no_grad():
            return self.bridge.run_with_cache(self.tokens, attention_mask=attention_mask, **{**self.inputs, **kwargs})

    def bridge_hooked(self, fwd_hooks: list, bridge: Any = None, **kwargs: Any) -> torch.Tensor:
        """Logits of the bridge (or another bridge) on the test tokens with `fwd_hooks` attached."""
        with torch.no_grad():
            return (bridge or self.bridge).run_with_hooks(self.tokens, fwd_hooks=fwd_hooks, **{**self.inputs, **kwargs})

    @cached_property
    def cache(self) -> dict[str, torch.Tensor]:
        """`run_with_cache` of every hook point on `tokens` (no padding)."""
        _, cache = self.bridge_cache()
        return dict(cache.items())

    @property
    def n_layers(self) -> int:
        return len(self.bound.blocks)
