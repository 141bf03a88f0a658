"""SAELens's SAE workflow on a bridge (optional extra `bridge-core[sae]`): attach SAEs and transcoders to
hook points, splice them into the forward (with or without the error term) and cache their own hook points
under SAELens's names (`blocks.1.hook_resid_pre.hook_sae_acts_post`). Built on the bridge's public hook API.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import field
from typing import Any

import torch

from .bridge.bridge import Bridge
from .bridge.cache import ActivationCache
from .bridge.hook_points import HookPoint
from .errors import BridgeCoreError, HookNameError, HookShapeError, close_matches
from .records import record

SAE_EXTRA = 'pip install "bridge-core[sae]"  (or: pip install "sae-lens>=6,<7")'
# Hook points the SAE fires itself inside encode/decode, and the two the splice fires (as SAELens's wrapper does).
SAE_INNER_POINTS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons")
SAE_SPLICE_POINTS = ("hook_sae_error", "hook_sae_output")

NameOrFilter = str | Callable[[str], bool]
HookPair = tuple[NameOrFilter, Callable]


class SAEDependencyError(BridgeCoreError, ImportError):
    """The SAE integration was used but sae-lens is not installed."""

    def __init__(self) -> None:
        super().__init__(f"the SAE integration needs sae-lens, which is not installed: {SAE_EXTRA}")


class SAEAttachError(BridgeCoreError, ValueError):
    """An SAE that cannot be attached where its config says (width, kind, or an unsupported option)."""


def sae_lens() -> Any:
    """The `sae_lens` module, imported on first use; a typed error naming the extra when absent."""
    try:
        import sae_lens as module
    except ImportError:
        raise SAEDependencyError() from None
    return module


@record(eq=False)
class SAEHookPoint:
    """The `hook` argument of a hook function on an SAE's own point: `.name`, `.ctx` and `.layer()`."""

    name: str
    ctx: dict[str, Any] = field(default_factory=dict, repr=False)
    layer = HookPoint.layer  # the block index in the name, as on the bridge's own points


@record(eq=False)
class _Attached:
    """One SAE (or transcoder) reading `hook_in` and writing `hook_out`, both canonical bridge names."""

    sae: Any
    hook_in: str
    hook_out: str
    use_error_term: bool
    points: dict[str, SAEHookPoint]  # local name (hook_sae_acts_post) -> point named under hook_out
    captured: torch.Tensor | None = None

    @property
    def is_transcoder(self) -> bool:
        return self.hook_in != self.hook_out


def _capture(attached: _Attached, tensor: torch.Tensor, hook: Any) -> None:
    attached.captured = tensor  # a transcoder's input, read when its output point is reached


@record(frozen=True)
class _SAEHook:
    point: SAEHookPoint
    fn: Callable
    direction: str = "fwd"


