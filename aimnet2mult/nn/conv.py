"""Shell convolutions of AIMNet2 (scalar and vector parts), for atom features and charges."""

from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from . import nbops
from .basis import PairBasis
from .keys import Key


def shell_sums(x: Tensor, basis: PairBasis, data: Dict[str, Tensor], agh: Tensor) -> Tuple[Tensor, Tensor]:
    """The two parts of a shell convolution (see :class:`ShellConvolution`) with mixing weights
    ``agh`` (F, G, H): S (A..., F, G) and P (A..., F, H); ``basis`` in the layout's form
    (:class:`~aimnet2mult.nn.basis.PairBasis`). Channels are independent, so several convolutions
    over the same pairs run as one by concatenating their channels (and ``agh``)."""
    if nbops.is_dense(data):
        s = torch.einsum("bijg,bjfg->bifg", basis.gs, x)
        t = torch.einsum("bijgx,bjfg->bifgx", basis.gv, x)
        v = torch.einsum("...fgx,fgh->...fhx", t, agh)
        return s, (v * v).sum(-1)
    s, p, _, _ = flat_shell_sums_recorded(x, basis.w, data[Key.NBMAT.value], agh)
    return s, p


def flat_shell_sums_recorded(x: Tensor, w: Tensor, nbmat: Tensor, agh: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The flat layout's :func:`shell_sums`, also returning what :func:`flat_shell_sums_vjp`
    needs: (S (A, K, G), P (A, K, H), x_j (G, A, M, K), V (K, A, 3, H)). x (A, K, G); w the flat
    pair basis (G, A, 4, M); nbmat (A, M)."""
    x_g = x.permute(2, 0, 1).contiguous()  # (G, A, K)
    # index_select: its backward is an index_add (advanced indexing's is a slower index_put)
    x_j = torch.index_select(x_g, 1, nbmat.reshape(-1)).reshape(
        x_g.shape[0], nbmat.shape[0], nbmat.shape[1], x_g.shape[2])  # (G, A, M, K)
    s, p, v = _sums_from_products(torch.matmul(w, x_j), agh)
    return s, p, x_j, v


def _sums_from_products(res: Tensor, agh: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """res (G, A, 4, K) = Σ_j [gs | gv]_ij x_j per shell -> (S (A, K, G), P (A, K, H), V (K, A, 3, H)).

    The mixing over shells is one batched product per channel, (K, 3A, G)(K, G, H), written out
    rather than as an einsum (which pays its planning and the same transposes on every call)."""
    n_g, n_a, n_k = res.shape[0], res.shape[1], res.shape[3]
    s, t = torch.split(res, [1, 3], dim=2)
    s = s.squeeze(2).permute(1, 2, 0)  # (A, K, G)
    v = torch.bmm(t.permute(3, 1, 2, 0).reshape(n_k, n_a * 3, n_g), agh)  # (K, 3A, H)
    v = v.view(n_k, n_a, 3, v.shape[-1])
    return s, (v * v).sum(2).permute(1, 0, 2), v


def _products_grad(g_s: Tensor, g_p: Tensor, v: Tensor, agh: Tensor) -> Tensor:
    """VJP of :func:`_sums_from_products`: g_s (A, K, G), g_p (A, K, H), V (K, A, 3, H) -> gradient
    of res (G, A, 4, K)."""
    n_k, n_a, n_h = v.shape[0], v.shape[1], v.shape[3]
    n_g = agh.shape[1]
    g_v = v * (2.0 * g_p.permute(1, 0, 2).unsqueeze(2))  # (K, A, 3, H)
    g_t = torch.bmm(g_v.view(n_k, n_a * 3, n_h), agh.transpose(1, 2))  # (K, 3A, G)
    g_res = torch.empty(n_g, n_a, 4, n_k, dtype=g_s.dtype, device=g_s.device)
    g_res[:, :, 0, :] = g_s.permute(2, 0, 1)
    g_res[:, :, 1:, :] = g_t.view(n_k, n_a, 3, n_g).permute(3, 1, 2, 0)
    return g_res


def flat_shell_sums_vjp(g_s: Tensor, g_p: Tensor, x_j: Tensor, v: Tensor, w: Tensor, nbmat: Tensor,
                        agh: Tensor, need_x: bool) -> Tuple[Tensor, Tensor]:
    """Hand-written VJP of the flat shell sums: g_s (A, K, G), g_p (A, K, H) -> (gradient of the
    pair basis W (G, A, 4, M), gradient of x (A, K, G); empty unless ``need_x``)."""
    g_res = _products_grad(g_s, g_p, v, agh)  # (G, A, 4, K)
    g_w = torch.matmul(g_res, x_j.transpose(-1, -2))  # (G, A, 4, M)
    if not need_x:
        return g_w, torch.empty(0, dtype=g_s.dtype, device=g_s.device)
    g_xj = torch.matmul(w.transpose(-1, -2), g_res)  # (G, A, M, K)
    n_g, n_a, n_m, n_k = g_xj.shape[0], g_xj.shape[1], g_xj.shape[2], g_xj.shape[3]
    g_xg = torch.zeros(n_g, n_a, n_k, dtype=g_s.dtype, device=g_s.device)
    g_xg.index_add_(1, nbmat.reshape(-1), g_xj.reshape(n_g, n_a * n_m, n_k))
    return g_w, g_xg.permute(1, 2, 0)


# ------------------------------------------------------------------------------------------------
# Small systems: the same sums as products of per-shell dense matrices. The flat products above
# are G·A tiny (4 x M)(M x K) matrix products, which BLAS runs one call each (~1 µs of overhead
# apiece, most of a 100-atom call); scattered into S (G, 4A, A) they become G large products,
# and the neighbour gather / scatter of x disappears. Memory G·4·A² floats: small systems only.

def dense_shell_matrices(w: Tensor, nbmat: Tensor) -> Tensor:
    """The flat pair basis W (G, A, 4, M) as per-shell dense matrices S (G, 4A, A):
    S[g, 4a + c, j] = Σ_m W[g, a, c, m] over the m with nbmat[a, m] = j (periodic images of one
    neighbour add up)."""
    n_g, n_a, n_c, n_m = w.shape[0], w.shape[1], w.shape[2], w.shape[3]
    s = torch.zeros(n_g, n_a, n_c, n_a, dtype=w.dtype, device=w.device)
    s.scatter_add_(3, nbmat.view(1, n_a, 1, n_m).expand(n_g, n_a, n_c, n_m), w)
    return s.view(n_g, n_a * n_c, n_a)


def dense_shell_sums_recorded(x: Tensor, s_mat: Tensor, agh: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`flat_shell_sums_recorded` with the pair basis as :func:`dense_shell_matrices`
    (G, 4A, A): (S (A, K, G), P (A, K, H), x_g (G, A, K), V (K, A, 3, H)) for
    :func:`dense_shell_sums_vjp`."""
    x_g = x.permute(2, 0, 1).contiguous()  # (G, A, K)
    res = torch.bmm(s_mat, x_g).view(x_g.shape[0], x_g.shape[1], 4, x_g.shape[2])
    s, p, v = _sums_from_products(res, agh)
    return s, p, x_g, v


def dense_shell_sums_vjp(g_s: Tensor, g_p: Tensor, v: Tensor, s_mat: Tensor, agh: Tensor,
                         need_x: bool) -> Tuple[Tensor, Tensor]:
    """VJP of :func:`dense_shell_sums_recorded`: -> (gradient of the products, g_res (G, 4A, K),
    gradient of x (A, K, G); empty unless ``need_x``). The gradient of S is g_res x_gᵀ: summed
    over passes by :func:`dense_matrices_grad_to_pairs` in one product."""
    g_res = _products_grad(g_s, g_p, v, agh)
    g_res = g_res.reshape(g_res.shape[0], g_res.shape[1] * 4, g_res.shape[3])  # (G, 4A, K)
    if not need_x:
        return g_res, torch.empty(0, dtype=g_s.dtype, device=g_s.device)
    return g_res, torch.bmm(s_mat.transpose(1, 2), g_res).permute(1, 2, 0)


def dense_matrices_grad_to_pairs(g_res: List[Tensor], x_g: List[Tensor], nbmat: Tensor) -> Tensor:
    """Gradient of the flat pair basis W (G, A, 4, M) from the product gradients g_res (G, 4A, K_p)
    and inputs x_g (G, A, K_p) of every convolution: the gradient of S (G, 4A, A),
    Σ_p g_res_p x_pᵀ, as ONE product over the concatenated channels, read at the neighbour
    entries of S."""
    g_mat = torch.bmm(torch.cat(g_res, dim=-1), torch.cat(x_g, dim=-1).transpose(1, 2))  # (G, 4A, A)
    n_g, n_a, n_m = g_mat.shape[0], nbmat.shape[0], nbmat.shape[1]
    g4 = g_mat.view(n_g, n_a, 4, n_a)
    return torch.gather(g4, 3, nbmat.view(1, n_a, 1, n_m).expand(n_g, n_a, 4, n_m))


class ShellConvolution(nn.Module):
    """Per-channel message passing over radial shells.

    For channel features x_j[f, g] (f = channel, g = shell):
      S_i[f, g]    = Σ_j gs_ijg x_j[f, g]                              (scalar part, F*G)
      V_i[f, h, :] = Σ_g A[f, g, h] Σ_j x_j[f, g] gv_ijg               (vector part)
      P_i[f, h]    = |V_i[f, h, :]|²                                    (F*H, rotation invariant)
    Output: [S (F*G) | P (F*H)] flattened row-major.
    Atom features use F = 16 channels with their own value per shell (d2 features); charges use
    F = number of charge channels and the same value for every shell.

    Flat layout: the neighbour features are gathered shell-major, (G, A, M, F), and contracted with
    the pair basis W (G, A, 4, M) of ``RadialBasis.flat_basis`` in ONE batched matrix product per
    convolution, which gives the scalar and the vector sums together. Only the gathered features
    (A·M·F·G values, ~1 GB in float32 for a 12k-atom water box) are kept for the backward pass;
    no (pairs × F × G × 3) tensor is ever formed.
    """

    def __init__(self, num_channels: int, num_shells: int, num_combinations: int):
        super().__init__()
        self.agh = nn.Parameter(torch.empty(num_channels, num_shells, num_combinations))
        nn.init.normal_(self.agh, std=1.0 / (num_shells ** 0.5))

    def forward(self, x: Tensor, basis: PairBasis, data: Dict[str, Tensor]) -> Tensor:
        """x: atom tensor (A..., F, G); basis: the pair basis in the layout's form. Returns
        (A..., F*G + F*H)."""
        s, p = shell_sums(x, basis, data, self.agh)
        return torch.cat([s.flatten(-2), p.flatten(-2)], dim=-1)
