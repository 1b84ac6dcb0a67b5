"""Pair geometry for both layouts (see ``nbops``).

Masked pairs (self pairs, padding atoms, unused neighbour slots) get the squared distance
``fill = cutoff**2`` BEFORE the square root: that keeps sqrt away from 0 (no NaN gradients),
makes every cutoff function exactly 0 there and blocks gradients through those entries.
"""

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from . import nbops
from .keys import Key


def dense_pairs(coord: Tensor, numbers: Tensor, fill: float) -> Tuple[Tensor, Tensor, Tensor]:
    """All pairs within each molecule of a padded batch.

    coord: (B, N, 3) Å; numbers: (B, N), 0 = padding; fill: squared distance (Å²) for masked pairs.
    Returns d_ij (B, N, N) Å, r_ij (B, N, N, 3) = x_j - x_i, pair_mask (B, N, N) True = not a pair.
    """
    n = coord.shape[1]
    r_ij = coord.unsqueeze(1) - coord.unsqueeze(2)
    pad = numbers == 0
    eye = torch.eye(n, dtype=torch.bool, device=coord.device).unsqueeze(0)
    pair_mask = eye | pad.unsqueeze(1) | pad.unsqueeze(2)
    d2 = (r_ij * r_ij).sum(-1).masked_fill(pair_mask, fill)
    return d2.sqrt(), r_ij, pair_mask


