"""Reading spec files: YAML (safe loader only) with the line of every field, `extends:` merging,
and validation into `Spec` with errors that name file, line and field path.

Called by the registry; `load_spec(path)` is the one-file entry point for tools and tests.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import SpecError
from ..records import record

if TYPE_CHECKING:
    from .schema import Spec

FieldPath = tuple[str | int, ...]


@record
class RawSpec:
    """A spec file as parsed, before inheritance and validation."""

    file: str
    data: dict[str, Any]
    lines: dict[FieldPath, tuple[str, int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.top("name", Path(self.file).stem))

    def top(self, key: str, default: Any = None) -> Any:
        """A top-level field as the file states it (`name`, `match`, `override`: what the registry
        reads of every spec; a stored built-in answers these without decoding the rest)."""
        return self.data.get(key, default)

    def where(self, path: FieldPath) -> tuple[str, int | None]:
        """The file and line that define `path`, or its nearest defined parent."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return self.file, None

    def error(self, message: str, path: FieldPath = ()) -> SpecError:
        file, line = self.where(path)
        return SpecError(message, file=file, line=line, field=format_field(path) or None)


def format_field(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


MAX_SPEC_BYTES = 1 << 20  # 1 MiB: specs are a few KiB; this stops an endless file (a pipe that never ends)


def read_raw_spec(path: str | Path) -> RawSpec:
    """Parse one YAML spec file (a regular file or a pipe, at most 1 MiB), keeping the line of every key."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
                kind = "a character device" if stat.S_ISCHR(mode) else "not a regular file"
                raise SpecError(f"{kind}, not a spec file (a spec is a YAML file of at most 1 MiB)", file=path)
            data = handle.read(MAX_SPEC_BYTES + 1)  # bounded: /dev/zero or an endless pipe stops here
    except IsADirectoryError:
        raise SpecError("is a directory, not a spec file (give the path of a .yaml file)", file=path) from None
    except OSError as exc:
        raise SpecError(f"cannot read spec file ({exc.strerror or exc})", file=path) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"spec file is larger than the 1 MiB limit ({MAX_SPEC_BYTES} bytes) for spec files", file=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec file is not UTF-8 text ({exc.reason})", file=path) from None
    return parse_raw_spec(text, str(path))


# libyaml's safe loader when PyYAML has it (about 100x faster than the pure-Python one), same marks.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAX_NODES = 20_000  # a spec is a few hundred nodes; aliases must not expand beyond this ("billion laughs")


def parse_raw_spec(text: str, file: str) -> RawSpec:
    try:
        loader = _SAFE_LOADER(text)  # safe: plain data only, never Python objects
        try:
            node = loader.get_single_node()
            duplicate = _duplicate_key(loader, node)
            data = loader.construct_document(node) if node is not None and duplicate is None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        if "could not determine a constructor" in str(exc):
            problem = f"{problem} (YAML tags that build Python objects are never allowed)"
        raise SpecError(f"invalid YAML: {problem}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", file=file) from None
    except RecursionError:
        raise SpecError("invalid YAML: nested too deeply", file=file) from None
    except (ValueError, IndexError, KeyError, TypeError) as exc:  # SafeLoader's scalar constructors, e.g. `!!float x`
        raise SpecError(f"invalid YAML value ({type(exc).__name__}: {exc})", file=file) from None
    if duplicate is not None:
        field_path, first, again = duplicate
        raise SpecError(
            f"duplicate key '{field_path[-1]}': on line {first} and again on line {again} "
            "(YAML would silently keep only the last; remove one)",
            file=file,
            line=again,
            field=format_field(field_path),
        )
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise SpecError(f"a spec must be a YAML mapping of fields, this file is {kind}", file=file, line=1)
    lines: dict[FieldPath, tuple[str, int]] = {}
    _record_lines(node, (), file, lines, set(), [0])
    return RawSpec(file=file, data=data, lines=lines)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _duplicate_key(loader: Any, root: yaml.Node | None) -> tuple[FieldPath, int, int] | None:
    """The first key given twice in one mapping, at any depth: (field path, first line, second line).

    Keys compare as the values the safe loader makes of them (`1` and `0x1` are one key). Keys brought in by
    a `<<: *anchor` merge are not compared: overriding them is what a merge is for.
    """
    stack: list[tuple[yaml.Node, FieldPath]] = [(root, ())] if root is not None else []
    seen: set[int] = set()  # an aliased node is checked once (and a recursive alias ends here)
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, index)) for index, item in enumerate(node.value))
        if not isinstance(node, yaml.MappingNode):
            continue
        lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            try:
                key = loader.construct_object(key_node)
                hash(key)
            except Exception:  # an invalid key is reported by the construction that follows
                continue
            line = key_node.start_mark.line + 1
            if key in lines:
                return (*path, key_node.value), lines[key], line
            lines[key] = line
            stack.append((value_node, (*path, key_node.value)))
    return None


def _record_lines(
    node: yaml.Node | None, path: FieldPath, file: str, out: dict, open_nodes: set[int], count: list[int]
) -> None:
    if node is None:
        return
    line = node.start_mark.line + 1
    if id(node) in open_nodes:
        raise SpecError("a YAML alias refers to a node that contains it (a recursive structure)", file=file, line=line)
    count[0] += 1
    if count[0] > _MAX_NODES:
        raise SpecError(f"the YAML expands to more than {_MAX_NODES} nodes (aliases of aliases?)", file=file, line=line)
    if len(path) > 50:
        raise SpecError("nested too deeply (more than 50 levels)", file=file, line=line)
    out.setdefault(path, (file, line))
    open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            out[(*path, key)] = (file, key_node.start_mark.line + 1)
            _record_lines(value_node, (*path, key), file, out, open_nodes, count)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*path, index), file, out, open_nodes, count)
    open_nodes.discard(id(node))


def merge_raw(parent: RawSpec, child: RawSpec) -> RawSpec:
    """`child` extends `parent`: mappings merge key by key, anything else in the child replaces."""
    data = _deep_merge(parent.data, child.data)
    data.pop("extends", None)
    data["override"] = child.data.get("override", False)
    replaced = [p for p in child.lines if not isinstance(_get(child.data, p), dict)]
    lines = {
        p: where for p, where in parent.lines.items() if not any(p[: len(r)] == r and len(p) > len(r) for r in replaced)
    }
    lines.update(child.lines)
    return RawSpec(file=child.file, data=data, lines=lines)


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{key: _deep_merge(base.get(key), value) for key, value in over.items()}}
    return over


def _get(data: Any, path: FieldPath) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def validate_spec(raw: RawSpec) -> Spec:
    """Validate merged spec data, turning pydantic errors into one SpecError with file and line."""
    # pydantic only here: a first bridge on a warm cache reads its spec without it (plain.py)
    from pydantic import ValidationError

    from .schema import Spec

    data = dict(raw.data)
    data.setdefault("name", raw.name)
    try:
        spec = Spec.model_validate(data)
        spec._source = raw
        return spec
    except ValidationError as exc:
        first = exc.errors()[0]
        path: FieldPath = tuple(first["loc"])
        # pydantic reports union members and aliases in the location; keep the real keys.
        path = tuple(p for p in path if not (isinstance(p, str) and ("[" in p or p in {"str", "list"})))
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown field (check its spelling; `bridge-core schema` lists every field)"
        elif first["type"] == "missing":
            message = "required field is missing"
        more = len(exc.errors()) - 1
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise raw.error(message, path) from None


def resolve_extends(raw: RawSpec, lookup: Callable[[str], RawSpec], chain: tuple[str, ...] = ()) -> RawSpec:
    """Apply `extends:` recursively; `lookup(name)` returns the parent's raw spec."""
    parent_name = raw.data.get("extends")
    if parent_name is None:
        return raw
    if not isinstance(parent_name, str):
        raise raw.error("'extends' must be the name of another spec", ("extends",))
    chain = (*chain, raw.name)
    if parent_name in chain:
        cycle = " -> ".join((*chain, parent_name))
        raise raw.error(f"'extends' makes a cycle: {cycle}", ("extends",))
    try:
        parent = lookup(parent_name)
    except LookupError:
        raise raw.error(f"'extends' names '{parent_name}', which is not a registered spec", ("extends",)) from None
    return merge_raw(resolve_extends(parent, lookup, chain), raw)


def load_spec(path: str | Path, lookup: Callable[[str], RawSpec] | None = None) -> Spec:
    """Read, inherit and validate one spec file (without registering it)."""
    raw = read_raw_spec(path)
    if lookup is None:
        from ..registry import default_registry

        lookup = default_registry().raw_spec
    return validate_spec(resolve_extends(raw, lookup))
