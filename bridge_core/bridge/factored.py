"""`FactoredMatrix`: a product `A @ B` kept as its two factors, and the per-head OV and QK circuits.

Used by weight views (`bridge.blocks[i].attn.OV`) and analysis code; the full `[d_model, d_model]`
product is only formed when asked for (`.AB`). Shapes: `A [..., ldim, mdim]`, `B [..., mdim, rdim]`.
"""

from __future__ import annotations

from typing import Any

import torch


class FactoredMatrix:
    """The matrix `A @ B` (batched over leading dims), stored as `A` and `B`."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor) -> None:
        if A.dim() < 2 or B.dim() < 2:
            raise ValueError(f"factors must be at least 2-D, got A {tuple(A.shape)} and B {tuple(B.shape)}")
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(f"inner dimensions differ: A {tuple(A.shape)} @ B {tuple(B.shape)}")
        batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        self.A = A.expand(*batch, *A.shape[-2:])
        self.B = B.expand(*batch, *B.shape[-2:])
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]

    # ------------------------------------------------------------------ shape and products
    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.A.shape[:-2], self.ldim, self.rdim))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def AB(self) -> torch.Tensor:
        """The full product `[..., ldim, rdim]`."""
        return self.A @ self.B

    @property
    def BA(self) -> torch.Tensor:
        """The product in the other order `[..., mdim, mdim]`; needs a square matrix (ldim == rdim)."""
        if self.ldim != self.rdim:
            raise ValueError(f"BA needs ldim == rdim, got {self.ldim} and {self.rdim}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    def __matmul__(self, other: Any) -> FactoredMatrix | torch.Tensor:
        if isinstance(other, FactoredMatrix):
            if self.mdim <= other.mdim:  # keep the narrower inner dimension
                return FactoredMatrix(self.A, self.B @ other.AB)
            return FactoredMatrix(self.AB @ other.A, other.B)
        if other.dim() == 1:  # a vector: the result is a plain tensor
            return (self.A @ (self.B @ other[:, None]))[..., 0]
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other: torch.Tensor) -> FactoredMatrix | torch.Tensor:
        if other.dim() == 1:
            return ((other[None, :] @ self.A) @ self.B)[..., 0, :]
        return FactoredMatrix(other @ self.A, self.B)

    def __mul__(self, scalar: float | torch.Tensor) -> FactoredMatrix:
        """Scaling by a number (or a tensor broadcast over the leading dims, e.g. `[n_heads, 1, 1]`)."""
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    def __getitem__(self, index: Any) -> FactoredMatrix:
        """Index the leading (batch) dimensions only: `OV[layer, head]`."""
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > self.ndim - 2:
            raise IndexError(f"only the {self.ndim - 2} leading dimensions can be indexed")
        return FactoredMatrix(self.A[index], self.B[index])

    # ------------------------------------------------------------------ spectra
    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`U [..., ldim, k]`, `S [..., k]`, `V [..., rdim, k]` with `U @ diag(S) @ V^T == AB`.

        k = min(ldim, mdim, rdim). Computed from the factors (never from `AB`): svd(A), svd(B),
        then the svd of the small middle matrix. As in TransformerLens the third result is `V`, not its transpose.
        """
        Ua, Sa, Vha = torch.linalg.svd(self.A, full_matrices=False)
        Ub, Sb, Vhb = torch.linalg.svd(self.B, full_matrices=False)
        middle = Sa[..., :, None] * (Vha @ Ub) * Sb[..., None, :]
        Um, S, Vhm = torch.linalg.svd(middle, full_matrices=False)
        U = Ua @ Um
        V = Vhb.transpose(-2, -1) @ Vhm.transpose(-2, -1)
        return U, S, V

    @property
    def S(self) -> torch.Tensor:
        return self.svd()[1]

    @property
    def eigenvalues(self) -> torch.Tensor:
        """The `mdim` eigenvalues of `BA` (complex): the non-zero eigenvalues of `AB` are among them."""
        return torch.linalg.eigvals(self.BA)

    def norm(self) -> torch.Tensor:
        """Frobenius norm of `AB` per leading index (from the singular values)."""
        return self.S.pow(2).sum(-1).sqrt()

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape {tuple(self.shape)}, mdim {self.mdim})"


def OV(bridge: Any, layer: int | None = None) -> FactoredMatrix:
    """The OV circuits `W_V @ W_O`: `[n_layers, n_heads, d_model, d_model]`, or `[n_heads, ...]` for one layer."""
    if layer is not None:
        return bridge.blocks[layer].attn.OV
    return FactoredMatrix(
        torch.stack([b.attn.W_V for b in bridge.blocks]), torch.stack([b.attn.W_O for b in bridge.blocks])
    )


def QK(bridge: Any, layer: int | None = None) -> FactoredMatrix:
    """The QK circuits `W_Q @ W_K^T`: `[n_layers, n_heads, d_model, d_model]`, or `[n_heads, ...]` for one layer."""
    if layer is not None:
        return bridge.blocks[layer].attn.QK
    W_Q = torch.stack([b.attn.W_Q for b in bridge.blocks])
    W_K = torch.stack([b.attn.W_K for b in bridge.blocks])
    return FactoredMatrix(W_Q, W_K.transpose(-2, -1))
