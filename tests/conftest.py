"""Settings shared by every test directory.

Tiny models make torch's intra-op threads contend rather than help on a 2-core machine (measured:
up to 5x slower suites), so the whole session runs single-threaded. `pytester` drives the
conformance pytest plugin in a sandbox.
"""

import torch

pytest_plugins = ["pytester"]

torch.set_num_threads(1)
