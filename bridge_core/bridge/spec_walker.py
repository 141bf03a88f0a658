"""Resolving a spec against a model: module paths, kinds and expressions, with problems located.

`SpecWalker` is the base of the binder (binding.py): strict, it raises the first problem; collecting,
it records every problem and lets the walk carry on past what depends on it (`bridge-core validate`).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import BindError, BridgeCoreError, close_matches
from ..plugin_host import Kinds
from ..spec.config import BridgeConfig, config_lookup, spec_error
from ..spec.expressions import ExpressionError, evaluate
from ..spec.kind_fields import kind_references, kinds_plugins, unknown_kind

if TYPE_CHECKING:
    from ..spec.schema import MLPSpec, ModulePath, Spec


def forward_parameters(module: nn.Module) -> list[inspect.Parameter]:
    """`module.forward`'s parameters but `**kwargs`, in order (read at bind time, never per call)."""
    return [p for p in inspect.signature(module.forward).parameters.values() if p.kind != p.VAR_KEYWORD]


def resolve_path(root: nn.Module, path: ModulePath, spec_field: str, prefix: str = "") -> tuple[nn.Module, str]:
    """The module at `path` under `root` (first existing alternative), or a BindError with suggestions."""
    alternatives = [path] if isinstance(path, str) else list(path)
    for candidate in alternatives:
        module = _get(root, candidate)
        if module is not None:
            return module, f"{prefix}{candidate}" if candidate not in ("", ".") else prefix.rstrip(".")
    shown = " or ".join(f"{prefix}{a}" for a in alternatives)
    names = [n for n, _ in root.named_modules() if n]
    suggestions = []
    for candidate in alternatives:
        suggestions += [f"{prefix}{s}" for s in close_matches(candidate, names)]
        suggestions += [f"{prefix}{n}" for n in names if n.split(".")[-1] == candidate.split(".")[-1]][:3]
    raise BindError(
        f"The model ({type(root).__name__} at '{prefix.rstrip('.') or '<root>'}') has no module {shown}",
        spec_path=spec_field,
        module_path=shown,
        suggestions=list(dict.fromkeys(suggestions))[:5],
    )


def _get(root: nn.Module, dotted: str) -> nn.Module | None:
    if dotted in ("", "."):
        return root
    module: nn.Module | None = root
    for part in dotted.split("."):
        if module is None:
            return None
        children = module._modules
        module = children.get(part) if part in children else None
    return module


class Missing(Exception):
    """A problem already recorded (collect mode): skip what depends on it."""


