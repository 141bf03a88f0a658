"""A built-in spec's validated form as a plain attribute tree, for the binder, without importing pydantic.

A warm cache (validated_cache.py) holds every field of a built-in spec as validated, defaults included.
Importing pydantic and building `pydantic.main` is most of a first bridge's cost, so the registry hands
the binder this tree instead: `PlainNode`s with the same field names and values as the schema's models
(nested nodes, lists, dicts, JSON scalars), read-only. `PlainSpec` adds what the binder asks of a `Spec`
(`where` for error locations) and turns into the pydantic `Spec`, equal to validation's, on first
`to_spec()` (public surfaces: `Bridge.spec`, `Registry.get`, plugin hooks). Nothing here validates: a
tree is made only from a stored form that validation produced (docs/decisions/0027-cold-start.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loader import RawSpec
    from .schema import Spec

# The tags of validated_cache's encoding: a schema model (class name, set fields, fields), a plain mapping.
MODEL_TAG, DICT_TAG = "$model", "$dict"


class PlainNode:
    """One schema model's fields as attributes (`schema_class` names the model it stands for)."""

    __slots__ = ("__dict__", "schema_class")

    def __init__(self, schema_class: str, fields: dict[str, Any]) -> None:
        object.__setattr__(self, "schema_class", schema_class)
        self.__dict__.update(fields)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a spec is read-only ({self.schema_class}.{name})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PlainNode):
            return NotImplemented
        return self.schema_class == other.schema_class and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # equal by value, like the lists and dicts it holds

    def __repr__(self) -> str:
        return f"{self.schema_class}(plain, {', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


class PlainSpec(PlainNode):
    """The top-level tree: a `Spec`'s fields, its source (file and lines) and its stored form."""

    __slots__ = ("_form", "_source", "_spec")

    def __init__(self, fields: dict[str, Any], form: dict[str, Any], source: RawSpec | None) -> None:
        super().__init__("Spec", fields)
        object.__setattr__(self, "_form", form)
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_spec", None)

    def where(self, field: str) -> tuple[str | None, int | None]:
        """The file and line that define a dotted field, as `Spec.where` gives them."""
        if self._source is None:
            return None, None
        path = tuple(int(p) if p.isdigit() else p for p in field.split("."))
        return self._source.where(path)

    def to_spec(self) -> Spec:
        """The pydantic `Spec` this tree stands for (built once, from the same stored form)."""
        if self._spec is None:
            from .validated_cache import load_form

            spec = load_form(self._form, self._source)
            object.__setattr__(self, "_spec", spec)
        return self._spec


def decode_plain(form: dict[str, Any], source: RawSpec | None) -> PlainSpec:
    """The tree of a stored validated form (validated_cache's tagged JSON of a `Spec`)."""
    if not isinstance(form, dict) or form.get(MODEL_TAG) != "Spec":
        raise ValueError("not a stored Spec")
    return PlainSpec({name: walk_form(item, _node) for name, item in form["fields"].items()}, form, source)


def _node(schema_class: str, set_fields: list[str], fields: dict[str, Any]) -> PlainNode:
    return PlainNode(schema_class, fields)  # a tree is read, never re-validated: which fields were set is moot


def walk_form(value: Any, model: Callable[[str, list[str], dict[str, Any]], Any]) -> Any:
    """A stored form's value, each tagged model made by `model(class name, set fields, decoded fields)`:
    the one reader of the encoding, for the plain tree here and for pydantic's `Spec` in validated_cache."""
    if isinstance(value, list):
        return [walk_form(item, model) for item in value]
    if not isinstance(value, dict):
        return value
    if DICT_TAG in value:
        return {key: walk_form(item, model) for key, item in value[DICT_TAG].items()}
    fields = {name: walk_form(item, model) for name, item in value["fields"].items()}
    return model(value[MODEL_TAG], value["set"], fields)


def public_spec(spec: Spec | PlainSpec) -> Spec:
    """What public surfaces hand out: the pydantic `Spec` (a tree's built on first use)."""
    return spec.to_spec() if isinstance(spec, PlainSpec) else spec


def is_spec(value: Any) -> bool:
    """Whether `value` is a pydantic `Spec`, without importing pydantic (no Spec exists before its module)."""
    schema = sys.modules.get("bridge_core.spec.schema")
    return schema is not None and isinstance(value, schema.Spec)
