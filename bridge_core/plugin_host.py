"""Loading plugins: the pluggy manager and entry points loaded one at a time (docs/architecture.md#extension-points).

pluggy's own `load_setuptools_entrypoints` stops at the first entry point that fails to import;
here each is loaded inside its own `try`, registered as `distribution:name`, and a failure is
recorded (`PluginHost.failures`) for `bridge-core list` while the others load. Used by the registry;
kinds are collected once, checked against their contracts (`bridge_core.kinds`).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .kind_checks import contract_problems
from .kinds import (
    ActivationFunction,
    CrossAttentionKind,
    MaskFormat,
    Norm,
    Position,
    ScoreBiasKind,
)

ENTRY_POINT_GROUP = "bridge_core"
hookimpl = pluggy.HookimplMarker("bridge_core")


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that failed: its entry point did not import, a hook raised, or a kind does not fit its contract."""

    distribution: str
    name: str
    error: str


@dataclass(frozen=True)
class Kinds:
    """Every kind the loaded plugins registered, by name, with the plugin that registered it."""

    norms: dict[str, Norm]
    activations: dict[str, ActivationFunction]
    positions: dict[str, Position]
    mask_formats: dict[str, MaskFormat]
    score_biases: dict[str, ScoreBiasKind]
    cross_attentions: dict[str, CrossAttentionKind]
    origins: dict[tuple[str, str], str]


class PluginHost:
    """One pluggy PluginManager with the `bridge_core` hook specifications."""

    def __init__(self, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager("bridge_core")
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self._kinds: Kinds | None = None
        if load_entry_points:
            self.load_entry_points()

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        for ep in importlib.metadata.entry_points(group=group):
            dist = ep.dist.name if ep.dist is not None else "<unknown distribution>"
            name = f"{dist}:{ep.name}"
            if self.pm.has_plugin(name):
                continue
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=name)
            except Exception as exc:  # a broken plugin must not take the others down
                self.failures.append(PluginFailure(dist, ep.name, f"{type(exc).__name__}: {exc}"))
        self._kinds = None

    def register(self, plugin: object, name: str) -> None:
        """Register an in-process plugin (tests, notebooks) as if it came from an entry point."""
        self.pm.register(plugin, name=name)
        self._kinds = None

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._kinds = None

    def results(self, hook_name: str, *, isolate: bool = False, **kwargs: Any) -> list[tuple[str, Any]]:
        """`(plugin name, result)` for every plugin implementing `hook_name`, in pluggy's call order.

        Each plugin is called through pluggy (`subset_hook_caller` keeping that plugin and every
        wrapper), so `tryfirst`/`trylast`, wrappers and `firstresult` behave as pluggy defines while
        a failure is still attributed to one plugin. A plugin that raises is a `PluginError` naming
        its distribution; with `isolate=True` it is recorded in `failures` instead and the other
        plugins' results are returned (where one broken plugin must not take the built-ins down:
        kinds and spec directories).
        """
        caller = getattr(self.pm.hook, hook_name)
        first_only = bool(caller.spec is not None and caller.spec.opts.get("firstresult"))
        # get_hookimpls() lists implementations in reverse call order, wrappers last.
        answering = [impl for impl in reversed(caller.get_hookimpls()) if not (impl.wrapper or impl.hookwrapper)]
        out: list[tuple[str, Any]] = []
        for impl in answering:
            others = [other.plugin for other in answering if other is not impl]
            try:
                result = self.pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)
            except Exception as exc:
                dist, _, name = impl.plugin_name.partition(":")
                if isolate:
                    self.failures.append(PluginFailure(dist, name or dist, f"{hook_name}: {type(exc).__name__}: {exc}"))
                    continue
                raise PluginError(f"{type(exc).__name__}: {exc}", distribution=dist, hook=hook_name) from exc
            if first_only:  # pluggy's firstresult: the first non-None answer ends the call
                if result is not None:
                    return [(impl.plugin_name, result)]
                continue
            out.extend((impl.plugin_name, value) for value in result)  # pluggy drops None results
        return out

    @property
    def kinds(self) -> Kinds:
        if self._kinds is None:
            origins: dict[tuple[str, str], str] = {}

            def collect(hook_name: str, what: str, contract: type) -> dict[str, Any]:
                return self._collect(hook_name, what, contract, origins)

            self._kinds = Kinds(
                norms=collect("bridge_core_norm_kinds", "norm", Norm),
                activations=collect("bridge_core_activation_functions", "activation", ActivationFunction),
                positions=collect("bridge_core_position_kinds", "position", Position),
                mask_formats=collect("bridge_core_mask_formats", "mask format", MaskFormat),
                score_biases=collect("bridge_core_score_bias_kinds", "score bias", ScoreBiasKind),
                cross_attentions=collect("bridge_core_cross_attention_kinds", "cross attention", CrossAttentionKind),
                origins=origins,
            )
        return self._kinds

    def _collect(
        self, hook_name: str, what: str, contract: type, origins: dict[tuple[str, str], str]
    ) -> dict[str, Any]:
        """The kinds every plugin returned from `hook_name`, each checked against `contract` once.

        A kind that does not fit is recorded as its plugin's failure and left out, so it cannot
        break a forward later; the plugin's other kinds and the other plugins still load.
        """
        found: dict[str, Any] = {}
        for plugin, result in self.results(hook_name, isolate=True):
            dist, _, entry = plugin.partition(":")
            try:
                pairs = list(result.items() if isinstance(result, Mapping) else ((k.name, k) for k in result))
            except Exception as exc:  # not a list of kinds (or a kind without a name)
                self.failures.append(PluginFailure(dist, entry or dist, f"{hook_name}: {type(exc).__name__}: {exc}"))
                continue
            for name, kind in pairs:
                problems = contract_problems(kind, contract)
                if problems:
                    error = f"{hook_name}: {what} kind '{name}': {'; '.join(problems)}"
                    self.failures.append(PluginFailure(dist, entry or dist, error))
                    continue
                if name in found:
                    raise PluginError(
                        f"{what} kind '{name}' is registered by both '{origins[(what, name)]}' and '{plugin}'",
                        distribution=dist,
                        hook=hook_name,
                    )
                found[name] = kind
                origins[(what, name)] = plugin
        return found
