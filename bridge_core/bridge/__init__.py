"""The bridge: hook points, attention routing, weight views, cache (see `Bridge`)."""

from .bridge import Bridge
from .cache import ActivationCache
from .hook_points import HookPoint

__all__ = ["ActivationCache", "Bridge", "HookPoint"]
