"""The bridge: hook points, attention routing, weight views, cache (see `Bridge`)."""

from .bridge import Bridge
from .cache import ActivationCache
from .hook_points import HookPoint
from .reimplement import with_attention_implementation

__all__ = ["ActivationCache", "Bridge", "HookPoint", "with_attention_implementation"]