def flat_pairs(coord: Tensor, nbmat: Tensor, fill: float, shifts: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Pairs from a neighbour matrix.

    coord: (A, 3) Å with a trailing dummy atom; nbmat: (A, M) neighbour indices, A-1 = empty slot;
    shifts: (A, M, 3) Å Cartesian image shifts added to x_j (zeros for non-periodic systems).
    Returns d_ij (A, M), r_ij (A, M, 3), pair_mask (A, M).
    """
    dummy = coord.shape[0] - 1
    r_ij = nbops.take_rows(coord, nbmat) - coord.unsqueeze(1) + shifts
    pair_mask = nbmat == dummy
    d2 = (r_ij * r_ij).sum(-1).masked_fill(pair_mask, fill)
    return d2.sqrt(), r_ij, pair_mask


def pair_list_vectors(coord: Tensor, pairs: Tensor, shifts: Optional[Tensor]) -> Tensor:
    """r_ij (P, 3) = x_j - x_i + shift of a half pair list. coord: (A, 3) Å; pairs: (2, P) atom
    indices (i, j); shifts: (P, 3) Å Cartesian image shifts added to x_j, or None (none)."""
    r_ij = nbops.take_rows(coord, pairs[1]) - nbops.take_rows(coord, pairs[0])
    if shifts is not None:
        r_ij = r_ij + shifts
    return r_ij


def pair_list_distances(coord: Tensor, pairs: Tensor, shifts: Optional[Tensor]) -> Tensor:
    """Distances d_ij (P,) = |r_ij| of a half pair list (see :func:`pair_list_vectors`). The list
    holds real pairs only (no padding), so there is no mask; coincident atoms are caught by the
    short-range check."""
    r_ij = pair_list_vectors(coord, pairs, shifts)
    return (r_ij * r_ij).sum(-1).sqrt()


def _lr_shifts(data: Dict[str, Tensor]) -> Optional[Tensor]:
    """The long-range list's image shifts ``shifts_lr`` (P, 3) Å, None when absent (zero)."""
    if Key.SHIFTS_LR.value in data:
        return data[Key.SHIFTS_LR.value]
    return None


def long_range_geometry(data: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Add ``d_ij_lr`` and ``pair_mask_lr`` for the long-range half pair list ``pairs_lr`` (flat
    layout; ``shifts_lr`` (P, 3) Å optional, zero when absent)."""
    pairs = data[Key.PAIRS_LR.value]
    d = pair_list_distances(data[Key.COORD.value], pairs, _lr_shifts(data))
    data[Key.D_IJ_LR.value] = d
    data[Key.PAIR_MASK_LR.value] = torch.zeros(d.shape, dtype=torch.bool, device=d.device)
    return data


def unit_vectors(r_ij: Tensor, d_ij: Tensor) -> Tensor:
    """u_ij = r_ij / d_ij (0 on self pairs, whose r is 0 and d the fill distance)."""
    return r_ij / d_ij.unsqueeze(-1)


def min_real_distance(d_ij: Tensor, pair_mask: Tensor) -> Tensor:
    """Smallest distance over real pairs (inf when there is none)."""
    return d_ij.masked_fill(pair_mask, float("inf")).min()


def pair_geometry(data: Dict[str, Tensor], fill: float) -> Dict[str, Tensor]:
    """Add ``d_ij``, ``u_ij`` and ``pair_mask`` (short-range pairs) to the batch dict."""
    if data[Key.COORD.value].dim() == 3:
        d_ij, r_ij, pair_mask = dense_pairs(data[Key.COORD.value], data[Key.NUMBERS.value], fill)
    else:
        nbmat = data[Key.NBMAT.value]
        if Key.SHIFTS.value in data:
            shifts = data[Key.SHIFTS.value]
        else:
            shifts = torch.zeros(nbmat.shape[0], nbmat.shape[1], 3, dtype=data[Key.COORD.value].dtype,
                                 device=nbmat.device)
        d_ij, r_ij, pair_mask = flat_pairs(data[Key.COORD.value], nbmat, fill, shifts)
    data[Key.D_IJ.value] = d_ij
    data[Key.U_IJ.value] = unit_vectors(r_ij, d_ij)
    data[Key.PAIR_MASK.value] = pair_mask
    return data


def flat_geometry_vjp(data: Dict[str, Tensor], g_d: Tensor, g_u: Tensor,
                      g_d_lr: Optional[Tensor], need_virial: bool = True) -> Tuple[Tensor, Tensor]:
    """Hand-written VJP of the flat layout's pair geometry (:func:`pair_geometry`,
    :func:`long_range_geometry`): dE/dd_ij (A, M), dE/du_ij (A, M, 3) of the short-range pairs
    and dE/dd (P,) of the long-range half list (or None) -> (dE/dx (A, 3) eV/Å, the virial
    Σ_pairs r_ij ⊗ dE/dr_ij (3, 3) eV, which is dE/dε of a homogeneous strain x -> x (1 + ε);
    zeros unless ``need_virial``). Masked pairs have a constant distance and no gradient."""
    coord = data[Key.COORD.value]
    nbmat = data[Key.NBMAT.value]
    mask = data[Key.PAIR_MASK.value].unsqueeze(-1)
    d = data[Key.D_IJ.value].unsqueeze(-1)
    u = data[Key.U_IJ.value]
    # u = r/d: du/dr = (I - u uᵀ)/d; d = |r|: dd/dr = u
    g_r = g_d.unsqueeze(-1) * u + (g_u - u * (u * g_u).sum(-1, keepdim=True)) / d
    g_r = g_r.masked_fill(mask, 0.0).reshape(-1, 3)
    g_x = torch.zeros_like(coord).index_add(0, nbmat.reshape(-1), g_r)
    g_x = g_x - g_r.reshape(nbmat.shape[0], nbmat.shape[1], 3).sum(1)
    virial = torch.zeros(3, 3, dtype=coord.dtype, device=coord.device)
    if need_virial:
        r = (u * d).masked_fill(mask, 0.0).reshape(-1, 3)
        virial = r.t() @ g_r
    if g_d_lr is not None:
        pairs = data[Key.PAIRS_LR.value]
        r_lr = pair_list_vectors(coord, pairs, _lr_shifts(data))
        g_r_lr = (g_d_lr / data[Key.D_IJ_LR.value]).unsqueeze(-1) * r_lr
        g_x = g_x.index_add(0, pairs[1], g_r_lr).index_add(0, pairs[0], -g_r_lr)
        if need_virial:
            virial = virial + r_lr.t() @ g_r_lr
    return g_x, virial
