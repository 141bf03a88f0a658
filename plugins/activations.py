"""Built-in activation functions, by the names transformers uses (`gelu_new`, `silu`, ...).

Each is transformers' own implementation, so a spec's `act_fn` means exactly what the model runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge_core.plugin_host import hookimpl

if TYPE_CHECKING:
    from bridge_core.kinds import ActivationFunction

_NAMES = (
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


@hookimpl
def bridge_core_activation_functions() -> dict[str, ActivationFunction]:
    from transformers.activations import ACT2FN  # here: `bridge-core list` loads plugins without transformers

    return {name: ACT2FN[name] for name in _NAMES if name in ACT2FN}
