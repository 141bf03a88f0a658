"""A built-in spec's validated form, kept as plain JSON so an unchanged spec skips pydantic validation.

Validating a spec makes pydantic build the schema's validators (tens of ms, most of a first bridge).
A built-in spec validates to the same `Spec` every time until its YAML or the schema changes, so the
first validation writes the validated object as tagged plain data (models by class name, the fields
that were set, values as JSON; never pickle, nothing executed) under a key hashing the merged YAML
data, `schema.py`'s source and pydantic's version. Later processes rebuild the very same `Spec` with
`model_construct` from it. Nothing here reads a spec field: the encoding walks whatever models and
fields the schema has, so new schema fields need no code here (docs/decisions/0027-cold-start.md).

A stored form is written only when it decodes back equal to the validated object (same classes, field
values and set fields); anything it cannot represent exactly (a non-string key, a date) is simply not
stored. A missing, stale or unreadable entry means full validation. The cache lives in
`$BRIDGE_CORE_CACHE_DIR` (empty: off), else `$XDG_CACHE_HOME/bridge-core`, else `~/.cache/bridge-core`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .plain import DICT_TAG, MODEL_TAG, PlainSpec, decode_plain, walk_form

if TYPE_CHECKING:
    from .loader import RawSpec
    from .schema import Spec

# pydantic and the schema are imported only to validate, store or build a `Spec`: a warm hit read as a
# plain tree (plain.py) imports neither. The key hashes schema.py's source by path for the same reason.
_SCHEMA_FILE = Path(__file__).with_name("schema.py")

CACHE_VARIABLE = "BRIDGE_CORE_CACHE_DIR"
_FORMAT = 1  # bump when this encoding or parsed_cache.py's changes (both keys include it)


class _NotPlain(Exception):
    """A value the JSON form cannot hold exactly: the spec is validated every time instead."""


def cache_dir() -> Path | None:
    chosen = os.environ.get(CACHE_VARIABLE)
    if chosen is not None:
        return Path(chosen) if chosen else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bridge-core"


def source_fingerprint(source_file: str, versions: str) -> str:
    """A hash of a module's source and the versions it depends on (what a cached form is valid for)."""
    digest = hashlib.sha256(Path(source_file).read_bytes())
    digest.update(f"|{versions}|format {_FORMAT}".encode())
    return digest.hexdigest()


_schema_hash: str | None = None


def _schema_fingerprint() -> str:
    """What validation depends on besides the data: the schema's source and pydantic's version."""
    global _schema_hash
    if _schema_hash is None:
        _schema_hash = source_fingerprint(str(_SCHEMA_FILE), f"pydantic {_pydantic_version()}")
    return _schema_hash


def _pydantic_version() -> str:
    """The text of pydantic's `version.py` (it states VERSION, and pins pydantic-core), read without
    importing pydantic; found as the import system would find it."""
    import importlib.util

    found = importlib.util.find_spec("pydantic")
    if found is None or not found.submodule_search_locations:
        return "absent"
    return (Path(next(iter(found.submodule_search_locations))) / "version.py").read_text(encoding="utf-8")


def cache_key(name: str, data: dict[str, Any]) -> str | None:
    """The key of a spec's merged data (None: data JSON cannot state exactly, never cached)."""
    try:
        text = json.dumps(data, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return None
    digest = hashlib.sha256(f"{_schema_fingerprint()}|{name}|".encode() + text.encode()).hexdigest()
    return f"{name}-{digest[:32]}"


def encode(value: Any) -> Any:
    """Tagged plain data of a validated value: models by class name with their set fields."""
    from pydantic import BaseModel

    from . import schema

    if isinstance(value, BaseModel):
        if getattr(schema, type(value).__name__, None) is not type(value):
            raise _NotPlain(f"{type(value).__name__} is not a schema class")
        fields = {name: encode(getattr(value, name)) for name in type(value).model_fields}
        return {MODEL_TAG: type(value).__name__, "set": sorted(value.model_fields_set), "fields": fields}
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise _NotPlain("a mapping with a key that is not a string")
        return {DICT_TAG: {key: encode(item) for key, item in value.items()}}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if value is None or type(value) in (str, int, float, bool):
        return value
    raise _NotPlain(f"a {type(value).__name__} value")


def decode(value: Any) -> Any:
    from pydantic import BaseModel

    from . import schema

    def construct(name: str, set_fields: list[str], fields: dict[str, Any]) -> BaseModel:
        model = getattr(schema, name)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise _NotPlain(f"{name} is not a schema class")
        return model.model_construct(_fields_set=set(set_fields), **fields)

    return walk_form(value, construct)


def same_model(a: Any, b: Any) -> bool:
    """Equal as validated objects: classes, field values and set fields, at every depth."""
    from pydantic import BaseModel

    if isinstance(a, BaseModel) or isinstance(b, BaseModel):
        return (
            type(a) is type(b)
            and a.model_fields_set == b.model_fields_set
            and all(same_model(getattr(a, name), getattr(b, name)) for name in type(a).model_fields)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_model(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_model(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _stored(key: str) -> Any:
    """The JSON stored under `key` (raises when absent or unreadable)."""
    directory = cache_dir()
    if directory is None:
        raise FileNotFoundError("the cache is off")
    return json.loads((directory / f"{key}.json").read_text(encoding="utf-8"))


def load(key: str) -> Spec | None:
    """The stored validated spec under `key`, or None (absent, unreadable, or not a spec)."""
    from .schema import Spec

    try:
        spec = decode(_stored(key))
    except Exception:  # any unreadable entry means full validation; the entry is rewritten then
        return None
    return spec if type(spec) is Spec else None


def load_form(form: Any, source: RawSpec) -> Spec:
    """The `Spec` of a stored form read earlier as a tree (with `source` attached), or, should that form
    not rebuild a `Spec` (a damaged entry), validation's of `source`."""
    from .loader import validate_spec
    from .schema import Spec

    try:
        spec = decode(form)
    except Exception:
        spec = None
    if type(spec) is not Spec:
        return validate_spec(source)
    spec._source = source
    return spec


def stored_tree(merged: RawSpec) -> PlainSpec | None:
    """The plain tree of a built-in spec's stored validated form (plain.py), or None: not stored for
    exactly this merged data and schema, or unreadable (the caller then validates through `validated`)."""
    key = cache_key(merged.name, merged.data)
    if key is None:
        return None
    try:
        return decode_plain(_stored(key), merged)
    except Exception:  # any unreadable entry means full validation; the entry is rewritten then
        return None


def store(key: str, spec: Spec) -> None:
    """Write `spec`'s plain form under `key` when it decodes back to the same object; failures are silent
    (a read-only home only costs the validation)."""
    directory = cache_dir()
    if directory is None:
        return
    try:
        text = json.dumps(encode(spec), allow_nan=False)
        if not same_model(decode(json.loads(text)), spec):
            return
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False, encoding="utf-8") as out:
            out.write(text)
        os.replace(out.name, directory / f"{key}.json")  # readers see the old entry or the whole new one
    except (_NotPlain, OSError, ValueError, TypeError):
        return


def validated(name: str, data: dict[str, Any], validate: Callable[[], Spec]) -> tuple[Spec, bool]:
    """The validated spec of merged `data`: from the cache when stored for exactly this data and schema,
    else `validate()` (stored for next time). The flag says whether it came from the cache; the caller
    attaches the source (file and lines) either way."""
    key = cache_key(name, data)
    if key is not None:
        spec = load(key)
        if spec is not None:
            return spec, True
    spec = validate()
    if key is not None:
        store(key, spec)
    return spec, False
