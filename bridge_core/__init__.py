"""bridge-core: TransformerLens-style hook points, weight views and caches over any Hugging Face
model, with architectures declared in YAML specs and extended by pluggy plugins."""

from .bridge import ActivationCache, Bridge, HookPoint
from .errors import BindError, BridgeCoreError, HookNameError, InputError, PluginError, SpecError
from .plugin_host import hookimpl
from .registry import Registry, default_registry

__version__ = "0.1.0"

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
