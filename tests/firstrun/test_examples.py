"""Every script in examples/ runs offline to the end and prints its result."""

from __future__ import annotations

import pytest

from .conftest import EXAMPLE_SCRIPTS

KEY_LINES = {
    "activation_patching": "best patch: blocks.0.hook_resid_pre at 'alice' recovers 100%",
    "logit_lens": "logit lens: the final residual predicts 'rome', as the model does",
    "head_ablation": "most important head: L0H",
    "steering_generation": "steered:   bob lives in paris .",
}


def test_every_example_has_a_key_line():
    assert sorted(KEY_LINES) == sorted(EXAMPLE_SCRIPTS)


@pytest.mark.parametrize("name", EXAMPLE_SCRIPTS)
def test_example_runs_and_prints_its_result(background, name):
    result = background.result(name)
    assert result.returncode == 0, result.stderr[-3000:]
    assert KEY_LINES[name] in result.stdout, result.stdout
