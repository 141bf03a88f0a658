"""Loading plugins: the pluggy manager and entry points loaded one at a time (docs/architecture.md#extension-points).

pluggy's own `load_setuptools_entrypoints` stops at the first entry point that fails to import;
here each is loaded inside its own `try`, registered as `distribution:name`, and a failure is
recorded (`PluginHost.failures`) for `bridge-core list` while the others load. Used by the registry;
kinds are collected once, built-ins first: a third-party kind reusing a taken name is that plugin's
failure, never the built-in's. A third-party kind is checked against its contract (`bridge_core.kinds`)
when collected, so `list` reports a misfit; a built-in kind is fetched and checked at its first lookup,
so naming the built-ins (collisions, `list`) never imports transformers (docs/decisions/0031).
"""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .records import record

if TYPE_CHECKING:  # the contracts import torch: loaded when kinds are first collected, not with the plugins
    from .kinds import ActivationFunction, CrossAttentionKind, MaskFormat, Norm, Position, ScoreBiasKind

ENTRY_POINT_GROUP = "bridge_core"
BUILTIN_DISTRIBUTION = "bridge-core"
# Called while one spec is built: a plugin that raises is skipped for that build (recorded, warned)
# unless it shipped the spec, whose build then fails with a PluginError naming it.
SPEC_BUILD_HOOKS = ("bridge_core_adapt_config", "bridge_core_prepare_model")
hookimpl = pluggy.HookimplMarker("bridge_core")


class PluginWarning(UserWarning):
    """A plugin was skipped or lost a conflict; the build goes on without it (see `bridge-core list`)."""


def is_builtin(plugin_name: str) -> bool:
    """Whether a registered plugin name (`distribution:entry`) is one of bridge-core's own."""
    return plugin_name.partition(":")[0] == BUILTIN_DISTRIBUTION


@record(frozen=True)
class PluginFailure:
    """A plugin that failed: its entry point did not import, a hook raised, or a kind does not fit its contract."""

    distribution: str
    name: str
    error: str


class _Unchecked:
    """A built-in kind not looked up yet: where to fetch it (its plugin's answer) and who answered."""

    __slots__ = ("answer", "name", "plugin")

    def __init__(self, answer: object, name: str, plugin: str) -> None:
        self.answer, self.name, self.plugin = answer, name, plugin

    def fetch(self) -> object:
        return self.answer[self.name] if isinstance(self.answer, Mapping) else self.answer


class KindTable(Mapping[str, Any]):
    """One extension point's kinds by name, in collection order. The names are known once collected;
    a built-in kind's value is fetched (the built-in activations import transformers) and checked
    against `contract` at its first lookup, where a misfit is bridge-core's own bug: a PluginError."""

    def __init__(self, hook_name: str, what: str, contract: type) -> None:
        self.hook_name, self.what, self.contract = hook_name, what, contract
        self._kinds: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        kind = self._kinds[name]
        if isinstance(kind, _Unchecked):
            from .kind_checks import contract_problems

            value = kind.fetch()
            problems = contract_problems(value, self.contract)
            if problems:
                dist = kind.plugin.partition(":")[0]
                raise PluginError(
                    f"{self.what} kind '{name}': {'; '.join(problems)}", distribution=dist, hook=self.hook_name
                )
            kind = self._kinds[name] = value
        return kind

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)

    def __repr__(self) -> str:
        return f"KindTable({self.what}: {', '.join(self._kinds)})"


@record(frozen=True)
class Kinds:
    """Every kind the loaded plugins registered, by name, with the plugin that registered it."""

    norms: Mapping[str, Norm]
    activations: Mapping[str, ActivationFunction]
    positions: Mapping[str, Position]
    mask_formats: Mapping[str, MaskFormat]
    score_biases: Mapping[str, ScoreBiasKind]
    cross_attentions: Mapping[str, CrossAttentionKind]
    origins: dict[tuple[str, str], str]


def _group_entry_points(group: str) -> Iterator[tuple[str, importlib.metadata.EntryPoint]]:
    """`(distribution name, entry point)` of `importlib.metadata.entry_points(group=group)`, parsing only
    the distributions whose `entry_points.txt` mentions the group: parsing every distribution's entry
    points (pytest's, console scripts, ...) was most of the ~3 ms the standard call takes. The name is
    read once per distribution (it parses METADATA). The first distribution of a name on `sys.path`
    shadows later ones, as in the standard call (it keys them by the same normalized name)."""
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        key = getattr(dist, "_normalized_name", None)  # from the folder's name; no METADATA parse
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        text = dist.read_text("entry_points.txt")
        if text and group in text:  # a section named `group` contains its name: a safe filter
            entry_points = dist.entry_points.select(group=group)
            if entry_points:
                name = dist.name
                yield from ((name, ep) for ep in entry_points)


