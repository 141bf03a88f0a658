"""FactoredMatrix algebra against dense products, and OV / QK circuits against raw HF weights (GPT-2, GQA Gemma)."""

from __future__ import annotations

import torch

from bridge_core.bridge import factored
from bridge_core.bridge.factored import FactoredMatrix

from .conftest import tiny


def _pair(*batch: int, left: int = 6, m: int = 3, r: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, left, m, generator=g, dtype=torch.float64), torch.randn(
        *batch, m, r, generator=g, dtype=torch.float64
    )


def test_factored_products_transpose_and_indexing_match_dense():
    A, B = _pair(2, 4)
    fm = FactoredMatrix(A, B)
    assert fm.shape == (2, 4, 6, 5) and (fm.ldim, fm.mdim, fm.rdim) == (6, 3, 5)
    torch.testing.assert_close(fm.AB, A @ B)
    torch.testing.assert_close(fm.T.AB, (A @ B).mT)
    torch.testing.assert_close(fm[1, 2].AB, A[1, 2] @ B[1, 2])
    torch.testing.assert_close((fm * 2.5).AB, 2.5 * A @ B)
    M = torch.randn(5, 7, dtype=torch.float64)
    torch.testing.assert_close((fm @ M).AB, A @ B @ M)
    v = torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(fm @ v, A @ B @ v)
    N = torch.randn(8, 6, dtype=torch.float64)
    torch.testing.assert_close((N @ fm).AB, N @ A @ B)
    w = torch.randn(6, dtype=torch.float64)
    torch.testing.assert_close(w @ fm, w @ (A @ B))
    C, D = _pair(2, 4, left=5, m=2, r=4, seed=1)
    torch.testing.assert_close((fm @ FactoredMatrix(C, D)).AB, A @ B @ C @ D)
    assert (fm @ FactoredMatrix(C, D)).mdim == 2  # the narrower inner dimension is kept


def test_svd_norm_and_eigenvalues_match_dense_linear_algebra():
    A, B = _pair(3, left=6, m=3, r=6)
    fm = FactoredMatrix(A, B)
    U, S, V = fm.svd()
    assert U.shape == (3, 6, 3) and S.shape == (3, 3) and V.shape == (3, 6, 3)
    torch.testing.assert_close(U @ torch.diag_embed(S) @ V.mT, A @ B)
    torch.testing.assert_close(S, torch.linalg.svdvals(A @ B)[..., :3])
    torch.testing.assert_close(U.mT @ U, torch.eye(3, dtype=torch.float64).expand(3, 3, 3))
    torch.testing.assert_close(fm.norm(), torch.linalg.matrix_norm(A @ B))
    dense = torch.linalg.eigvals(A @ B)  # rank 3: three non-zero eigenvalues, the same as BA's
    top = dense.gather(-1, dense.abs().argsort(-1, descending=True)[..., :3])
    ours = fm.eigenvalues
    key = lambda e: torch.sort(e.real * 1000 + e.imag, -1).values  # noqa: E731
    torch.testing.assert_close(key(ours), key(top))
    torch.testing.assert_close(fm.BA, B @ A)


def test_ov_and_qk_of_gpt2_match_raw_conv1d_weights():
    bridge, reference = tiny("gpt2")
    h, dh, d = 4, 16, 64
    for layer in range(2):
        attn = reference.transformer.h[layer].attn
        qkv = attn.c_attn.weight  # Conv1D [d_model, 3 * d_model] laid out [q | k | v]
        ov, qk = factored.OV(bridge, layer), factored.QK(bridge, layer)
        assert ov.shape == (h, d, d) and qk.shape == (h, d, d)
        for head in range(h):
            cols = slice(head * dh, (head + 1) * dh)
            W_Q, W_K, W_V = qkv[:, cols], qkv[:, d:][:, cols], qkv[:, 2 * d :][:, cols]
            W_O = attn.c_proj.weight[cols]
            torch.testing.assert_close(ov.AB[head], W_V @ W_O, atol=1e-6, rtol=0)
            torch.testing.assert_close(qk.AB[head], W_Q @ W_K.T, atol=1e-6, rtol=0)
    every = factored.OV(bridge)
    assert every.shape == (2, h, d, d)
    torch.testing.assert_close(every[1].AB, factored.OV(bridge, 1).AB)
    assert bridge.blocks[0].attn.OV.shape == (h, d, d)


def test_ov_and_qk_of_gqa_gemma_expand_shared_kv_heads():
    bridge, reference = tiny("gemma")  # 4 query heads, 2 kv heads, d_head 24
    h, kv, dh = 4, 2, 24
    for layer in range(2):
        attn = reference.model.layers[layer].self_attn
        ov, qk = factored.OV(bridge)[layer], factored.QK(bridge)[layer]
        for head in range(h):
            group = head // (h // kv)
            W_Q = attn.q_proj.weight[head * dh : (head + 1) * dh].T  # Linear [out, in]
            W_K = attn.k_proj.weight[group * dh : (group + 1) * dh].T
            W_V = attn.v_proj.weight[group * dh : (group + 1) * dh].T
            W_O = attn.o_proj.weight[:, head * dh : (head + 1) * dh].T
            torch.testing.assert_close(ov.AB[head], W_V @ W_O, atol=1e-6, rtol=0)
            torch.testing.assert_close(qk.AB[head], W_Q @ W_K.T, atol=1e-6, rtol=0)
