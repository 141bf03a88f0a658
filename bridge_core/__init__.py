"""bridge-core: TransformerLens-style hook points, weight views and caches over any Hugging Face
model, with architectures declared in YAML specs and extended by pluggy plugins.

The public names are imported on first use, so `import bridge_core` (and the pytest plugin that
pytest loads at every start) does not import torch and transformers until they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ActivationCache": "bridge_core.bridge",
    "Bridge": "bridge_core.bridge",
    "HookPoint": "bridge_core.bridge",
    "BindError": "bridge_core.errors",
    "BridgeCoreError": "bridge_core.errors",
    "HookNameError": "bridge_core.errors",
    "InputError": "bridge_core.errors",
    "PluginError": "bridge_core.errors",
    "SpecError": "bridge_core.errors",
    "hookimpl": "bridge_core.plugin_host",
    "Registry": "bridge_core.registry",
    "default_registry": "bridge_core.registry",
}

__all__ = [
    "ActivationCache",
    "BindError",
    "Bridge",
    "BridgeCoreError",
    "HookNameError",
    "HookPoint",
    "InputError",
    "PluginError",
    "Registry",
    "SpecError",
    "__version__",
    "default_registry",
    "hookimpl",
]

if TYPE_CHECKING:
    from .bridge import ActivationCache, Bridge, HookPoint
    from .errors import BindError, BridgeCoreError, HookNameError, InputError, PluginError, SpecError
    from .plugin_host import hookimpl
    from .registry import Registry, default_registry


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bridge_core' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
