"""The one registry of architecture specs, and the lookup of a spec for an HF model.

Sources, in the order they are read: plugins' spec directories (the built-in `adapter_specs/` come
this way, through the package's own entry point), `BRIDGE_CORE_SPEC_PATH` directories, and
`registry.add_spec(path)`. Every spec remembers where it came from (`bridge-core list`). A third-party
plugin's broken or conflicting spec is recorded as that plugin's failure and left out; it never takes
the others down, and it takes a built-in's model only with `override: true` (docs/tutorials/write-a-plugin.md).
"""

from __future__ import annotations

import os
import warnings
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BridgeCoreError, SpecError, SpecNotFoundError, close_matches
from .plugin_host import PluginHost, PluginWarning, is_builtin
from .records import record
from .spec import parsed_cache, validated_cache
from .spec.kind_fields import kind_references, kinds_plugins, unknown_kind
from .spec.loader import RawSpec, read_raw_spec, resolve_extends, validate_spec
from .spec.plain import PlainSpec

if TYPE_CHECKING:
    from .spec.schema import Spec

SPEC_PATH_VARIABLE = "BRIDGE_CORE_SPEC_PATH"
# `extends:` inherits everything but these: a spec claims only the models it names itself.
NOT_INHERITED = ("name", "match", "override", "description")


@record
class SpecEntry:
    """A registered spec file and where it came from (`builtin`, `path:DIR`, `add_spec`, a distribution)."""

    name: str
    raw: RawSpec
    origin: str


