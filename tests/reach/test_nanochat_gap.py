"""NanoChat calls one parameter-free RMSNorm (`model.norm`) twice in a forward: after the token embedding and
as the final norm. The spec language places a role's hooks on a module, every call of it, so a module in two
roles would fire each hook twice (decision 0024 names what is missing). The draft names the gap, read from
HF's own forward."""

from __future__ import annotations

import torch
import transformers

from bridge_core.drafting.drafter import draft_model_type


def test_one_norm_in_two_roles_is_a_named_gap_and_hf_calls_it_twice():
    draft = draft_model_type("nanochat")
    gaps = {g.item: g.detail for g in draft.gaps}
    assert gaps["one norm module in two roles"].startswith("model.norm is called 2 times in one forward")
    config = transformers.AutoConfig.for_model("nanochat", **draft.fields["test_config"])
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    seen: list[torch.Tensor] = []
    handle = model.model.norm.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    layer = model.model.layers[0]
    first: list[torch.Tensor] = []
    handle_first = layer.register_forward_pre_hook(
        lambda module, args, kwargs: first.append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]),
        with_kwargs=True,
    )
    tokens = torch.randint(0, config.vocab_size, (1, 5))
    try:
        with torch.no_grad():
            model(input_ids=tokens)
    finally:
        handle.remove()
        handle_first.remove()
    assert len(seen) == 2  # the same module: embeddings first, the last block's output second
    torch.testing.assert_close(seen[0], model.model.embed_tokens.weight[tokens], rtol=0, atol=0)
    torch.testing.assert_close(model.model.norm(seen[0]), first[0], rtol=0, atol=0)
