"""A spec file as parsed (data and the line of every field), kept as plain JSON beside the validated
form (validated_cache.py), so an unchanged file in a spec directory (built-in, a plugin's, or on
`BRIDGE_CORE_SPEC_PATH`) is not parsed as YAML again. Only built-in specs keep their validated form.

Parsing the 30-odd built-in YAML files with their line maps is most of `Registry()`'s time; `json.loads`
of the same data is a few percent of it. An entry is keyed by a hash of the file's bytes and path, the
loader's source and PyYAML's version; it is used only when it decodes to exactly what `parse_raw_spec`
makes of those bytes (checked before it is written). A missing, stale or unreadable entry means the YAML
is parsed, with all of the parser's checks and typed errors. Nothing here interprets a spec field.

The built-in directory as a whole is kept as one more entry (`read_builtin_files`), keyed by every
file's path and bytes: one read instead of 33, and each spec's data and lines stay undecoded text until
first used, since a first bridge reads only the `name`/`match`/`override` of the specs it does not bind
(docs/decisions/0027-cold-start.md, "the last milliseconds").
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import loader
from .loader import MAX_SPEC_BYTES, RawSpec, parse_raw_spec, read_raw_spec
from .validated_cache import cache_dir, same_model, source_fingerprint

_loader_hash: str | None = None


def _fingerprint() -> str:
    """What parsing depends on besides the bytes: the loader's source and PyYAML's version."""
    global _loader_hash
    if _loader_hash is None:
        import yaml

        _loader_hash = source_fingerprint(loader.__file__, f"pyyaml {yaml.__version__}")
    return _loader_hash


def _encode(raw: RawSpec) -> str:
    lines = [[list(path), line] for path, (file, line) in raw.lines.items() if file == raw.file]
    if len(lines) != len(raw.lines):
        raise ValueError("a line in another file")
    return json.dumps({"data": raw.data, "lines": lines}, allow_nan=False)


def _decode(text: str, file: str) -> RawSpec:
    stored = json.loads(text)
    lines = {tuple(path): (file, line) for path, line in stored["lines"]}
    return RawSpec(file=file, data=stored["data"], lines=lines)


def read_raw(path: str | Path) -> RawSpec:
    """`read_raw_spec(path)`, from the stored parse when the file (any spec file) is unchanged."""
    directory = cache_dir()
    if directory is None:
        return read_raw_spec(path)
    try:
        content = Path(path).read_bytes()
    except OSError:
        return read_raw_spec(path)  # its typed error
    if len(content) > MAX_SPEC_BYTES:
        return read_raw_spec(path)
    file = str(path)
    digest = hashlib.sha256(f"{_fingerprint()}|{file}|".encode() + content).hexdigest()
    # one entry per file: the path's own hash names its entries, so a new one replaces the old ones
    # (a spec on BRIDGE_CORE_SPEC_PATH is edited often, and every edit would otherwise add one)
    prefix = f"parsed-{Path(file).stem}-{hashlib.sha256(file.encode()).hexdigest()[:8]}-"
    entry = directory / f"{prefix}{digest[:32]}.json"
    try:
        return _decode(entry.read_text(encoding="utf-8"), file)
    except Exception:  # absent or unreadable: parse the YAML (and store it)
        pass
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return read_raw_spec(path)
    raw = parse_raw_spec(text, file)
    _store(entry, raw)
    for old in directory.glob(f"{glob.escape(prefix)}*.json"):
        if old != entry:
            with contextlib.suppress(OSError):  # not ours to remove: a stale entry is only unused
                old.unlink(missing_ok=True)
    return raw


def _checked_encode(raw: RawSpec) -> str | None:
    """`raw` as stored text, or None when it would not decode back to exactly the same data (types
    included) and lines."""
    try:
        text = _encode(raw)
        back = _decode(text, raw.file)
    except (ValueError, TypeError):
        return None
    return text if same_model(back.data, raw.data) and back.lines == raw.lines else None


def _store(entry: Path, raw: RawSpec) -> None:
    """Write the parse when it decodes back to exactly the same data (types included) and lines."""
    text = _checked_encode(raw)
    if text is not None:
        _write(entry, text)


def _write(entry: Path, text: str) -> None:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=entry.parent, suffix=".tmp", delete=False, encoding="utf-8") as out:
            out.write(text)
        os.replace(out.name, entry)
    except (OSError, ValueError, TypeError):
        return


# The top-level fields the registry reads of every spec it registers (`RawSpec.top`).
HEAD_FIELDS = ("name", "match", "override")


class _StoredSpec(RawSpec):
    """A built-in spec from the directory's stored entry: `HEAD_FIELDS` are decoded up front, `data`
    and `lines` from the stored text at their first use (`__getattr__` runs only until they are set;
    the entry's key includes this module's source, so the stored form always matches this code)."""

    def __init__(self, file: str, head: dict[str, Any], body: str) -> None:
        self.file, self._head, self._body = file, head, body

    def __getattr__(self, attribute: str) -> Any:
        if attribute not in ("data", "lines") or ("_body" not in self.__dict__ and attribute not in self.__dict__):
            raise AttributeError(attribute)
        body = self.__dict__.get("_body")
        if body is not None:  # None: another thread decoded it meanwhile
            try:
                raw = _decode(body, self.file)
            except Exception:  # a damaged entry is not trusted: the file's own parse
                raw = read_raw_spec(self.file)
            self.data, self.lines = raw.data, raw.lines
            self.__dict__.pop("_body", None)
        return self.__dict__[attribute]

    def __eq__(self, other: object) -> bool:  # equal to the RawSpec it stands for (either side of ==)
        return RawSpec(self.file, self.data, self.lines) == other

    def top(self, key: str, default: Any = None) -> Any:
        if key in HEAD_FIELDS and "_body" in self.__dict__:
            return self._head.get(key, default)
        return self.data.get(key, default)


def read_builtin_files(paths: Sequence[Path]) -> Iterator[RawSpec]:
    """`read_raw` of each file in order, from the one stored entry for all of them when none
    changed (keyed as a single file's entry is, over every file's path and bytes). Otherwise each file
    is read on its own (a typed error stops the reading there, as before) and the entry is written
    once every file has been read."""
    directory = cache_dir()
    if directory is None:
        yield from map(read_raw_spec, paths)
        return
    try:
        contents = [Path(path).read_bytes() for path in paths]
    except OSError:
        yield from map(read_raw, paths)  # the unreadable file's typed error, in its turn
        return
    digest = hashlib.sha256(f"{_fingerprint()}|{source_fingerprint(__file__, 'builtins')}".encode())
    for path, content in zip(paths, contents, strict=True):
        digest.update(f"|{path}|{len(content)}|".encode())
        digest.update(content)
    entry = directory / f"parsed-builtins-{digest.hexdigest()[:32]}.json"
    try:
        stored = json.loads(entry.read_text(encoding="utf-8"))
        specs = [_StoredSpec(str(path), head, body) for path, (head, body) in zip(paths, stored, strict=True)]
    except Exception:  # absent or unreadable: read each file (and store them all)
        specs = None
    if specs is not None:
        yield from specs
        return
    raws = []
    for path in paths:
        raws.append(read_raw(path))
        yield raws[-1]
    bodies = [_checked_encode(raw) for raw in raws]
    if None not in bodies:
        heads = [{key: raw.data[key] for key in HEAD_FIELDS if key in raw.data} for raw in raws]
        _write(entry, json.dumps(list(zip(heads, bodies, strict=True)), allow_nan=False))
