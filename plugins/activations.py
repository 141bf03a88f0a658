"""Built-in activation functions, by the names transformers uses (`gelu_new`, `silu`, ...).

Each is transformers' own implementation, so a spec's `act_fn` means exactly what the model runs.
The names are listed here, the one place for them; transformers is imported at the first lookup of
one (binding), never to name them (`bridge-core list`, collisions with a plugin's kinds).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from typing import TYPE_CHECKING

from bridge_core.plugin_host import hookimpl

if TYPE_CHECKING:
    from bridge_core.kinds import ActivationFunction

NAMES = (
    "gelu",
    "gelu_new",
    "gelu_fast",
    "gelu_pytorch_tanh",
    "quick_gelu",
    "relu",
    "relu2",
    "silu",
    "swish",
    "tanh",
    "sigmoid",
)


class _TransformersActivations(Mapping[str, "ActivationFunction"]):
    """transformers' `ACT2FN` under `NAMES`; each module is built once, at its first lookup."""

    def __getitem__(self, name: str) -> ActivationFunction:
        if name not in NAMES:
            raise KeyError(name)
        return _act2fn(name)

    def __iter__(self) -> Iterator[str]:
        return iter(NAMES)

    def __len__(self) -> int:
        return len(NAMES)


@cache
def _act2fn(name: str) -> ActivationFunction:
    from transformers.activations import ACT2FN

    return ACT2FN[name]  # ACT2FN builds a new module per lookup: one per name, as the plugin hands out


@hookimpl
def bridge_core_activation_functions() -> Mapping[str, ActivationFunction]:
    return _TransformersActivations()
