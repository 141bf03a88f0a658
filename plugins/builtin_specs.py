"""Ships the built-in `adapter_specs/` directory to the registry."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from bridge_core.plugin_host import hookimpl


@hookimpl
def bridge_core_spec_dirs() -> list[Path]:
    # the package's folder from its import spec: `importlib.resources.files` would import the package
    # and resources' readers (0.7 ms of a first bridge) for the same path, and the registry globs a folder
    spec = find_spec("bridge_core.adapter_specs")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("bridge_core.adapter_specs is not installed: reinstall bridge-core")
    return [Path(next(iter(spec.submodule_search_locations)))]