class Registry:
    """Specs by name, their claims on HF architectures and model types, and the plugin kinds."""

    def __init__(self, plugins: PluginHost | None = None, *, use_spec_path: bool = True) -> None:
        self.plugins = plugins if plugins is not None else PluginHost()
        self._entries: dict[str, SpecEntry] = {}
        self._specs: dict[str, Spec] = {}
        self._trees: dict[str, PlainSpec] = {}  # built-in specs read for binding from a warm cache
        self._claims: dict[tuple[str, str], str] | None = None
        self._unusable: set[str] = set()  # third-party specs found not to validate: they claim nothing
        self._warned: set[str] = set()
        found = self.plugins.results("bridge_core_spec_dirs", isolate=True)
        for plugin_name, dirs in sorted(found, key=lambda pair: not is_builtin(pair[0])):  # built-ins first
            origin = "builtin" if is_builtin(plugin_name) else plugin_name.split(":", 1)[0]
            for directory in dirs:
                self._add_directory(Path(directory), origin)
        if use_spec_path:
            for directory in filter(None, os.environ.get(SPEC_PATH_VARIABLE, "").split(os.pathsep)):
                self._add_directory(Path(directory), f"path:{directory}")

    # ----------------------------------------------------------------- adding
    def _add_directory(self, directory: Path, origin: str) -> None:
        if not directory.is_dir():
            self._fail(origin, SpecError(f"spec directory does not exist (from {origin})", file=directory))
            return
        paths = sorted(directory.glob("*.yaml"))
        if origin == "builtin":  # unchanged built-in files come from their stored parse (spec/parsed_cache.py)
            for raw in parsed_cache.read_builtin_files(paths):
                self._add_raw(raw, origin)  # a built-in's error is raised (`_fail`)
            return
        for path in paths:
            try:
                self._add_raw(parsed_cache.read_raw(path), origin)  # plugins' files keep their parse too
            except BridgeCoreError as exc:
                self._fail(origin, exc, path.name)

    def _fail(self, origin: str, error: BridgeCoreError, item: str = "spec_dirs") -> None:
        """A third-party plugin's spec problem is its failure (the item is left out); anyone else's is raised."""
        if not _third_party(origin):
            raise error
        self.plugins.record(origin, item, f"{type(error).__name__}: {error}")

    def _add_raw(self, raw: RawSpec, origin: str) -> SpecEntry:
        name = raw.name
        if not isinstance(name, str) or not name:
            raise raw.error("'name' must be a non-empty string", ("name",))
        existing = self._entries.get(name)
        # a plugin replaces a name it does not own only with `override: true`, and never a name shipped
        # by another plugin (that would depend on the order plugins load in)
        if existing is not None and _third_party(origin) and _third_party(existing.origin):
            raise raw.error(f"a spec named '{name}' is already registered by plugin '{existing.origin}'", ("name",))
        if existing is not None and not raw.top("override", False):
            raise raw.error(
                f"a spec named '{name}' is already registered from {existing.raw.file} ({existing.origin}); "
                "rename this one or set `override: true`",
                ("name",),
            )
        entry = SpecEntry(name=name, raw=raw, origin=origin)
        self._entries[name] = entry
        if _third_party(origin):
            self.plugins.spec_owners[name] = origin
        else:
            self.plugins.spec_owners.pop(name, None)
        self._specs.clear()
        self._trees.clear()
        self._unusable.discard(name)
        self._claims = None
        return entry

    def add_spec(self, path: str | Path) -> Spec:
        """Register one spec file and return it validated; conflicts are `SpecError`s naming both sources."""
        entry = self._add_raw(read_raw_spec(path), "add_spec")
        try:
            spec = self.get(entry.name)
            self._index_claims()
        except Exception:
            del self._entries[entry.name]
            self._specs.pop(entry.name, None)
            self._trees.pop(entry.name, None)
            self._claims = None
            raise
        return spec

    # ----------------------------------------------------------------- reading
    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> SpecEntry:
        try:
            return self._entries[name]
        except KeyError:
            hint = close_matches(name, self._entries)
            more = f" Did you mean: {', '.join(hint)}?" if hint else ""
            raise SpecNotFoundError(
                f"No spec named '{name}'. Registered: {', '.join(self.names()) or 'none'}.{more}"
            ) from None

    def raw_spec(self, name: str) -> RawSpec:
        """The raw (unmerged) spec of `name`, without its non-inherited fields (for `extends`)."""
        raw = self.entry(name).raw
        data = {k: v for k, v in raw.data.items() if k not in NOT_INHERITED or k == "name"}
        return RawSpec(file=raw.file, data=data, lines=raw.lines)

    def get(self, name: str) -> Spec:
        """The validated spec `name` (inheritance applied, kinds checked).

        A built-in spec's kinds are checked by binding only (which refuses an unknown kind with the
        same `UnknownKindError`): built-in specs name built-in kinds, and collecting kinds imports
        torch and transformers, which `bridge-core list` must not pay for (tests/perf/test_cli_imports.py).
        """
        if name not in self._specs and name in self._trees:  # the Spec of the tree the binder read
            self._specs[name] = self._trees[name].to_spec()
        if name not in self._specs:
            entry = self.entry(name)
            merged = resolve_extends(entry.raw, self.raw_spec)
            if entry.origin == "builtin":  # an unchanged built-in spec skips pydantic (spec/validated_cache.py)
                spec, cached = validated_cache.validated(merged.name, merged.data, lambda: validate_spec(merged))
                if cached:
                    spec._source = merged
            else:
                spec = validate_spec(merged)
                self._check_kinds(spec, merged)
            self._specs[name] = spec
        return self._specs[name]

    def for_binding(self, name: str) -> Spec | PlainSpec:
        """The spec `name` as the binder reads it: a built-in spec stored for exactly its data and schema
        comes as a plain tree (no pydantic import: spec/plain.py); any other, as `get` gives it. Public
        surfaces hand out `get`'s `Spec` (`plain.public_spec`)."""
        if name in self._specs:
            return self._specs[name]
        if name not in self._trees and self.entry(name).origin == "builtin":
            tree = validated_cache.stored_tree(resolve_extends(self._entries[name].raw, self.raw_spec))
            if tree is not None:
                self._trees[name] = tree
        return self._trees.get(name) or self.get(name)

    def usable(self, name: str) -> Spec | None:
        """The validated spec `name`, or None (recorded as its plugin's failure) when a third-party
        plugin's spec does not validate; other specs raise as `get` does."""
        try:
            return self.get(name)
        except BridgeCoreError as exc:
            entry = self.entry(name)
            self._fail(entry.origin, exc, Path(entry.raw.file).name)
            return None

    # ----------------------------------------------------------------- lookup
    def _claim_fields(self, name: str) -> tuple[list[str], list[str], bool] | None:
        """`name`'s claimed architectures and model types and its `override`, as its own file states them.

        `match` and `override` are never inherited, so a well-formed raw `match:` is the claim; indexing
        from it validates no spec (a first bridge validates only the spec it uses). Anything the raw
        reading does not recognise goes through full validation instead, so a malformed `match` still
        gets its typed error. None: a third-party plugin's spec that does not validate (its failure).
        """
        raw = self._entries[name].raw
        match, override = raw.top("match", {}), raw.top("override", False)
        if isinstance(match, dict) and set(match) <= {"architectures", "model_type"} and type(override) is bool:
            architectures, model_type = match.get("architectures", []), match.get("model_type", [])
            if _strings(architectures) and _strings(model_type):
                return list(architectures), list(model_type), override
        spec = self.usable(name)
        if spec is None:
            self._unusable.add(name)
            return None
        return spec.match.architectures, spec.match.model_type, spec.override

    def _plugin_loses(self, name: str, other: str, key: tuple[str, str], overrides: dict[str, bool]) -> str | None:
        """Which of two specs claiming `key` loses, when a third-party plugin's spec is one of them:
        the plugin's wins only with `override: true` against a spec without it. None: neither is a plugin's."""
        mine, theirs = self._entries[name], self._entries[other]
        if not (_third_party(mine.origin) or _third_party(theirs.origin)):
            return None
        if _third_party(mine.origin) and overrides[name] and not overrides[other]:
            return other  # an explicit override: no warning
        if _third_party(theirs.origin) and overrides[other] and not overrides[name]:
            return name
        # no override (or both): the spec that is not a plugin's wins, else the one registered first
        loser, winner = (name, other) if _third_party(mine.origin) else (other, name)
        loser_entry = self._entries[loser]
        message = (
            f"spec '{loser}' ({loser_entry.origin}) claims {key[0]} '{key[1]}', which spec '{winner}' "
            f"({self._entries[winner].origin}) keeps; a plugin's spec takes a claim only with `override: true`"
        )
        if message not in self._warned:  # once per registry, though claims are indexed again after a failure
            self._warned.add(message)
            warnings.warn(message, PluginWarning, stacklevel=4)
        if _third_party(loser_entry.origin):
            self.plugins.record(loser_entry.origin, Path(loser_entry.raw.file).name, f"match: {message}")
        return loser

    def claims(self) -> dict[tuple[str, str], str]:
        """Which spec holds each claim, `("architectures" or "model_type", value) -> spec name`, after
        conflicts are settled. Every spec is validated here: a plugin's spec that does not validate, or
        that loses a claim, is recorded as its plugin's failure (`bridge-core list`)."""
        for name in list(self._entries):
            if name not in self._unusable and self.usable(name) is None:
                self._unusable.add(name)
                self._claims = None
        return dict(self._index_claims())

    def _index_claims(self) -> dict[tuple[str, str], str]:
        if self._claims is None:
            claims: dict[tuple[str, str], str] = {}
            overrides: dict[str, bool] = {}
            for name in list(self._entries):  # registration order: built-ins first
                fields = None if name in self._unusable else self._claim_fields(name)
                if fields is None:
                    continue
                architectures, model_types, overrides[name] = fields
                keys = [("architectures", a) for a in architectures] + [("model_type", m) for m in model_types]
                for key in keys:
                    other = claims.get(key)
                    if other is not None and other != name:
                        loser = self._plugin_loses(name, other, key, overrides)
                        if loser is not None:
                            claims[key] = other if loser == name else name
                            continue
                        mine, theirs = overrides[name], overrides[other]
                        if mine == theirs:
                            raise SpecError(
                                f"claims {key[0]} '{key[1]}', already claimed by spec '{other}' "
                                f"({self._entries[other].raw.file}); set `override: true` on the one that "
                                "should win",
                                file=self._entries[name].raw.file,
                                field="match",
                            )
                        if not mine:
                            continue
                    claims[key] = name
            self._claims = claims
        return self._claims

    def _claimed(self, key: tuple[str, str], binding: bool = False) -> Spec | PlainSpec | None:
        """The validated spec holding `key` (`binding`: as `for_binding` gives a built-in), or None. A
        third-party spec that turns out not to validate is its plugin's failure and loses its claims, as
        if `claims()` had left it out."""
        while True:
            name = self._index_claims().get(key)
            if name is None:
                return None
            if binding and self._entries[name].origin == "builtin":
                return self.for_binding(name)
            spec = self.usable(name)
            if spec is not None:
                return spec
            self._unusable.add(name)
            self._claims = None

    def resolve(self, hf_config: Any) -> Spec:
        """The spec for an HF config: its `architectures` first, then its `model_type`."""
        return self._resolve(hf_config)

    def _resolve(self, hf_config: Any, binding: bool = False) -> Spec | PlainSpec:
        architectures = list(getattr(hf_config, "architectures", None) or [])
        model_type = getattr(hf_config, "model_type", None)
        keys = [("architectures", arch) for arch in architectures]
        keys += [("model_type", model_type)] if model_type else []
        for key in keys:
            spec = self._claimed(key, binding)
            if spec is not None:
                return spec
        claims = self._index_claims()
        known_types = sorted({v for k, v in claims if k == "model_type"})
        failed = sorted({f.distribution for f in self.plugins.failures})
        also = f" Plugins that failed (`bridge-core list`): {', '.join(failed)}." if failed else ""
        raise SpecNotFoundError(
            f"No registered spec matches this model: tried architectures {architectures or '[]'} and "
            f"model_type {model_type!r}. Specs claim model types: {', '.join(known_types) or 'none'}. "
            f"Write a spec (`bridge-core scaffold`) and add it with `registry.add_spec(path)` or "
            f"{SPEC_PATH_VARIABLE}.{also}"
        )

    def resolve_for_model(self, model: Any) -> Spec:
        """The spec for a model object: its own class name first (a model built from a config has
        no `architectures`), then what its config says."""
        return self._for_model(model, False)

    def for_binding_model(self, model: Any) -> Spec | PlainSpec:
        """`resolve_for_model`, with a built-in spec as `for_binding` gives it (a plain tree on a warm cache)."""
        return self._for_model(model, True)

    def _for_model(self, model: Any, binding: bool) -> Spec | PlainSpec:
        spec = self._claimed(("architectures", type(model).__name__), binding)
        return spec if spec is not None else self._resolve(model.config, binding)

    def origin(self, name: str) -> str:
        return self.entry(name).origin

    def file(self, name: str) -> str:
        return self.entry(name).raw.file

    # ----------------------------------------------------------------- kinds
    def _check_kinds(self, spec: Spec, raw: RawSpec) -> None:
        """Every kind the spec names is registered by some plugin (the binder's own list of kind fields)."""
        kinds = self.plugins.kinds
        for (table, what), name, field in kind_references(spec):
            found = getattr(kinds, table)
            if name not in found:
                raise unknown_kind(spec, raw.file, found, name, what, field, ", ".join(kinds_plugins(kinds)) or "none")


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _third_party(origin: str) -> bool:
    """Whether a spec came from a third-party plugin's spec directory (not built-in, the spec path or add_spec)."""
    return origin not in ("builtin", "add_spec") and not origin.startswith("path:")


@cache
def default_registry() -> Registry:
    """The process-wide registry (built on first use from entry points and the spec path)."""
    return Registry()
