"""Fixtures of the conformance tests: the gpt2 report (run once), and the broken specs' folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers.models.gpt2.modeling_gpt2  # noqa: F401  (see below)

from bridge_core.conformance import Report, run

# pytester's in-process runs drop modules first imported inside them from sys.modules; the capture finds a
# model's eager attention through its class's module there, so GPT-2's is imported above, up front.
torch.set_num_threads(1)  # tiny models: threads only contend on a loaded machine


BROKEN = Path(__file__).parent / "broken_specs"


@pytest.fixture(scope="session")
def gpt2_report() -> Report:
    return run("gpt2")


@pytest.fixture(scope="session")
def broken_dir() -> Path:
    return BROKEN
