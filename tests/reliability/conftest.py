"""Shared setup of the reliability tests: tiny models run single-threaded.

On a loaded 2-core machine intra-op threads only add hand-off latency to tiny tensors (about 5x here);
bridge and reference run in the same process under the same setting, so comparisons are unaffected.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def single_threaded_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
