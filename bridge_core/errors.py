"""The typed errors of bridge-core (docs/architecture.md#errors).

Every error carries the data a caller needs to act (file, line, field, module path, close
matches) and a message written for someone who has never read the code.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The nearest names to `word`, best first (used by every 'did you mean' message)."""
    return difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.5)


class BridgeCoreError(Exception):
    """Base class of every error bridge-core raises on purpose."""


class SpecError(BridgeCoreError, ValueError):
    """A spec is malformed: says which file, which line and which field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = self.file or "<spec>"
        if line is not None:
            where += f":{line}"
        if field:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")


class BindError(BridgeCoreError, LookupError):
    """A spec names a module path the model does not have."""

    def __init__(self, message: str, *, spec_path: str, module_path: str, suggestions: Sequence[str] = ()):
        self.spec_path = spec_path
        self.module_path = module_path
        self.suggestions = list(suggestions)
        hint = f" Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"{message} (spec field '{spec_path}', module path '{module_path}').{hint}")


class HookNameError(BridgeCoreError, KeyError):
    """A hook name (or HF module path) that this bridge does not have."""

    def __init__(self, name: str, suggestions: Sequence[str] = ()):
        self.name = name
        self.suggestions = list(suggestions)
        hint = f" Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else ""
        self.message = (
            f"Unknown hook name '{name}': it is neither a hook point of this bridge nor a module path "
            f"of the model.{hint} `bridge.hook_names()` lists every hook point."
        )
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return self.message


class PluginError(BridgeCoreError):
    """A plugin failed to load, or registered something inconsistent."""

    def __init__(self, message: str, *, distribution: str | None = None, hook: str | None = None):
        self.distribution = distribution
        self.hook = hook
        where = []
        if distribution:
            where.append(f"distribution '{distribution}'")
        if hook:
            where.append(f"hook '{hook}'")
        prefix = f"plugin error in {', '.join(where)}: " if where else "plugin error: "
        super().__init__(prefix + message)


class UnknownKindError(SpecError):
    """A spec asks for a kind (norm, position, mask format, ...) that no installed plugin registers."""


class SpecNotFoundError(BridgeCoreError, LookupError):
    """No registered spec matches a model or a name; says what was tried."""


class ModelNotFoundError(BridgeCoreError, FileNotFoundError):
    """A checkpoint given as a local path (`./ckpt`, `~/ckpt`, `/abs/ckpt`) that does not exist."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"model path '{path}' does not exist (a local checkpoint directory was expected; "
            "a hub id looks like 'name' or 'org/name')"
        )


class ScaffoldError(BridgeCoreError, ValueError):
    """The model could not be built or its structure was not recognized."""


class HookShapeError(BridgeCoreError, ValueError):
    """A hook function returned a tensor of another shape than it was given."""


class HookReturnError(BridgeCoreError, ValueError):
    """A hook function returned something that cannot replace the tensor it was shown: says which hook
    point, what it returned and what was expected. The subclasses say which property was wrong."""

    def __init__(self, hook_name: str, got: str, expected: str, hint: str = "") -> None:
        self.hook_name = hook_name
        self.got = got
        self.expected = expected
        super().__init__(f"hook on '{hook_name}' returned {got}, expected {expected}{hint}")


class HookReturnShapeError(HookReturnError, HookShapeError):
    """A hook function returned a tensor of another shape than it was shown (a `HookShapeError`)."""


class HookDtypeError(HookReturnError, TypeError):
    """A hook function returned a tensor whose dtype cannot stand in for the point's (an integer, bool or
    complex tensor at a floating point; floating dtypes are cast to the point's dtype)."""


class HookDeviceError(HookReturnError):
    """A hook function returned a tensor on another device than the point's, or a meta tensor (no data)."""


class HookReturnTypeError(HookReturnError, HookShapeError, TypeError):
    """A hook function returned something that is not a tensor (nor None). A `HookShapeError` too, as
    such returns were reported before this class existed."""


class InputError(BridgeCoreError, ValueError):
    """Bad call arguments (tokens, masks, dtypes), detected before any hook is attached."""


class ProcessingError(BridgeCoreError, ValueError):
    """A weight transform that would change this model's outputs (it is refused, nothing is copied)."""

    def __init__(self, transform: str, reason: str) -> None:
        self.transform = transform
        self.reason = reason
        super().__init__(f"cannot apply {transform} to this model: {reason}")


class AnalysisError(BridgeCoreError, ValueError):
    """A residual-stream analysis that this model's block structure (or this cache) cannot support."""


class TokenizerError(InputError):
    """No tokenizer, or text that does not tokenize as asked (e.g. not a single token)."""


class OffloadedWeightError(BridgeCoreError, RuntimeError):
    """A parameter is offloaded (a meta tensor) and no offload map holding its value was found."""

    def __init__(self, module_type: str, parameter: str) -> None:
        self.module_type = module_type
        self.parameter = parameter
        super().__init__(
            f"{module_type}.{parameter} is offloaded (on the meta device) and no accelerate offload map holds it; "
            "weight views never return meta tensors. Load the model without offloading to read this weight."
        )


PLOTS_EXTRA = 'pip install "bridge-core[plots]"  (or: pip install "matplotlib>=3.7")'


class PlotDependencyError(BridgeCoreError, ImportError):
    """Plotting was asked for but matplotlib is not installed."""

    def __init__(self) -> None:
        super().__init__(f"plotting attention patterns needs matplotlib, which is not installed: {PLOTS_EXTRA}")
