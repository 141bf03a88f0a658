"""Ships the built-in `adapter_specs/` directory to the registry."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from bridge_core.plugin_host import hookimpl


@hookimpl
def bridge_core_spec_dirs() -> list[Path]:
    return [Path(str(files("bridge_core.adapter_specs")))]