class SAEBridge:
    """A bridge with SAELens's SAE surface (`add_sae`, `run_with_saes`, `saes(...)`, ...).

    Everything else (`cfg`, weights, `to_tokens`, ...) is the wrapped bridge's. SAEs are spliced in for the
    duration of each call only; a hook on the spliced bridge point sees (and may edit) the value entering
    the SAE, and what flows on is `{hook}.hook_sae_output`.
    """

    def __init__(self, bridge: Bridge) -> None:
        sae_lens()  # fail early, naming the extra
        self.bridge = bridge
        self._attached: dict[str, _Attached] = {}  # by canonical input hook name
        self._hooks: list[_SAEHook] = []  # add_hook on SAE points, and open hooks() contexts
        self._permanent: set[int] = set()
        self._widths: dict[str, tuple[int, ...]] = {}
        self._quiet = False  # set while the error term's clean pass runs: SAE points do not fire

    @classmethod
    def from_bridge(cls, bridge: Bridge) -> SAEBridge:
        return cls(bridge)

    def __getattr__(self, name: str) -> Any:
        if name == "bridge":  # not set yet: avoid recursing during construction or unpickling
            raise AttributeError(name)
        return getattr(self.bridge, name)

    def __repr__(self) -> str:
        return f"SAEBridge({self.bridge!r}, saes on {sorted(self._attached)})"

    # ------------------------------------------------------------------ attaching
    @property
    def acts_to_saes(self) -> dict[str, Any]:
        """The attached SAEs by the hook point they read."""
        return {name: attached.sae for name, attached in self._attached.items()}

    def add_sae(self, sae: Any, use_error_term: bool | None = None, exclude_special_tokens: Any = False) -> None:
        """Attach `sae` where its config says (`hook_name`, and `hook_name_out` for a transcoder) until reset.

        `use_error_term=True` adds back what the SAE fails to reconstruct, so the forward is unchanged while
        its feature activations are still computed (None: the SAE's own setting). Replaces an SAE on that hook.
        """
        if not isinstance(sae, sae_lens().SAE):
            raise SAEAttachError(f"add_sae takes a sae_lens SAE or transcoder, got {type(sae).__name__}")
        if exclude_special_tokens:
            raise SAEAttachError("exclude_special_tokens is not supported on a bridge yet: pass False")
        meta = sae.cfg.metadata
        if not meta.hook_name:
            raise SAEAttachError(f"{type(sae).__name__} has no cfg.metadata.hook_name: set where it reads")
        hook_in = self.bridge.hook_point(meta.hook_name).name  # HookNameError with close matches
        hook_out = self.bridge.hook_point(meta.hook_name_out or meta.hook_name).name
        self._check_width(sae, hook_in, sae.cfg.d_in, "d_in")
        self._check_width(sae, hook_out, getattr(sae.cfg, "d_out", sae.cfg.d_in), "d_out")
        for name, other in list(self._attached.items()):  # one SAE writes each point
            if name == hook_in or other.hook_out == hook_out:
                del self._attached[name]
        error = sae.use_error_term if use_error_term is None else use_error_term
        points = {local: SAEHookPoint(f"{hook_out}.{local}") for local in SAE_INNER_POINTS + SAE_SPLICE_POINTS}
        self._attached[hook_in] = _Attached(sae, hook_in, hook_out, bool(error), points)

    def reset_saes(self, act_names: str | Sequence[str] | None = None) -> None:
        """Detach the SAEs reading these hook points (all of them by default)."""
        names = [act_names] if isinstance(act_names, str) else list(act_names or self._attached)
        for name in names:
            self._attached.pop(self.bridge.hook_point(name).name, None)

    @contextmanager
    def saes(
        self, saes: Any = (), reset_saes_end: bool = True, use_error_term: bool | None = None
    ) -> Iterator[SAEBridge]:
        """SAEs attached for the body of a `with` block; at its end the SAEs those hooks had are restored."""
        saes = [saes] if isinstance(saes, sae_lens().SAE) else list(saes)
        before = dict(self._attached)
        try:
            for sae in saes:
                self.add_sae(sae, use_error_term=use_error_term)
            yield self
        finally:
            if reset_saes_end:
                self._attached = before

    def _check_width(self, sae: Any, name: str, width: int, field_name: str) -> None:
        shape = self._shape(name)
        fits = shape[-1:] == (width,)
        if getattr(sae, "hook_z_reshaping_mode", False) and len(shape) >= 2:
            fits = fits or shape[-2] * shape[-1] == width  # heads flattened by the SAE
        if not fits:
            raise SAEAttachError(
                f"{type(sae).__name__} has {field_name}={width} but hook point '{name}' is {list(shape)} "
                f"[batch, pos, ...]: its last dimension must be {field_name}"
            )

    def _shape(self, name: str) -> tuple[int, ...]:
        """The shape of one point's value on a two-token forward (cached per point)."""
        if name not in self._widths:
            probe = torch.zeros(1, 2, dtype=torch.long)
            kwargs = {"decoder_input_ids": probe} if self.bridge.is_encoder_decoder else {}
            with torch.no_grad():
                _, cache = self.bridge.run_with_cache(probe, names_filter=[name], **kwargs)
            self._widths[name] = tuple(cache[name].shape)
        return self._widths[name]

    # ------------------------------------------------------------------ hook names
    def _sae_points(self) -> dict[str, tuple[_Attached, str]]:
        return {p.name: (a, local) for a in self._attached.values() for local, p in a.points.items()}

    def _split(self, pairs: Iterable[HookPair], direction: str) -> tuple[list[HookPair], list[_SAEHook]]:
        """Hooks on bridge points (for the bridge) and hooks on attached SAEs' points (run here)."""
        points = self._sae_points()
        bridge_pairs: list[HookPair] = []
        sae_hooks: list[_SAEHook] = []
        for name, fn in pairs:
            if callable(name):
                bridge_pairs.append((name, fn))
                hit = [n for n in points if name(n)]
            elif name in points:
                hit = [name]
            else:
                if ".hook_sae_" in name:  # an SAE point of no attached SAE: say which ones exist
                    raise HookNameError(name, close_matches(name, list(points)))
                bridge_pairs.append((name, fn))
                hit = []
            sae_hooks += [_SAEHook(points[n][0].points[points[n][1]], fn, direction) for n in hit]
        return bridge_pairs, sae_hooks

    def hook_names(self) -> list[str]:
        """The bridge's hook points, then those of every attached SAE."""
        return [*self.bridge.hook_names(), *self._sae_points()]

    def add_hook(self, name: NameOrFilter, hook: Callable, dir: str = "fwd", prepend: bool = False, **kw: Any) -> None:
        """`Bridge.add_hook`, also for the hook points of attached SAEs."""
        bridge_pairs, sae_hooks = self._split([(name, hook)], dir)
        if bridge_pairs:
            self.bridge.add_hook(name, hook, dir=dir, prepend=prepend, **kw)
        if kw.get("is_permanent"):
            self._permanent.update(id(h) for h in sae_hooks)
        self._hooks = sae_hooks + self._hooks if prepend else self._hooks + sae_hooks

    def reset_hooks(self, including_permanent: bool = False) -> None:
        self.bridge.reset_hooks(including_permanent=including_permanent)
        if including_permanent:
            self._permanent.clear()
        self._hooks = [h for h in self._hooks if id(h) in self._permanent]

    @contextmanager
    def hooks(
        self, fwd_hooks: Iterable[HookPair] = (), bwd_hooks: Iterable[HookPair] = (), reset_hooks_end: bool = True
    ) -> Iterator[SAEBridge]:
        """`Bridge.hooks`, also for the hook points of attached SAEs."""
        fwd, sae_fwd = self._split(fwd_hooks, "fwd")
        bwd, sae_bwd = self._split(bwd_hooks, "bwd")
        mine = sae_fwd + sae_bwd
        self._hooks = self._hooks + mine
        try:
            with self.bridge.hooks(fwd, bwd, reset_hooks_end=reset_hooks_end):
                yield self
        finally:
            if reset_hooks_end:
                ids = {id(h) for h in mine}
                self._hooks = [h for h in self._hooks if id(h) not in ids]

    # ------------------------------------------------------------------ running
    def __call__(self, tokens: Any, *args: Any, **kwargs: Any) -> Any:
        """The bridge's forward with every attached SAE spliced in."""
        with self._spliced():
            return self.bridge(tokens, *args, **kwargs)

    forward = __call__

    def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Any:
        with self._spliced():
            return self.bridge.generate(tokens, *args, **kwargs)

    def run_with_hooks(
        self,
        tokens: Any,
        fwd_hooks: Iterable[HookPair] = (),
        bwd_hooks: Iterable[HookPair] = (),
        reset_hooks_end: bool = True,
        **kwargs: Any,
    ) -> Any:
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end=reset_hooks_end):
            return self(tokens, **kwargs)

    def run_with_cache(
        self,
        tokens: Any,
        names_filter: NameOrFilter | Sequence[str] | None = None,
        device: torch.device | str | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, ActivationCache]:
        """`Bridge.run_with_cache` with the SAEs spliced in; their points are cached under SAELens's names."""
        cache: dict[str, torch.Tensor] = {}

        def save(tensor: torch.Tensor, hook: Any, suffix: str = "") -> None:
            value = tensor.detach()
            cache[hook.name + suffix] = value if device is None else value.to(device)

        def save_grad(tensor: torch.Tensor, hook: Any) -> None:
            save(tensor, hook, "_grad")

        if names_filter is None:
            names: list[NameOrFilter] = [*self.bridge.hook_names(), *self._sae_points()]
        elif isinstance(names_filter, str) or callable(names_filter):
            names = [names_filter]
        else:
            names = list(names_filter)
        fwd = [(name, save) for name in names]
        bwd = [(name, save_grad) for name in names] if incl_bwd else []
        with self.hooks(fwd, bwd):
            out = self(tokens, **kwargs)
            if incl_bwd:
                if not isinstance(out, torch.Tensor) or out.dim() != 0:
                    raise HookShapeError("incl_bwd=True needs a scalar output to differentiate: return_type='loss'")
                out.backward()
        result = ActivationCache(cache, self.bridge)
        return out, result.remove_batch_dim() if remove_batch_dim else result

    def run_with_saes(
        self, *args: Any, saes: Any = (), reset_saes_end: bool = True, use_error_term: bool | None = None, **kw: Any
    ) -> Any:
        with self.saes(saes, reset_saes_end=reset_saes_end, use_error_term=use_error_term):
            return self(*args, **kw)

    def run_with_cache_with_saes(
        self, *args: Any, saes: Any = (), reset_saes_end: bool = True, use_error_term: bool | None = None, **kw: Any
    ) -> tuple[Any, ActivationCache]:
        kw.pop("return_cache_object", None)  # always an ActivationCache here
        with self.saes(saes, reset_saes_end=reset_saes_end, use_error_term=use_error_term):
            return self.run_with_cache(*args, **kw)

    def run_with_hooks_with_saes(
        self,
        *args: Any,
        saes: Any = (),
        reset_saes_end: bool = True,
        fwd_hooks: Iterable[HookPair] = (),
        bwd_hooks: Iterable[HookPair] = (),
        reset_hooks_end: bool = True,
        **kw: Any,
    ) -> Any:
        with self.saes(saes, reset_saes_end=reset_saes_end):
            return self.run_with_hooks(
                *args, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks, reset_hooks_end=reset_hooks_end, **kw
            )

    # ------------------------------------------------------------------ the splice
    @contextmanager
    def _spliced(self) -> Iterator[None]:
        """For one call: the SAEs as bridge hooks (after every other hook on their points) and the SAE
        points' hook functions on the SAEs' own HookPoint modules; all removed at the end."""
        with ExitStack() as stack:
            splices: list[HookPair] = []
            for attached in self._attached.values():
                if attached.is_transcoder:
                    splices.append((attached.hook_in, functools.partial(_capture, attached)))
                splices.append((attached.hook_out, self._splice(attached)))
                for local in SAE_INNER_POINTS:
                    module = getattr(attached.sae, local)
                    handle = module.register_forward_hook(self._inner(attached.points[local]))
                    stack.callback(handle.remove)
            if splices:
                stack.enter_context(self.bridge.hooks(splices))
            yield

    def _fire(self, point: SAEHookPoint, tensor: torch.Tensor) -> torch.Tensor:
        """Run the hook functions on one SAE point, in order; a returned tensor replaces the value."""
        if self._quiet:
            return tensor
        for hook in self._hooks:
            if hook.point is not point:
                continue
            if hook.direction == "bwd":
                if tensor.requires_grad:
                    tensor.register_hook(lambda grad, fn=hook.fn: fn(grad, point))
                continue
            result = hook.fn(tensor, point)
            if result is not None:
                if result.shape != tensor.shape:
                    raise HookShapeError(
                        f"hook on '{point.name}' returned shape {tuple(result.shape)}, expected {tuple(tensor.shape)}"
                    )
                tensor = result
        return tensor

    def _inner(self, point: SAEHookPoint) -> Callable:
        def on_output(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
            return self._fire(point, output)

        return on_output

    def _splice(self, attached: _Attached) -> Callable:
        def splice(tensor: torch.Tensor, hook: Any) -> torch.Tensor:
            sae = attached.sae
            x = attached.captured if attached.is_transcoder else tensor
            attached.captured = None
            if x is None:
                raise SAEAttachError(
                    f"transcoder output '{attached.hook_out}' ran before its input '{attached.hook_in}'"
                )
            out = sae.decode(sae.encode(x))
            if attached.use_error_term:
                # the error is what the SAE misses with no hook edits, so edits to features pass through
                with torch.no_grad():
                    self._quiet = True
                    try:
                        clean = sae.decode(sae.encode(x))
                    finally:
                        self._quiet = False
                    error = self._fire(attached.points["hook_sae_error"], tensor - clean.to(tensor.dtype))
                out = out + error
            out = self._fire(attached.points["hook_sae_output"], out)
            return out.to(tensor.dtype)

        return splice
