"""Fixtures of the first-run tests: the slow subprocesses (examples, `bridge-core inspect`) all start at
once, in the background, on first use, and each test waits only for its own."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
EXAMPLE_SCRIPTS = ["activation_patching", "logit_lens", "head_ablation", "steering_generation"]


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


class Background:
    """Commands started together; `result(key)` waits for one of them."""

    def __init__(self, commands: dict[str, list[str]], cwd: Path) -> None:
        self._procs = {
            key: subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for key, command in commands.items()
        }
        self._done: dict[str, Finished] = {}

    def result(self, key: str, timeout: float = 300) -> Finished:
        if key not in self._done:
            proc = self._procs[key]
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            self._done[key] = Finished(proc.returncode, out, err)
        return self._done[key]

    def close(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="session")
def plot_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("t5-plots")


@pytest.fixture(scope="session")
def background(plot_dir):
    cli = [sys.executable, "-m", "bridge_core", "inspect"]
    commands = {name: [sys.executable, str(EXAMPLES / f"{name}.py")] for name in EXAMPLE_SCRIPTS}
    commands["inspect gpt2 --json"] = [*cli, "gpt2", "--json"]
    commands["inspect t5 --plot-attention -q"] = [*cli, "t5", "--tiny", "--plot-attention", str(plot_dir), "-q"]
    runs = Background(commands, ROOT)
    yield runs
    runs.close()
