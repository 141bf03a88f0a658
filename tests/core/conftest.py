"""Shared setup of the core tests: tiny models run single-threaded, and the CLI subprocesses start early.

On a busy 2-core machine every op of a tiny model otherwise waits on OpenMP thread hand-offs
(~8 ms per op); one thread makes a forward ~50x faster. Bridge and reference run in the same
process under the same setting, so comparisons are unaffected.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bridge_core.registry import SPEC_PATH_VARIABLE

from ._helpers import write_fake_distribution

CLI_TEST_MODULE = "test_loading_and_cli.py"


@pytest.fixture(scope="package", autouse=True)
def single_threaded_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="package", autouse=True)
def cli_processes(request, tmp_path_factory):
    """`bridge-core hooks gpt2 --tiny --json` and `bridge-core list --json` (with a broken third-party plugin
    on PYTHONPATH), started when the first core test starts so that their interpreter start-up (~9 s each) overlaps
    the other tests; test_loading_and_cli.py reads their results. Not started when no CLI test is selected."""
    wanted = any(
        CLI_TEST_MODULE in item.nodeid and "cli_runs" in getattr(item, "fixturenames", ())
        for item in request.session.items
    )
    if not wanted:
        yield {}
        return
    site, _ = write_fake_distribution(tmp_path_factory.mktemp("cli_site"), "cli")
    env = {k: v for k, v in os.environ.items() if k != SPEC_PATH_VARIABLE}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    python_path = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    commands = {
        "hooks": (["hooks", "gpt2", "--tiny", "--json"], env),
        "list": (["list", "--json"], {**env, "PYTHONPATH": python_path}),
    }
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "bridge_core", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=command_env,
            cwd=str(site),
        )
        for name, (args, command_env) in commands.items()
    }
    yield processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.communicate()
