"""The `run` fixture: every hidden family configuration, plain and padded left and right."""

from __future__ import annotations

import pytest
import torch

from ._models import PADDINGS, VARIANT_IDS, Run, build_run


# Tiny tensors: intra-op threads only add overhead on a small shared machine.
@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", params=[(v, p) for v in VARIANT_IDS for p in PADDINGS], ids=lambda r: f"{r[0]}-{r[1]}")
def run(request) -> Run:
    return build_run(*request.param)