class PluginHost:
    """One pluggy PluginManager with the `bridge_core` hook specifications."""

    def __init__(self, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager("bridge_core")
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.spec_owners: dict[str, str] = {}  # spec name -> distribution that shipped it (set by the registry)
        self._kinds: Kinds | None = None
        if load_entry_points:
            self.load_entry_points()

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        for dist, ep in _group_entry_points(group):
            name = f"{dist}:{ep.name}"
            if self.pm.has_plugin(name):
                continue
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=name)
            except Exception as exc:  # a broken plugin must not take the others down
                self.record(dist, ep.name, f"{type(exc).__name__}: {exc}")
        self._kinds = None

    def record(self, distribution: str, name: str, error: str) -> None:
        """Record a plugin's failure once (`bridge-core list` shows it)."""
        failure = PluginFailure(distribution, name, error)
        if failure not in self.failures:
            self.failures.append(failure)

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
        kinds and spec directories). In `SPEC_BUILD_HOOKS`, a plugin that did not ship `spec` is
        isolated too, with a `PluginWarning`: someone else's hook cannot stop a build.
        """
        spec_name = getattr(kwargs.get("spec"), "name", None) if hook_name in SPEC_BUILD_HOOKS else None
        owner = self.spec_owners.get(spec_name, BUILTIN_DISTRIBUTION) if spec_name is not None else None
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
                skip = spec_name is not None and dist != owner
                if isolate or skip:
                    self.record(dist, name or dist, f"{hook_name}: {type(exc).__name__}: {exc}")
                    if skip:
                        warnings.warn(
                            f"plugin '{impl.plugin_name}' raised in {hook_name} while building spec '{spec_name}' "
                            f"and was skipped: {type(exc).__name__}: {exc}",
                            PluginWarning,
                            stacklevel=3,
                        )
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
            from .kinds import ActivationFunction, CrossAttentionKind, MaskFormat, Norm, Position, ScoreBiasKind

            origins: dict[tuple[str, str], str] = {}

            def collect(hook_name: str, what: str, contract: type) -> KindTable:
                return self._collect(KindTable(hook_name, what, contract), origins)

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

    def _collect(self, table: KindTable, origins: dict[tuple[str, str], str]) -> KindTable:
        """Fill `table` with the kinds every plugin returned from its hook.

        A third-party kind that does not fit its contract, or whose name is taken, is recorded as its
        plugin's failure and left out, so it cannot break a forward later; the plugin's other kinds
        and the other plugins still load. Built-ins are collected first, by name only (checked at
        first lookup), then plugins in pluggy's order: the first keeps a name.
        """
        from .kind_checks import contract_problems

        hook_name, what, found = table.hook_name, table.what, table._kinds
        results = sorted(self.results(hook_name, isolate=True), key=lambda pair: not is_builtin(pair[0]))
        for plugin, result in results:
            dist, _, entry = plugin.partition(":")
            builtin = is_builtin(plugin)
            try:
                if isinstance(result, Mapping):  # a built-in's values are fetched at lookup: names only here
                    pairs = [(k, _Unchecked(result, k, plugin) if builtin else result[k]) for k in result]
                else:
                    pairs = [(k.name, _Unchecked(k, k.name, plugin) if builtin else k) for k in result]
            except Exception as exc:  # not a list of kinds (or a kind without a name)
                self.record(dist, entry or dist, f"{hook_name}: {type(exc).__name__}: {exc}")
                continue
            for name, kind in pairs:
                problems = [] if builtin else contract_problems(kind, table.contract)
                if problems:
                    self.record(dist, entry or dist, f"{hook_name}: {what} kind '{name}': {'; '.join(problems)}")
                    continue
                if name in found:
                    taken = f"{what} kind '{name}' is registered by both '{origins[(what, name)]}' and '{plugin}'"
                    if builtin:  # two built-ins: bridge-core's own bug
                        raise PluginError(taken, distribution=dist, hook=hook_name)
                    self.record(dist, entry or dist, f"{hook_name}: {taken}; '{plugin}''s is ignored (rename it)")
                    continue
                found[name] = kind
                origins[(what, name)] = plugin
        return table
