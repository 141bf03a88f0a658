"""Specs: the schema, YAML loading with file:line errors, safe expressions and `extends`."""

from .config import BridgeConfig, normalize_config
from .expressions import ExpressionError, evaluate
from .loader import RawSpec, load_spec, read_raw_spec, validate_spec
from .schema import Spec

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
