"""Loading plugins: the pluggy manager and entry points loaded one at a time (DESIGN §3.4).

pluggy's own `load_setuptools_entrypoints` stops at the first entry point that fails to import;
here each is loaded inside its own `try`, registered as `distribution:name`, and a failure is
recorded (`PluginHost.failures`) for `bridge-core list` while the others load.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import pluggy

from . import hookspecs
from .errors import PluginError
from .kinds import ActivationFunction, CrossAttentionKind, MaskFormat, NormKind, PositionKind, ScoreBiasKind

ENTRY_POINT_GROUP = "bridge_core"
hookimpl = pluggy.HookimplMarker("bridge_core")

T = TypeVar("T")


@dataclass(frozen=True)
class PluginFailure:
    """An entry point that could not be loaded."""

    distribution: str
    name: str
    error: str


@dataclass(frozen=True)
class Kinds:
    """Every kind the loaded plugins registered, by name, with the plugin that registered it."""

    norms: dict[str, NormKind]
    activations: dict[str, ActivationFunction]
    positions: dict[str, PositionKind]
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
        """`(plugin name, result)` for every plugin implementing `hook_name`.

        A plugin that raises is a `PluginError` naming its distribution; with `isolate=True` it is
        recorded in `failures` instead and the other plugins' results are returned (used where one
        broken plugin must not take the built-ins down: kinds and spec directories).
        """
        out = []
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            try:
                result = impl.function(**kwargs)
            except Exception as exc:
                dist, _, name = impl.plugin_name.partition(":")
                if isolate:
                    self.failures.append(PluginFailure(dist, name or dist, f"{hook_name}: {type(exc).__name__}: {exc}"))
                    continue
                raise PluginError(f"{type(exc).__name__}: {exc}", distribution=dist, hook=hook_name) from exc
            if result is not None:
                out.append((impl.plugin_name, result))
        return out

    @property
    def kinds(self) -> Kinds:
        if self._kinds is None:
            origins: dict[tuple[str, str], str] = {}
            self._kinds = Kinds(
                norms=self._collect("bridge_core_norm_kinds", "norm", origins, _named_list),
                activations=self._collect("bridge_core_activation_functions", "activation", origins, dict.items),
                positions=self._collect("bridge_core_position_kinds", "position", origins, _named_list),
                mask_formats=self._collect("bridge_core_mask_formats", "mask format", origins, _named_list),
                score_biases=self._collect("bridge_core_score_bias_kinds", "score bias", origins, _named_list),
                cross_attentions=self._collect(
                    "bridge_core_cross_attention_kinds", "cross attention", origins, _named_list
                ),
                origins=origins,
            )
        return self._kinds

    def _collect(
        self,
        hook_name: str,
        what: str,
        origins: dict[tuple[str, str], str],
        items: Callable[[Any], Iterable[tuple[str, T]]],
    ) -> dict[str, T]:
        found: dict[str, T] = {}
        for plugin, result in self.results(hook_name, isolate=True):
            for name, kind in items(result):
                if name in found:
                    raise PluginError(
                        f"{what} kind '{name}' is registered by both '{origins[(what, name)]}' and '{plugin}'",
                        distribution=plugin.partition(":")[0],
                        hook=hook_name,
                    )
                found[name] = kind
                origins[(what, name)] = plugin
        return found

    def distribution_of(self, plugin_name: str) -> str:
        return plugin_name.split(":", 1)[0]


def _named_list(result: Iterable[Any]) -> Iterable[tuple[str, Any]]:
    return ((kind.name, kind) for kind in result)
