"""`Bridge`: TransformerLens's surface over an untouched Hugging Face model.

Holds the HF model, its spec, the normalized config and the hook points. With no hook attached a
call is exactly `model(...)`; hook functions are attached as PyTorch hooks for the duration of
one call and removed in `finally` (see `dispatch.py`), so the model is always left as found.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import InputError
from ..registry import Registry, default_registry
from ..spec.config import BridgeConfig, normalize_config
from ..spec.plain import PlainSpec, public_spec
from ..transformers_internals import config_objects
from . import hook_handles, loading, running
from .binding import bind
from .bound import BoundModel
from .cache import ActivationCache
from .components import ComponentCaller
from .dispatch import HookSession
from .hook_methods import HookMethods, NameOrFilter
from .hook_points import HookEntry, HookFunction, HookPoint
from .hook_values import HookValueGuard
from .inputs import check_attention_mask, check_tokens
from .model_weights import ModelWeights
from .reimplement import reimplemented_layers, with_attention_implementation
from .tl_fields import CompatMethods
from .tokens import TokenMethods
from .weights import BlockWeights, check_bound_shapes

if TYPE_CHECKING:
    from ..spec.schema import Spec

__all__ = ["Bridge", "with_attention_implementation"]


class Bridge(CompatMethods, HookMethods, ModelWeights, TokenMethods):
    """TransformerLens-style hooks, caches and weight views over one HF model."""

    def __init__(
        self,
        model: nn.Module,
        spec: Spec | PlainSpec,
        *,
        tokenizer: Any = None,
        registry: Registry | None = None,
        spec_file: str | None = None,
    ) -> None:
        self.model = model
        self._spec = spec  # what the binder read: a built-in's plain tree on a warm cache (spec/plain.py)
        self.spec_file = spec_file
        self.tokenizer = tokenizer
        self.registry = registry or default_registry()
        kinds = self.registry.plugins.kinds
        cfg = normalize_config(spec, model.config, spec_file)
        extra: dict[str, Any] = {}
        for _, fields in _spec_hook(self.registry, "bridge_core_adapt_config", spec, hf_config=model.config):
            extra.update(fields)
        if extra:
            cfg = BridgeConfig(**{**cfg.__dict__, "extra": {**cfg.extra, **extra}})
        self.cfg = cfg
        self._bound: BoundModel = bind(model, spec, cfg, kinds, spec_file)
        check_bound_shapes(self._bound, cfg)
        self.position_kind = self._bound.position_kind
        self.blocks = [BlockWeights(block, cfg) for block in self._bound.blocks]
        encoder = self._bound.encoder
        self.encoder = [BlockWeights(block, cfg) for block in encoder.blocks] if encoder else None
        self.decoder = self.blocks if encoder else None
        self._points = self._bound.points
        self._module_points: dict[str, HookPoint] = {}
        self._configs = config_objects(model)
        self._softmax_float32 = {id(attn.module): attn.softmax_float32 for _, _, attn in self._bound.attentions()}
        self._reimplemented = reimplemented_layers(self._bound, cfg)
        self.components = ComponentCaller(self._bound, cfg)
        self._entries: list[HookEntry] = []  # add_hook, and hooks() contexts while open
        self._permanent: set[int] = set()  # ids of entries added with is_permanent=True
        self._plans: dict = {}  # hook layouts of recent calls, by the points they serve (dispatch._Plan)
        self._hook_values = HookValueGuard()  # points HF changes in place after the hook (hook_values.py)
        hook_handles.attach(self)  # blocks[i].attn.hook_z and friends, as HookedTransformer's attributes
        cfg.attach_model(self)  # cfg.device, cfg.dtype, cfg.normalization_type ... read this model

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_hf(
        cls,
        model: nn.Module,
        spec: Spec | str | Path | None = None,
        tokenizer: Any = None,
        *,
        registry: Registry | None = None,
        draft: bool = True,
    ) -> Bridge:
        """Wrap an HF model you already hold; its spec is found from the model when not given (or drafted and
        verified on a tiny twin when none matches, unless `draft=False`: bridge_core/drafting/onboarding.py)."""
        registry = registry or default_registry()
        found, file = loading.spec_or_draft(spec, registry, model, draft=draft, binding=True)
        return cls(model, found, tokenizer=tokenizer, registry=registry, spec_file=file)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        spec: Spec | str | Path | None = None,
        *,
        tokenizer: Any = True,
        registry: Registry | None = None,
        draft: bool = True,
        **hf_kwargs: Any,
    ) -> Bridge:
        """Load a checkpoint (local path or hub id) with transformers and wrap it (`draft` as in `from_hf`)."""
        import transformers

        registry = registry or default_registry()
        name_or_path = loading.require_checkpoint(name_or_path)  # a missing local path says so, not a hub error
        if spec is None:
            config = transformers.AutoConfig.from_pretrained(name_or_path)
            found, file = loading.spec_or_draft(None, registry, config=config, draft=draft)
        else:
            found, file = loading.spec_from(spec, registry)
        model = loading.pretrained_model(found, name_or_path, **hf_kwargs)
        registry.plugins.results("bridge_core_prepare_model", spec=found, model=model)
        if tokenizer is True:
            tokenizer = loading.load_tokenizer(name_or_path)
        return cls(model, found, tokenizer=tokenizer or None, registry=registry, spec_file=file)

    @classmethod
    def from_spec(
        cls,
        spec: Spec | str | Path,
        tiny: bool = True,
        *,
        seed: int = 0,
        registry: Registry | None = None,
        **config_overrides: Any,
    ) -> Bridge:
        """A random model built offline from a spec (its `test_config` when `tiny`)."""
        registry = registry or default_registry()
        found, file = loading.spec_from(spec, registry)
        model = loading.random_model(found, seed=seed, tiny=tiny, **config_overrides)
        registry.plugins.results("bridge_core_prepare_model", spec=found, model=model)
        return cls(model, found, registry=registry, spec_file=file)

    @property
    def spec(self) -> Spec:
        """The validated spec (pydantic's `Spec`; built on first access when the binder read a plain tree)."""
        return public_spec(self._spec)

    @spec.setter
    def spec(self, spec: Spec) -> None:
        self._spec = spec

    @property
    def bound(self) -> BoundModel:
        """Which module plays which role, and every setting the spec evaluated to (read-only)."""
        return self._bound

    @property
    def act_fn(self):
        """The decoder MLP's activation function (its registered kind)."""
        return self._bound.blocks[0].mlp.act

    # ------------------------------------------------------------------ running
    def _session(self, extra: Sequence[HookEntry] = ()) -> HookSession | None:
        # bridge-wide add_hook entries, then this thread's hooks() contexts, then this call's own
        entries = [*self._entries, *self._local_entries(), *extra]
        if not entries:
            return None
        return HookSession(
            entries, self._configs, self._softmax_float32, self._reimplemented, self._plans, guard=self._hook_values
        )

    def _prepare(self, tokens: Any, attention_mask: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(tokens, str) or (isinstance(tokens, list) and tokens and isinstance(tokens[0], str)):
            tokens = self.to_tokens(tokens)  # TransformerLens semantics: BOS per the spec's default
        max_len = self.cfg.n_ctx if self.position_kind.limits_length else None
        tokens = check_tokens(tokens, self.cfg.d_vocab, max_len)
        attention_mask = check_attention_mask(attention_mask, tokens)
        device = self._device()
        return tokens.to(device), None if attention_mask is None else attention_mask.to(device)

    @property
    def is_encoder_decoder(self) -> bool:
        return self._bound.encoder is not None

    def _check_decoder_inputs(self, kwargs: dict, stop_at_layer: int | None, start_at_layer: int | None) -> None:
        if stop_at_layer is not None or start_at_layer is not None:
            raise InputError("layer ranges are not supported on encoder-decoder models yet")
        decoder_ids = kwargs.get("decoder_input_ids")
        if decoder_ids is None:
            raise InputError(
                "this is an encoder-decoder model: pass decoder_input_ids=[batch, dec_len] token ids for the decoder "
                "(e.g. the decoder start token followed by the target so far); input tokens go to the encoder"
            )
        kwargs["decoder_input_ids"] = check_tokens(decoder_ids, self.cfg.d_vocab, None, "decoder_input_ids").to(
            self._device()
        )
        if kwargs.get("decoder_attention_mask") is not None:
            kwargs["decoder_attention_mask"] = check_attention_mask(
                kwargs["decoder_attention_mask"], kwargs["decoder_input_ids"]
            ).to(self._device())

    def _device(self) -> torch.device:
        return self._bound.embed.weight.device

    def __call__(
        self,
        tokens: Any,
        attention_mask: torch.Tensor | None = None,
        *,
        return_type: str | None = "logits",
        loss_per_token: bool = False,
        stop_at_layer: int | None = None,
        start_at_layer: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Logits `[batch, seq, d_vocab]` with every attached hook running.

        `return_type`: "logits", "loss" (next-token cross-entropy), "both" or None.
        `stop_at_layer=k` returns the residual entering block k and runs no later block;
        `start_at_layer=k` takes that residual (not tokens) and runs blocks k.. and the unembedding;
        both together run `blocks[start:stop]` (negative indices count from the end) and return the
        residual entering block `stop`. A loss needs at least 2 tokens (a 1-token loss is refused).
        """
        return self._forward(
            tokens, attention_mask, (), kwargs, return_type, loss_per_token, stop_at_layer, start_at_layer
        )

    forward = __call__

    def _forward(
        self,
        tokens: Any,
        attention_mask: torch.Tensor | None,
        extra: Sequence[HookEntry],
        kwargs: dict,
        return_type: str | None = "logits",
        loss_per_token: bool = False,
        stop_at_layer: int | None = None,
        start_at_layer: int | None = None,
    ) -> Any:
        if return_type not in ("logits", "loss", "both", None):
            raise InputError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        start, stop = running.layer_range(self, start_at_layer, stop_at_layer)
        if start is not None:
            residual = running.check_residual(self, tokens)
            mask = check_attention_mask(attention_mask, residual[..., 0])
            mask = None if mask is None else mask.to(residual.device)
        else:
            tokens, mask = self._prepare(tokens, attention_mask)
        wants_loss = return_type in ("loss", "both") and stop is None
        if start is not None and wants_loss:
            raise InputError("a loss needs tokens; it cannot be computed with start_at_layer")
        session = self._session(extra)
        # `use_cache` is left as the caller and the config say: `bridge(x)` is exactly `model(x)`, except
        # that internal hooks on the reimplement path recompute attention without a KV cache.
        if session is not None and session.recomputes_attention:
            kwargs.setdefault("use_cache", False)
        if self.is_encoder_decoder:
            self._check_decoder_inputs(kwargs, stop_at_layer, start_at_layer)
        if wants_loss:  # the loss is over the decoder's tokens on an encoder-decoder, as HF's `labels` are
            loss_tokens, loss_mask = (
                (kwargs["decoder_input_ids"], kwargs.get("decoder_attention_mask"))
                if self.is_encoder_decoder
                else (tokens, mask)
            )
            running.check_loss_inputs(loss_tokens, loss_mask)
        with ExitStack() as stack:
            if session is not None:
                stack.enter_context(session)
            if start is not None:
                logits = running.run_from_layer(self, residual, start, stop, mask)
                if stop is not None:
                    return logits  # the residual entering block `stop`
            elif stop is not None:
                running.stop_hook(self, stop, stack)
                try:
                    self.model(input_ids=tokens, attention_mask=mask, **kwargs)
                except running._StopForward as stop_forward:
                    return stop_forward.residual
                raise RuntimeError("the forward did not reach the stop layer")  # a block was skipped
            else:
                logits = self.model(input_ids=tokens, attention_mask=mask, **kwargs).logits
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = running.lm_loss(logits, loss_tokens, loss_mask, loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def generate(
        self,
        input: Any = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | list[int] | None = None,
        do_sample: bool = False,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        return_type: str = "input",
        verbose: bool = True,
        *,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
    ) -> Any:
        """HookedTransformer's `generate` on HF's own `generate`, hooks active on every step.

        Text in (a string or a list of strings, left-padded), text out without special tokens; token ids
        in, `[batch, prompt + new]` ids out (`return_type` "str" / "tokens" chooses). Greedy unless
        `do_sample` (HookedTransformer samples by default). `verbose` is accepted (there is no progress
        bar); `freq_penalty` is refused: HF has no frequency penalty. `use_cache` is `use_past_kv_cache`.
        """
        if return_type not in ("input", "str", "tokens"):
            raise InputError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}")
        if freq_penalty:
            raise InputError(
                "freq_penalty is not supported: HF's generate has no frequency penalty (repetition_penalty differs)"
            )
        tokens, mask, kind = running.prompt_tokens(self, input, prepend_bos, padding_side, attention_mask)
        prompt, mask = self._prepare(tokens, mask)
        eos = running.stop_tokens(self, stop_at_eos, eos_token_id)
        cache = use_past_kv_cache if use_cache is None else use_cache
        session = self._session()
        with ExitStack() as stack:
            if session is not None:
                stack.enter_context(session)
            out = running.generate(self, prompt, mask, max_new_tokens, do_sample, temperature, top_k, top_p, eos, cache)
        return running.generated_output(self, out, kind, return_type)

    def run_with_hooks(
        self,
        tokens: Any,
        fwd_hooks: Iterable[tuple[NameOrFilter, HookFunction]] = (),
        bwd_hooks: Iterable[tuple[NameOrFilter, HookFunction]] = (),
        reset_hooks_end: bool = True,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One forward with extra hooks; with `bwd_hooks`, the hooks stay on the graph for `.backward()`."""
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end=reset_hooks_end):
            return self(tokens, attention_mask, **kwargs)

    def run_with_cache(
        self,
        tokens: Any,
        names_filter: NameOrFilter | Sequence[str] | None = None,
        attention_mask: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        cache_device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> tuple[Any, ActivationCache]:
        """The output and the activations of every selected hook point (all of them by default).

        `incl_bwd=True` also runs `.backward()` on the output (which must then be a scalar, e.g.
        `return_type="loss"`) and caches each point's gradient as `NAME_grad`, as TransformerLens does.
        `device` (or its alias `cache_device`) gathers the cached tensors there, wherever the modules run.
        """
        device = device if device is not None else cache_device
        forward_options = {
            k: kwargs.pop(k)
            for k in ("return_type", "loss_per_token", "stop_at_layer", "start_at_layer")
            if k in kwargs
        }
        cache: dict[str, torch.Tensor] = {}

        def save(tensor: torch.Tensor, hook: HookPoint) -> None:
            # `detach` only where there is a graph to cut: without grad the tensor is HF's value as it is
            value = tensor.detach() if tensor.requires_grad else tensor
            cache[hook.name] = value if device is None else value.to(device)

        def save_grad(grad: torch.Tensor, hook: HookPoint) -> None:
            value = grad.detach()
            cache[hook.name + "_grad"] = value if device is None else value.to(device)

        if names_filter is None:
            points = list(self._points.values())
        elif isinstance(names_filter, str) or callable(names_filter):
            points = self._select(names_filter)
        else:
            points = [self.hook_point(name) for name in names_filter]
        entries = [HookEntry(p, save, reads_only=True) for p in points]
        if incl_bwd:
            entries += [HookEntry(p, save_grad, "bwd") for p in points]
        learned = self._hook_values.learned
        out = self._forward(tokens, attention_mask, entries, dict(kwargs), **forward_options)
        if self._hook_values.learned != learned:  # HF changed a cached tensor later: again, with copies there
            cache.clear()
            out = self._forward(tokens, attention_mask, entries, kwargs, **forward_options)
        if incl_bwd:
            if not isinstance(out, torch.Tensor) or out.dim() != 0:
                raise InputError("incl_bwd=True needs a scalar output to differentiate: pass return_type='loss'")
            out.backward()
        result = ActivationCache(cache, self)
        return out, result.remove_batch_dim() if remove_batch_dim else result

    # ------------------------------------------------------------------ conveniences
    def processed_copy(
        self,
        fold_ln: bool | None = None,
        center_writing_weights: bool | None = None,
        center_unembed: bool | None = None,
        fold_value_biases: bool | None = None,
    ) -> Bridge:
        """TransformerLens's processed weights, on a copy of the model (this one is never changed).

        A transform left at None is applied where it is exact on this model and skipped with a
        `ProcessingSkipped` warning where not (as HookedTransformer does); True insists (ProcessingError).
        """
        from . import processing  # imported on first use: a first bridge does not need it

        return processing.processed_copy(self, fold_ln, center_writing_weights, center_unembed, fold_value_biases)

    def tokens_to_residual_directions(self, tokens: Any) -> torch.Tensor:
        """The unembedding directions `W_U[:, token]` of tokens (ids or strings)."""
        from . import analysis  # imported on first use

        return analysis.residual_directions(self, tokens)

    def to(self, *args: Any, **kwargs: Any) -> Bridge:
        self.model.to(*args, **kwargs)
        return self

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def __repr__(self) -> str:
        return (
            f"Bridge({self.cfg.architecture}: {type(self.model).__name__}, {self.cfg.n_layers} layers, "
            f"d_model {self.cfg.d_model}, {len(self._points)} hook points)"
        )


def _spec_hook(registry: Registry, hook_name: str, spec: Spec | PlainSpec, **kwargs: Any) -> list[tuple[str, Any]]:
    """A spec-build hook's results. Plugins always get pydantic's `Spec`; it is built from a plain tree only
    when some plugin implements the hook, so a first bridge without such plugins imports no pydantic."""
    if not getattr(registry.plugins.pm.hook, hook_name).get_hookimpls():
        return []
    return registry.plugins.results(hook_name, spec=public_spec(spec), **kwargs)
