"""The values the binder accepts for choice fields a spec may state as an expression over the HF config
(a block's `kind`, a fused projection's `order`): checked when the expression is evaluated at binding,
so they live apart from the pydantic schema, which a first bridge does not import (plain.py)."""

BLOCK_KINDS = ("sequential", "parallel", "post_norm")
GROUPED_QKV_ORDERS = ("grouped_qkv", "grouped_qvk", "grouped_kqv", "grouped_kvq", "grouped_vqk", "grouped_vkq")
QKV_ORDERS = ("qkv", "per_head_interleaved", *GROUPED_QKV_ORDERS)
