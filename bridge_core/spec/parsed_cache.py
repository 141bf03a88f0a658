"""A built-in spec file as parsed (data and the line of every field), kept as plain JSON beside the
validated form (validated_cache.py), so an unchanged built-in file is not parsed as YAML again.

Parsing the 30-odd built-in YAML files with their line maps is most of `Registry()`'s time; `json.loads`
of the same data is a few percent of it. An entry is keyed by a hash of the file's bytes and path, the
loader's source and PyYAML's version; it is used only when it decodes to exactly what `parse_raw_spec`
makes of those bytes (checked before it is written). A missing, stale or unreadable entry means the YAML
is parsed, with all of the parser's checks and typed errors. Nothing here reads a spec field.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

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


def read_builtin_raw(path: str | Path) -> RawSpec:
    """`read_raw_spec(path)`, from the stored parse when the file is unchanged."""
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
    entry = directory / f"parsed-{Path(file).stem}-{digest[:32]}.json"
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
    return raw


def _store(entry: Path, raw: RawSpec) -> None:
    """Write the parse when it decodes back to exactly the same data (types included) and lines."""
    try:
        text = _encode(raw)
        back = _decode(text, raw.file)
        if not (same_model(back.data, raw.data) and back.lines == raw.lines):
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=entry.parent, suffix=".tmp", delete=False, encoding="utf-8") as out:
            out.write(text)
        os.replace(out.name, entry)
    except (OSError, ValueError, TypeError):
        return
