"""A script in the style of TransformerLens's Main Demo and Exploratory Analysis Demo, written against
HookedTransformer's documented API, runs unchanged on a bridge and gives HookedTransformer 3.9's numbers
(same weights, GPT-2- and Llama-shaped): logits, loss, cache values, ablations, patterns, generations,
the cache analyses and the config fields.
"""

from __future__ import annotations

from typing import Any

import torch

PROMPT = "when mary and john went to the store john gave a drink to"
TEXT = "the cat sat on the mat"


def main_demo(model: Any) -> dict[str, Any]:
    """The demo's habits, as a researcher types them for HookedTransformer; every result by name."""
    out: dict[str, Any] = {}
    cfg = model.cfg
    for field in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx", "n_key_value_heads",
                  "normalization_type", "positional_embedding_type", "default_prepend_bos"):  # fmt: skip
        out[f"cfg.{field}"] = getattr(cfg, field)
    out["cfg.device"] = torch.device(cfg.device).type
    out["cfg.dtype"] = cfg.dtype

    tokens = model.to_tokens(PROMPT)
    out["str_tokens"] = model.to_str_tokens(PROMPT)
    out["to_string"] = model.to_string(tokens[0, 1:])
    logits, loss = model(PROMPT, return_type="both")
    out["logits"], out["loss"] = logits, loss
    out["loss_per_token"] = model(TEXT, return_type="loss", loss_per_token=True)
    out["mary_position"] = model.get_token_position(" mary", PROMPT)
    out["john_last"] = model.get_token_position(" john", tokens, mode="last")

    logits, cache = model.run_with_cache(tokens, remove_batch_dim=True)
    out["pattern0"] = cache["pattern", 0, "attn"]
    out["pattern1"] = cache["blocks.1.attn.hook_pattern"]
    out["embed"] = cache["embed"]
    out["scale"] = cache["scale"]
    out["resid_post_last"] = cache["resid_post", -1]
    out["scale_ln1"] = cache["scale", 0, "ln1"]
    out["q1"] = cache["q", 1]
    out["z0"] = cache["z", 0]
    if "hook_pos_embed" in cache:
        out["pos_embed"] = cache["pos_embed"]

    accumulated, labels = cache.accumulated_resid(
        layer=-1, incl_mid=True, apply_ln=True, pos_slice=-1, return_labels=True
    )
    out["accumulated"], out["accumulated_labels"] = accumulated, labels
    out["decomposed"] = cache.decompose_resid(layer=-1, apply_ln=True, pos_slice=-1)
    cache.compute_head_results()
    out["head_result_1"] = cache["result", 1]
    heads, head_labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
    out["heads"], out["head_labels"] = heads, head_labels
    neurons, neuron_labels = cache.stack_neuron_results(layer=cfg.n_layers, pos_slice=-1, return_labels=True,
                                                        incl_remainder=True)  # fmt: skip
    out["neurons"], out["neuron_labels"] = neurons, neuron_labels
    full, full_labels = cache.get_full_resid_decomposition(pos_slice=-1, return_labels=True)
    out["full"], out["full_labels"] = full, full_labels
    out["full_mlp_layers"] = cache.get_full_resid_decomposition(layer=1, mlp_input=True, expand_neurons=False,
                                                               apply_ln=True)  # fmt: skip
    mary, john = model.to_single_token(" mary"), model.to_single_token(" john")
    out["logit_attrs"] = cache.logit_attrs(heads, tokens=mary, incorrect_tokens=john, pos_slice=-1)
    out["residual_direction"] = model.tokens_to_residual_directions(" mary")

    layer, head = 0, 1

    def ablate_head(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z[:, :, head, :] = 0.0
        return z

    out["ablated_loss"] = model.run_with_hooks(
        tokens, return_type="loss", fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate_head)]
    )
    model.blocks[layer].attn.hook_z.add_hook(ablate_head)
    out["ablated_by_attribute"] = model(tokens, return_type="loss")
    model.reset_hooks()
    out["after_reset"] = model(tokens, return_type="loss")

    def double(resid: torch.Tensor, hook: Any) -> torch.Tensor:
        return resid * 2

    model.hook_dict["blocks.1.hook_resid_pre"].add_hook(double)
    out["doubled_by_hook_dict"] = model(tokens, return_type="loss")
    model.hook_dict["blocks.1.hook_resid_pre"].remove_hooks()
    out["after_remove_hooks"] = model(tokens, return_type="loss")
    out["mod_dict_has_hook_z"] = "blocks.0.attn.hook_z" in model.mod_dict
    model.ln_final.hook_scale.add_hook(lambda scale, hook: scale * 3)
    out["scaled_final"] = model(tokens)
    model.reset_hooks()
    model.hook_embed.add_hook(lambda embed, hook: embed * 0.5)
    out["halved_embed"] = model(tokens)
    model.reset_hooks()

    patterns = []
    model.add_hook("blocks.1.attn.hook_pattern", lambda p, hook: patterns.append(p.clone()), is_permanent=True)
    model.reset_hooks()  # keeps the permanent hook
    out["permanent_after_reset"] = model(tokens)
    model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", ablate_head)])
    out["permanent_calls"] = len(patterns)
    out["permanent_pattern"] = patterns[0]
    model.reset_hooks(including_permanent=True)
    model(tokens)
    out["calls_after_full_reset"] = len(patterns)

    out["gen_str"] = model.generate(PROMPT, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False,
                                    use_past_kv_cache=True, return_type="str")  # fmt: skip
    out["gen_default_str"] = model.generate(TEXT, max_new_tokens=4, do_sample=False, verbose=False)
    out["gen_tokens"] = model.generate(
        tokens, max_new_tokens=6, do_sample=False, use_past_kv_cache=False, verbose=False
    )
    stop = int(out["gen_tokens"][0, -4])
    out["gen_eos"] = model.generate(tokens, max_new_tokens=6, do_sample=False, eos_token_id=stop, verbose=False)

    out["W_E"], out["W_U"], out["W_Q"], out["W_O"], out["W_in"] = model.W_E, model.W_U, model.W_Q, model.W_O, model.W_in
    out["b_O"] = model.blocks[0].attn.b_O
    out["ln_final.w"] = model.ln_final.w
    return out


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert ours.keys() == theirs.keys()
    for name, expected in theirs.items():
        got = ours[name]
        if isinstance(expected, torch.Tensor):
            torch.testing.assert_close(got.detach().float(), expected.detach().float(), atol=2e-5, rtol=1e-4, msg=name)
        else:
            assert got == expected, name


def test_main_demo_script_gives_hooked_transformers_numbers(models):
    bridge, hooked = models
    torch.manual_seed(0)
    theirs = main_demo(hooked)
    ours = main_demo(bridge)
    compare(ours, theirs)
    assert theirs["permanent_calls"] == 2 and theirs["calls_after_full_reset"] == 2  # the script tests what it says
    assert not torch.equal(theirs["ablated_loss"], theirs["loss"])
