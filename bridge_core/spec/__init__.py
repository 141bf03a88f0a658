"""Specs: the schema, YAML loading with file:line errors, safe expressions and `extends`.

The names are imported on first use: the schema (and so pydantic) stays out of a process that reads
its spec as a plain tree (plain.py, docs/decisions/0027-cold-start.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BridgeConfig": "config",
    "normalize_config": "config",
    "ExpressionError": "expressions",
    "evaluate": "expressions",
    "RawSpec": "loader",
    "load_spec": "loader",
    "read_raw_spec": "loader",
    "validate_spec": "loader",
    "Spec": "schema",
}

__all__ = [
    "BridgeConfig",
    "ExpressionError",
    "RawSpec",
    "Spec",
    "evaluate",
    "load_spec",
    "normalize_config",
    "read_raw_spec",
    "validate_spec",
]

if TYPE_CHECKING:
    from .config import BridgeConfig, normalize_config
    from .expressions import ExpressionError, evaluate
    from .loader import RawSpec, load_spec, read_raw_spec, validate_spec
    from .schema import Spec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bridge_core.spec' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
