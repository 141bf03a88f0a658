"""`bridge-core scaffold`: a draft spec from a model's module tree and weight shapes.

The model is built on the meta device (no memory: a default Llama config would be 27 GB), its
blocks, attention, MLP and norms are found by structure and by the names transformers uses, and
a YAML draft is written with a comment on everything that could not be decided from structure.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from torch import nn

from .errors import ScaffoldError

_Q = ("q_proj", "q", "query", "wq")
_K = ("k_proj", "k", "key", "wk")
_V = ("v_proj", "v", "value", "wv")
_FUSED = ("c_attn", "query_key_value", "qkv_proj", "Wqkv", "qkv", "W_pack")
_O = ("o_proj", "out_proj", "dense", "c_proj", "o", "wo", "proj")
_GATE = ("gate_proj", "w1", "wi_0")
_UP = ("up_proj", "w3", "c_fc", "fc1", "dense_h_to_4h", "wi_1", "wi", "fc_in")
_DOWN = ("down_proj", "w2", "c_proj", "fc2", "dense_4h_to_h", "wo", "fc_out")
_CONFIG_FIELDS = {
    "n_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "d_model": ("hidden_size", "n_embd", "d_model"),
    "n_heads": ("num_attention_heads", "n_head", "num_heads"),
    "n_kv_heads": ("num_key_value_heads",),
    "d_mlp": ("intermediate_size", "n_inner", "ffn_dim", "d_ff"),
    "d_vocab": ("vocab_size",),
    "n_ctx": ("max_position_embeddings", "n_positions"),
    "eps": ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"),
    "act_fn": ("hidden_act", "hidden_activation", "activation_function"),
}
_TINY = {
    "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2, "hidden_size": 64, "n_embd": 64,
    "num_attention_heads": 4, "n_head": 4, "num_key_value_heads": 2, "intermediate_size": 96,
    "ffn_dim": 96, "vocab_size": 101, "max_position_embeddings": 64, "n_positions": 64, "head_dim": 16,
    "num_local_experts": 4, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 96,
    "shared_expert_intermediate_size": 96,
}  # fmt: skip


@dataclass
class Draft:
    """What scaffolding found: spec fields and the things a person must check."""

    fields: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def meta_model(model_type: str | None = None, path: str | None = None) -> tuple[nn.Module, Any]:
    """The model class for a model type or checkpoint, built on the meta device from its config."""
    try:
        config = (
            transformers.AutoConfig.from_pretrained(path) if path else transformers.AutoConfig.for_model(model_type)
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ScaffoldError(f"cannot read a config for {path or model_type!r}: {exc}") from None
    with torch.device("meta"):
        try:
            model = transformers.AutoModelForCausalLM.from_config(config)
        except ValueError:
            model = transformers.AutoModelForSeq2SeqLM.from_config(config)
    return model, config


def _child(module: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    children = dict(module.named_children())
    for name in names:
        if name in children:
            return name, children[name]
    return None


def _path_of(model: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


def _layout(module: nn.Module) -> str:
    return "conv1d" if type(module).__name__ == "Conv1D" else "linear"


def _norm_kind(module: nn.Module) -> str:
    name = type(module).__name__
    if isinstance(module, nn.LayerNorm) or ("LayerNorm" in name and "RMS" not in name and "T5" not in name):
        return "layernorm"
    return "rmsnorm_offset" if "Gemma" in name else "rmsnorm"


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return isinstance(module, nn.LayerNorm) or "norm" in name


def scaffold(model: nn.Module, config: Any) -> Draft:
    draft = Draft()
    arch = type(model).__name__
    draft.fields["name"] = config.model_type
    draft.fields["match"] = {"architectures": [arch], "model_type": [config.model_type]}
    draft.fields["hf_class"] = arch
    cfg = {}
    for key, candidates in _CONFIG_FIELDS.items():
        found = next((c for c in candidates if getattr(config, c, None) is not None), None)
        if found:
            cfg[key] = found
    if "d_mlp" not in cfg and hasattr(config, "n_inner") and "d_model" in cfg:
        cfg["d_mlp"] = f"n_inner or 4 * {cfg['d_model']}"  # GPT-2 style: None means 4 * d_model
    if getattr(config, "head_dim", None):
        cfg["d_head"] = f"head_dim or {cfg['d_model']} // {cfg['n_heads']}"
    elif "d_model" in cfg and "n_heads" in cfg:
        cfg["d_head"] = f"{cfg['d_model']} // {cfg['n_heads']}"
    missing = [k for k in ("n_layers", "d_model", "n_heads", "d_mlp", "d_vocab") if k not in cfg]
    if missing:
        draft.notes.append(f"config: could not find HF attributes for {', '.join(missing)}; fill them in")
    draft.fields["config"] = cfg
    draft.fields["test_config"] = {k: v for k, v in _TINY.items() if hasattr(config, k)}

    embed = model.get_input_embeddings()
    draft.fields["embed"] = {"path": _path_of(model, embed)}
    unembed = model.get_output_embeddings()
    if unembed is None:
        raise ScaffoldError(f"{arch} has no output embeddings: only language-model heads are scaffolded")
    draft.fields["unembed"] = {"path": _path_of(model, unembed)}

    n_layers = getattr(config, cfg.get("n_layers", "num_hidden_layers"), None)
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if not lists:
        raise ScaffoldError(f"found no ModuleList of {n_layers} blocks in {arch}")
    blocks_path, blocks = lists[0]
    draft.fields["blocks"] = blocks_path
    block = blocks[0]
    draft.fields["block"] = _scaffold_block(block, draft)
    _scaffold_moe(block, config, draft)

    rotary = [n for n, m in model.named_modules() if "rotary" in n.lower() and not list(m.children())]
    tables = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and m is not embed]
    if rotary:
        draft.fields["pos_embed"] = {"kind": "rotary", "path": rotary[0]}
        draft.fields["call"] = {"position_embeddings_kwarg": "position_embeddings"}
        if "position_embeddings" not in inspect.signature(type(block).forward).parameters:
            draft.notes.append("call: the block's forward takes no `position_embeddings`; check how rotary reaches it")
    elif tables:
        draft.fields["pos_embed"] = {"kind": "learned", "path": tables[0], "offset": 0}
        draft.notes.append("pos_embed: learned table found; check `offset` (OPT's is 2)")
    else:
        draft.notes.append("pos_embed: no rotary module or position table found; positions may be `none`")

    norms_after = [
        n
        for n, m in model.named_modules()
        if _is_norm(m) and not n.startswith(blocks_path + ".") and n and not list(m.children())
    ]
    if norms_after:
        final = norms_after[-1]
        draft.fields["ln_final"] = {"path": final, "kind": _norm_kind(dict(model.named_modules())[final])}
    return draft


def _scaffold_block(block: nn.Module, draft: Draft) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "sequential"}
    attn = next(
        (
            (n, m)
            for n, m in block.named_children()
            if ("attn" in n.lower() or "attention" in n.lower()) and not _is_norm(m) and list(m.children())
        ),
        None,
    )
    if attn is None:
        raise ScaffoldError(f"no attention module among {[n for n, _ in block.named_children()]}")
    attn_name, attn_module = attn
    spec_attn: dict[str, Any] = {"path": attn_name}
    fused = _child(attn_module, _FUSED)
    if fused:
        spec_attn["layout"] = _layout(fused[1])
        order = "per_head_interleaved" if fused[0] == "query_key_value" else "qkv"
        spec_attn["qkv"] = {"kind": "fused", "path": fused[0], "order": order}
        draft.notes.append(
            f"block.attn.qkv: fused '{fused[0]}' guessed order '{order}'; the conformance q/k/v checks tell"
        )
    else:
        found = {n: _child(attn_module, names) for n, names in (("q", _Q), ("k", _K), ("v", _V))}
        if not all(found.values()):
            raise ScaffoldError(f"no q/k/v projections in {attn_name}: {[n for n, _ in attn_module.named_children()]}")
        spec_attn["layout"] = _layout(found["q"][1])
        spec_attn["qkv"] = {"kind": "separate", **{n: f[0] for n, f in found.items()}}
    o = _child(attn_module, _O)
    spec_attn["o"] = o[0] if o else "FILL_ME"
    if not o:
        draft.notes.append("block.attn.o: no output projection recognized")
    spec_attn["softmax_dtype"] = "float32"
    draft.notes.append("block.attn.softmax_dtype: float32 guessed (GPT-2 and T5 use input)")
    for norm_name in ("q_norm", "k_norm"):
        if norm_name in dict(attn_module.named_children()):
            spec_attn[norm_name] = {"path": norm_name, "kind": _norm_kind(getattr(attn_module, norm_name))}
    out["attn"] = spec_attn

    norms = [(n, m) for n, m in block.named_children() if _is_norm(m)]
    if len(norms) >= 1:
        out["ln1"] = {"path": norms[0][0], "kind": _norm_kind(norms[0][1])}
    if len(norms) == 2:
        out["ln2"] = {"path": norms[1][0], "kind": _norm_kind(norms[1][1])}
    if len(norms) == 4:  # Gemma 2/3 layout: input, post-attention, pre-MLP, post-MLP
        out["ln1_post"] = {"path": norms[1][0], "kind": _norm_kind(norms[1][1])}
        out["ln2"] = {"path": norms[2][0], "kind": _norm_kind(norms[2][1])}
        out["ln2_post"] = {"path": norms[3][0], "kind": _norm_kind(norms[3][1])}
        draft.notes.append("block: four norms, read as input / post-attention / pre-MLP / post-MLP (Gemma 2)")
    elif len(norms) not in (1, 2):
        draft.notes.append(f"block: {len(norms)} norms found ({[n for n, _ in norms]}); assign ln1/ln2 by hand")

    mlp = next(((n, m) for n, m in block.named_children() if n in ("mlp", "feed_forward", "ffn")), None)
    mlp_name, mlp_module = mlp if mlp else (".", block)
    spec_mlp: dict[str, Any] = {"path": mlp_name}
    gate, up, down = _child(mlp_module, _GATE), _child(mlp_module, _UP), _child(mlp_module, _DOWN)
    if up is None or down is None:
        draft.notes.append("block.mlp: input/output projections not recognized")
    spec_mlp["kind"] = "gated" if gate else "plain"
    spec_mlp["layout"] = _layout((up or down or (None, nn.Linear(1, 1)))[1])
    spec_mlp["in"] = up[0] if up else "FILL_ME"
    if gate:
        spec_mlp["gate"] = gate[0]
    spec_mlp["out"] = down[0] if down else "FILL_ME"
    out["mlp"] = spec_mlp
    return out


def _scaffold_moe(block: nn.Module, config: Any, draft: Draft) -> None:
    """Block 0's MLP as a mixture of experts, when it has a router (`gate`) and an `experts` module holding
    fused 3-D `gate_up_proj` / `down_proj` (transformers 5); a shared expert's projections become in/gate/out."""
    spec_mlp = draft.fields["block"]["mlp"]
    mlp = block if spec_mlp["path"] == "." else block.get_submodule(spec_mlp["path"])
    experts, router = getattr(mlp, "experts", None), getattr(mlp, "gate", None)
    weights = [getattr(experts, n, None) for n in ("gate_up_proj", "down_proj")]
    if router is None or not all(isinstance(w, torch.Tensor) and w.dim() == 3 for w in weights):
        return
    draft.notes = [n for n in draft.notes if not n.startswith("block.mlp:")]
    n_experts = next((n for n in ("num_local_experts", "num_experts", "n_routed_experts") if hasattr(config, n)), None)
    moe: dict[str, Any] = {"router": "gate", "experts": "experts", "n_experts": n_experts or "FILL_ME"}
    moe["top_k"] = "num_experts_per_tok" if hasattr(config, "num_experts_per_tok") else "FILL_ME"
    moe["norm_topk_prob"] = "norm_topk_prob" if hasattr(config, "norm_topk_prob") else True
    out = {"path": spec_mlp["path"], "kind": "moe", "layout": "linear"}
    shared = next(((n, getattr(mlp, n)) for n in ("shared_expert", "shared_experts") if hasattr(mlp, n)), None)
    if shared is not None:
        moe["shared_expert"] = shared[0]
        if isinstance(getattr(mlp, "shared_expert_gate", None), nn.Linear):
            moe["shared_expert_gate"] = "shared_expert_gate"
        for key, names in (("in", _UP), ("gate", _GATE), ("out", _DOWN)):
            found = _child(shared[1], names)
            if found:
                out[key] = found[0]
    draft.fields["block"]["mlp"] = {**out, "moe": moe}
    if hasattr(config, "moe_intermediate_size"):  # d_mlp is each expert's width, as in HookedTransformer
        draft.fields["config"]["d_mlp"] = "moe_intermediate_size"
    draft.notes.append(
        "block.mlp: a mixture of experts (block 0); check the router's scoring and norm_topk_prob, and make "
        "kind an expression over `layer` if some layers are dense (mlp_only_layers, first_k_dense_replace)"
    )


def to_yaml(draft: Draft) -> str:
    """The draft as a commented YAML spec."""
    import yaml

    header = [
        "# Draft spec written by `bridge-core scaffold`. Check every note below, then run",
        "#   bridge-core validate THIS.yaml && bridge-core conform THIS.yaml",
    ]
    header += [f"# NOTE: {note}" for note in draft.notes]
    body = yaml.safe_dump(draft.fields, sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n" + body
