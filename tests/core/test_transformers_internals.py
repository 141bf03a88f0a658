"""bridge_core.transformers_internals: the one module that touches transformers internals (decision 0010).

(a) each function on real tiny models (GPT-2, T5); (b) a guard: no other module of bridge_core/ or
plugins/ names a private transformers attribute; (c) the installed transformers is inside the range
the package declares, and every internal the module relies on is still there.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import transformers
from packaging.requirements import Requirement
from torch import nn
from transformers import masking_utils, modeling_utils
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.gpt2 import modeling_gpt2
from transformers.models.t5 import modeling_t5

from bridge_core import Bridge
from bridge_core import transformers_internals as hf
from bridge_core.bridge import attention
from bridge_core.conformance import capture  # imported at collection: it registers its name on import
from bridge_core.registry import default_registry

ROOT = Path(__file__).resolve().parents[2]
COMPAT_MODULE = ROOT / "bridge_core" / "transformers_internals.py"
# Attribute names (or getattr/hasattr strings) that reach into transformers' private state.
PRIVATE_NAMES = {"_attn_implementation_internal", "_global_mapping", "_attn_implementation"}


# ------------------------------------------------------------------ (b) the guard


def _private_touches(path: Path) -> list[str]:
    """`file:line what` for each private transformers name the module's source uses."""
    tree = ast.parse(path.read_text(), filename=str(path))
    where = path.relative_to(ROOT)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES:
            found.append(f"{where}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.Constant) and node.value in PRIVATE_NAMES:
            found.append(f"{where}:{node.lineno} {node.value!r}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "transformers":
            private_path = any(part.startswith("_") for part in node.module.split("."))
            for alias in node.names:
                if private_path or alias.name.startswith("_"):
                    found.append(f"{where}:{node.lineno} from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "transformers" and any(p.startswith("_") for p in parts):
                    found.append(f"{where}:{node.lineno} import {alias.name}")
    return found


def test_no_module_but_the_compat_module_names_transformers_internals():
    sources = sorted([*(ROOT / "bridge_core").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")])
    assert len(sources) > 20  # the scan really saw the package
    touches = [t for path in sources if path != COMPAT_MODULE for t in _private_touches(path)]
    assert not touches, "go through bridge_core.transformers_internals instead:\n" + "\n".join(touches)


# ------------------------------------------------------------------ (a) each function on real tiny models

UNREGISTERED = "no_such_attention_implementation"


@pytest.fixture(scope="module")
def gpt2() -> nn.Module:
    return Bridge.from_spec("gpt2", tiny=True).model


@pytest.fixture(scope="module")
def t5() -> nn.Module:
    return Bridge.from_spec("t5", tiny=True).model


def _state(model: nn.Module) -> list[tuple[int, dict, str | None]]:
    return [(id(c), c.to_dict(), c._attn_implementation) for c in hf.config_objects(model)]


def test_config_objects_finds_the_t5_stacks_own_configs(t5):
    found = hf.config_objects(t5)
    assert [id(c) for c in found] == [id(t5.config), id(t5.encoder.config), id(t5.decoder.config)]
    assert len({id(c) for c in found}) == 3  # three distinct objects, each once


def test_config_objects_of_gpt2_is_the_one_shared_config(gpt2):
    assert [id(c) for c in hf.config_objects(gpt2)] == [id(gpt2.config)]


def test_config_objects_finds_sub_configs_at_any_depth():
    composite = transformers.LlavaConfig()  # declared sub-configs: text_config, vision_config
    inner = transformers.GPT2Config()
    composite.text_config.extra = inner  # undeclared, one level further down
    holder = nn.Module()
    holder.config = composite
    holder.child = nn.Module()
    holder.child.config = composite.vision_config  # also held by a module: still listed once
    found = [id(c) for c in hf.config_objects(holder)]
    assert found == [id(composite), id(composite.vision_config), id(composite.text_config), id(inner)]


@pytest.mark.parametrize("name", ["gpt2", "t5"])
def test_switch_and_restore_leaves_every_config_as_found(name, request):
    model = request.getfixturevalue(name)
    before = _state(model)
    configs = hf.config_objects(model)
    # An unregistered name: the switch itself must not validate it.
    with hf.attention_implementation_switched(configs, UNREGISTERED):
        assert [hf.attention_implementation(c) for c in configs] == [UNREGISTERED] * len(configs)
        assert all(c._attn_implementation == UNREGISTERED for c in configs)  # what the model reads
    assert _state(model) == before


def test_switch_is_restored_when_the_body_raises(t5):
    before = _state(t5)
    switched = hf.attention_implementation_switched(hf.config_objects(t5), UNREGISTERED)
    with pytest.raises(RuntimeError, match="inside"), switched:
        raise RuntimeError("inside")
    assert _state(t5) == before


def test_set_touches_only_the_config_it_is_given():
    composite = transformers.LlavaConfig()
    composite.text_config._attn_implementation = "sdpa"
    hf.set_attention_implementation(composite, "eager")
    assert hf.attention_implementation(composite) == "eager"
    assert hf.attention_implementation(composite.text_config) == "sdpa"  # transformers' setter would overwrite it
    hf.set_attention_implementation(composite, None)
    assert composite._attn_implementation is None


def test_lookups_return_the_functions_transformers_uses(gpt2, t5):
    assert hf.mask_function("eager") is masking_utils.eager_mask
    assert hf.mask_function("sdpa") is masking_utils.sdpa_mask
    assert hf.mask_function(UNREGISTERED) is None
    assert hf.mask_function(None) is None
    assert hf.attention_function("sdpa") is sdpa_attention_forward
    # The models resolve their implementation this way (modeling_gpt2, modeling_t5).
    resolve = modeling_utils.ALL_ATTENTION_FUNCTIONS.get_interface
    assert hf.attention_function("sdpa") is resolve("sdpa", None)
    with pytest.raises(KeyError):
        hf.attention_function("eager")  # never registered: each model passes its own as the default
    gpt2_attention = gpt2.transformer.h[0].attn
    t5_attention = t5.encoder.block[0].layer[0].SelfAttention
    assert hf.model_eager_function(gpt2_attention) is modeling_gpt2.eager_attention_forward
    assert hf.model_eager_function(t5_attention) is modeling_t5.eager_attention_forward
    assert hf.model_eager_function(gpt2_attention) is resolve("eager", modeling_gpt2.eager_attention_forward)
    assert hf.model_eager_function(nn.Linear(2, 2)) is None


def test_registered_implementations_are_found_by_name():
    # Registered at import by their callers, through `register_implementation`.
    assert hf.attention_function(attention.IMPLEMENTATION_NAME) is attention.bridge_attention
    assert hf.mask_function(attention.IMPLEMENTATION_NAME) is attention.bridge_mask
    assert hf.attention_function(capture.CAPTURE_NAME) is capture.capture_attention
    assert hf.mask_function(capture.CAPTURE_NAME) is capture.capture_mask


# ------------------------------------------------------------------ (c) the supported range and the internals


def test_installed_transformers_is_inside_the_declared_range():
    requirements = [Requirement(r) for r in importlib.metadata.requires("bridge-core") or []]
    declared = [r for r in requirements if r.name == "transformers" and r.marker is None]
    assert len(declared) == 1, f"bridge-core should declare one transformers requirement, found {declared}"
    specifier = declared[0].specifier
    assert specifier.contains(transformers.__version__), (
        f"transformers {transformers.__version__} is outside the supported range {specifier} (decision 0002)"
    )


def _config_has_the_implementation_attribute() -> bool:
    config = transformers.GPT2Config()
    if not hasattr(config, hf.IMPLEMENTATION_ATTRIBUTE):
        return False
    # Writing the attribute must change what the models read (`config._attn_implementation`).
    setattr(config, hf.IMPLEMENTATION_ATTRIBUTE, UNREGISTERED)
    return config._attn_implementation == UNREGISTERED


def _every_builtin_family_defines_its_eager_function() -> bool:
    # Only families whose attention goes through AttentionInterface read it: those on the reimplement path
    # (GPT-Neo, MPT, Falcon) compute attention in their own module code and define none.
    registry = default_registry()
    classes = [
        getattr(transformers, registry.get(n).hf_class)
        for n in registry.names()
        if registry.origin(n) == "builtin" and registry.get(n).block.attn.implementation == "interface"
    ]
    return bool(classes) and all(
        callable(getattr(sys.modules[cls.__module__], hf.MODEL_EAGER_FUNCTION, None)) for cls in classes
    )


INTERNALS: dict[str, Callable[[], bool]] = {
    "transformers.PreTrainedConfig": lambda: isinstance(transformers.PreTrainedConfig, type),
    f"PreTrainedConfig.{hf.IMPLEMENTATION_ATTRIBUTE} (read as config._attn_implementation)": (
        _config_has_the_implementation_attribute
    ),
    "PreTrainedConfig.sub_configs": lambda: isinstance(transformers.LlavaConfig().sub_configs, Mapping),
    "transformers.AttentionInterface.register": lambda: callable(transformers.AttentionInterface.register),
    "transformers.masking_utils.AttentionMaskInterface.register": lambda: callable(
        masking_utils.AttentionMaskInterface.register
    ),
    "transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS": lambda: isinstance(
        getattr(modeling_utils, "ALL_ATTENTION_FUNCTIONS", None), Mapping
    ),
    "transformers.masking_utils.ALL_MASK_ATTENTION_FUNCTIONS": lambda: isinstance(
        getattr(masking_utils, "ALL_MASK_ATTENTION_FUNCTIONS", None), Mapping
    ),
    f"module-level {hf.MODEL_EAGER_FUNCTION} in each built-in family's modeling file": (
        _every_builtin_family_defines_its_eager_function
    ),
}


@pytest.mark.parametrize("internal", list(INTERNALS))
def test_the_internals_the_module_relies_on_exist(internal):
    assert INTERNALS[internal](), (
        f"transformers {transformers.__version__} no longer provides {internal}; "
        "update bridge_core/transformers_internals.py (decision 0010)"
    )