class SpecWalker:
    """Strict: the first problem raises. Collecting: every problem is recorded and `Missing` skips what
    depends on it."""

    def __init__(
        self, model: nn.Module, spec: Spec, cfg: BridgeConfig | None, kinds: Kinds, spec_file: str | None, collect: bool
    ) -> None:
        self.model, self.spec, self.cfg, self.kinds, self.spec_file = model, spec, cfg, kinds, spec_file
        self.collect = collect
        self.problems: list[BridgeCoreError] = []
        self.hf_config = model.config
        self._lookup = config_lookup(model.config)
        plugins = ", ".join(kinds_plugins(kinds)) or "none"
        self._kinds: dict[str, Any] = {}
        for (table, what), name, field in kind_references(spec):
            found = getattr(kinds, table)
            if name in found:
                self._kinds[field] = found[name]
            else:
                self.fail(unknown_kind(spec, spec_file, found, name, what, field, plugins))

    # ---------------------------------------------------------------- problems
    def fail(self, error: BridgeCoreError) -> None:
        if not self.collect:
            raise error
        self.problems.append(error)

    def attempt(self, function, *args, **kwargs) -> Any:
        """`function(...)`, or None after recording its problem (collect mode)."""
        try:
            return function(*args, **kwargs)
        except Missing:
            return None
        except BridgeCoreError as error:
            self.fail(error)
            return None

    def resolve(self, root: nn.Module, path: ModulePath, field: str, prefix: str = "") -> tuple[nn.Module, str]:
        try:
            return resolve_path(root, path, field, prefix)
        except BindError as error:
            self.fail(error)
            raise Missing from None

    def optional(self, root: nn.Module, path: ModulePath | None, prefix: str = "") -> tuple[nn.Module, str] | None:
        """A module some configs of the family have and others lack (OPT's project_in)."""
        if path is None:
            return None
        for candidate in [path] if isinstance(path, str) else path:
            module = _get(root, candidate)
            if module is not None:
                return module, f"{prefix}{candidate}"
        return None

    def kind(self, field: str) -> Any:
        if field not in self._kinds:
            raise Missing
        return self._kinds[field]

    def activation(self, m: MLPSpec, field: str, mlp: nn.Module, inner: str) -> tuple[str, Any, str]:
        """An MLP's activation: (name, kind or None after a recorded problem, the spec field that chose it).

        `mlp.act_module` names the MLP's own activation module (learned parameters, Apertus's xIELU): the bound
        activation is that module, called as HF calls it. Otherwise `mlp.act_fn` names a kind; without one,
        the normalized `config.act_fn` chooses."""
        if m.act_module is not None:
            chosen_by = f"{field}.mlp.act_module"
            found = self.attempt(self.resolve, mlp, m.act_module, chosen_by, inner)
            if found is None:  # its problem is recorded
                return str(m.act_module), None, chosen_by
            own, path = found
            if not callable(own):
                self.fail(spec_error(f"'{path}' is no callable module", self.spec, self.spec_file, chosen_by))
                return path, None, chosen_by
            return f"{type(own).__name__} at {path}", own, chosen_by
        act_fn = m.act_fn
        name = act_fn or (self.cfg.act_fn if self.cfg else None)
        chosen_by = f"{field}.mlp.act_fn" if act_fn else "config.act_fn"
        act = self._kinds.get(chosen_by) if act_fn else self.kinds.activations.get(name)
        if act is None and not act_fn:
            plugins = ", ".join(kinds_plugins(self.kinds)) or "none"
            self.fail(
                unknown_kind(
                    self.spec, self.spec_file, self.kinds.activations, str(name), "activation", chosen_by, plugins
                )
            )
        return str(name), act, chosen_by

    def value(self, field: str, value: Any, layer: int | None = None) -> Any:
        """A spec value: a literal, or an expression over the HF config (and `layer`, per layer)."""
        if not isinstance(value, str):
            return value

        def lookup(name: str) -> Any:
            return layer if name == "layer" and layer is not None else self._lookup(name)

        try:
            return evaluate(value, lookup)
        except ExpressionError as exc:
            at = "" if layer is None else f", layer {layer}"
            raise spec_error(f"{exc.reason} (expression '{value}'{at})", self.spec, self.spec_file, field) from None

    def choice(self, field: str, value: str, allowed: tuple[str, ...], layer: int | None = None) -> str:
        """A literal from `allowed`, or an expression over the HF config (and `layer`) giving one."""
        result = value if value in allowed else self.value(field, value, layer)
        if result not in allowed:
            raise spec_error(f"evaluates to {result!r}; expected one of {', '.join(allowed)}", self.spec, None, field)
        return result

    def flag(self, field: str, value: Any, layer: int | None = None) -> bool:
        """A boolean: a literal, or an expression over the HF config (and `layer`) giving one."""
        result = self.value(field, value, layer)
        if not isinstance(result, bool):
            at = "" if layer is None else f" at layer {layer}"
            raise spec_error(f"evaluates to {result!r}{at}; expected true or false", self.spec, self.spec_file, field)
        return result

    def tensor(self, name: str | None, field: str) -> torch.Tensor | None:
        """A parameter or buffer of the model by dotted name (BART's final_logits_bias), or None."""
        if name is None:
            return None
        module_path, _, attribute = name.rpartition(".")
        owner = self.resolve(self.model, module_path, field) if module_path else (self.model, "")
        found = getattr(owner[0], attribute, None)
        if not isinstance(found, torch.Tensor):
            self.fail(
                BindError(
                    f"the model has no parameter or buffer '{name}'",
                    spec_path=field,
                    module_path=module_path or "<root>",
                )
            )
            raise Missing
        return found
