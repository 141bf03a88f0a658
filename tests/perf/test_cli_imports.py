"""`bridge-core --help` and `bridge-core list` must not import torch, transformers or the conformance
checks: the property behind both answering in well under a second, checked on `sys.modules` in a
fresh interpreter. `list` is checked with bridge-core's own plugins only and with the example ALiBi plugin
(installed in the dev environment and CI): a third-party plugin's kinds are checked against the built-in
ones when `list` runs, which needs the built-in kinds' names, never transformers' activation modules."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "bridge_core.conformance")


# Distributions narrowed to bridge-core's own, as in an install with no third-party plugin (the plugin
# host reads entry points distribution by distribution).
BUILTIN_PLUGINS_ONLY = (
    "import importlib.metadata as md\n"
    "_all = md.distributions\n"
    "md.distributions = lambda **kw: (d for d in _all(**kw) if d.name == 'bridge-core')\n"
)


def _modules_after(code: str, preamble: str = "", heavy: tuple[str, ...] = HEAVY) -> set[str]:
    """The `heavy` modules a fresh interpreter holds after running `code` (its stdout is discarded)."""
    probe = (
        preamble + "import contextlib, io, json, sys\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    {code}\n"
        f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_help_parses_without_importing_torch_transformers_or_conformance():
    """rich (about 45 ms) is imported by the commands that print: seen failing while cli.py and
    inspection.py imported it at the top."""
    loaded = _modules_after(
        "from bridge_core.cli import main\n    try:\n        main(['--help'])\n    except SystemExit:\n        pass",
        heavy=(*HEAVY, "rich"),
    )
    assert loaded == set()


def test_version_is_read_when_asked_for():
    done = subprocess.run([sys.executable, "-m", "bridge_core", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"bridge-core {importlib.metadata.version('bridge-core')}"


def test_list_with_builtin_plugins_imports_neither_torch_nor_transformers():
    code = "from bridge_core.cli import main\n    assert main(['list', '--json']) == 0"
    assert _modules_after(code, BUILTIN_PLUGINS_ONLY) == set()


def test_list_with_a_third_party_plugin_imports_neither_torch_nor_transformers():
    """Seen failing while the built-in activation hook imported transformers to name its kinds (2 s of `list`)."""
    code = (
        "from bridge_core.cli import main\n"
        "    from bridge_core.registry import default_registry\n"
        "    assert main(['list', '--json']) == 0\n"
        "    host = default_registry().plugins\n"
        "    assert host.pm.has_plugin('bridge-core-alibi:alibi') and not host.failures\n"
        "    assert 'alibi' in host.kinds.score_biases and 'gelu_new' in host.kinds.activations"
    )
    assert _modules_after(code) == set()


def test_loading_the_builtin_plugins_and_their_specs_imports_no_torch():
    code = "from bridge_core.registry import Registry\n    assert 'gpt2' in Registry().claims().values()"
    assert _modules_after(code, BUILTIN_PLUGINS_ONLY) == set()


def test_the_builtin_kinds_still_load_and_fit_their_contracts_once_asked_for():
    from bridge_core.plugin_host import PluginHost

    host = PluginHost()
    kinds = host.kinds
    assert {"layernorm", "rmsnorm"} <= set(kinds.norms) and "gelu_new" in kinds.activations
    assert {"rotary", "learned"} <= set(kinds.positions) and "4d_additive" in kinds.mask_formats
    # A built-in kind is fetched and checked at its first lookup: a misfit would raise a PluginError here.
    tables = (
        kinds.norms,
        kinds.activations,
        kinds.positions,
        kinds.mask_formats,
        kinds.score_biases,
        kinds.cross_attentions,
    )
    assert all(table[name] is not None for table in tables for name in table)
    assert not [f for f in host.failures if f.distribution == "bridge-core"]


def test_the_kind_contracts_a_plugin_imports_load_no_torch():
    """A plugin module imports `bridge_core.kinds` for its records; the example plugin loads torch only when a
    bias is computed. Seen failing while `kinds.py` imported torch at module level."""
    assert _modules_after("import bridge_core.kinds, bridge_core.kind_checks") == set()
    assert _modules_after("import bridge_core_alibi") == set()


def test_import_bridge_core_is_light_until_a_public_name_is_used():
    assert _modules_after("import bridge_core") == set()
    assert "torch" in _modules_after("from bridge_core import Bridge")


def test_conform_help_is_still_the_real_parsers_help():
    done = subprocess.run(
        [sys.executable, "-m", "bridge_core", "conform", "--help"], capture_output=True, text=True, check=True
    )
    assert "--check NAME" in done.stdout and "--all" in done.stdout


def test_conform_usage_errors_come_from_the_real_parser():
    done = subprocess.run([sys.executable, "-m", "bridge_core", "conform"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "name an architecture or a spec file" in done.stderr
