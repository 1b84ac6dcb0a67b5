"""Neighbor operations: the one seam between the evaluation layouts.

Every network part is written in terms of "atom tensors" and "pair tensors" and the few
functions below, so the same math serves every layout:

* dense (``coord`` is (B, N, 3)): molecules padded to N atoms (``numbers == 0`` marks padding).
  Atom tensors are (B, N, ...), pair tensors (B, N, N, ...) with j running over all atoms of the
  same molecule.
* flat (``coord`` is (A, 3)): all atoms concatenated plus one trailing dummy atom (index A-1,
  ``numbers == 0``); ``mol_idx`` (A,) gives each atom's molecule (the dummy takes the last one).
  Atom tensors are (A, ...). Pair tensors come in two forms, chosen by the neighbour-list key:

  - padded neighbour matrix (any key not starting with ``"pairs"``, e.g. ``nbmat``,
    ``nbmat_lr``): ``data[key]`` is (A, M), row i lists the neighbours j of atom i (a FULL list:
    every pair appears as i->j and j->i), unused slots hold A-1. Pair tensors are (A, M, ...).
  - half pair list (keys starting with ``"pairs"``, e.g. ``pairs_lr``): ``data[key]`` is (2, P),
    every unordered pair (i, j) once (periodic images count as separate pairs; an atom and its own
    image appear as (i, i)). Pair tensors are (P, ...). ``sum_j`` adds each pair value to BOTH
    atoms, which is the full-list sum for the symmetric quantities it is used for (pair energies,
    coordination-number counts). The long-range terms (Coulomb, D3) run on this form: half the
    pairs of a full list and no padding.

The layout is read from ``data['coord'].dim()``. Pair masks are True where a pair is NOT real
(self pair, padding, unused neighbour slot).
"""

from typing import Dict

import torch
from torch import Tensor

from .keys import Key


def is_dense(data: Dict[str, Tensor]) -> bool:
    """True for the dense padded layout (coord (B, N, 3)), False for the flat layout (A, 3)."""
    return data[Key.COORD.value].dim() == 3


def is_pair_list(key: str) -> bool:
    """True if the neighbour key names a half pair list (2, P) rather than a padded matrix."""
    return key.startswith("pairs")


def neighbor_dim(data: Dict[str, Tensor]) -> int:
    """Index of the neighbour (j) axis of padded pair tensors: 2 in dense (B,N,N), 1 in flat (A,M)."""
    return 2 if is_dense(data) else 1


def take_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]`` for an integer index tensor of any shape, by ``index_select`` (whose backward is
    an ``index_add``; advanced indexing's backward is a much slower ``index_put``)."""
    if idx.dim() == 1:  # the common case: no reshapes (each a dispatched operator)
        return torch.index_select(x, 0, idx)
    out = torch.index_select(x, 0, idx.reshape(-1))
    return out.reshape(list(idx.shape) + list(x.shape[1:]))


def gather_j(x: Tensor, data: Dict[str, Tensor], nbmat_key: str = Key.NBMAT.value) -> Tensor:
    """Values of neighbour j for every pair.

    x: atom tensor (B, N, ...) or (A, ...). Returns a pair tensor (B, N, N, ...), (A, M, ...) or
    (P, ...). In the dense layout the result is an expanded view (no copy).
    """
    if is_dense(data):
        b, n = x.shape[0], x.shape[1]
        shape = [b, n] + list(x.shape[1:])
        return x.unsqueeze(1).expand(shape)
    if is_pair_list(nbmat_key):
        return take_rows(x, data[nbmat_key][1])
    return take_rows(x, data[nbmat_key])


def atom_i(x: Tensor, data: Dict[str, Tensor], nbmat_key: str = Key.NBMAT.value) -> Tensor:
    """Values of atom i for every pair: broadcastable against pair tensors (inserts the neighbour
    axis) for padded layouts, gathered (P, ...) for a pair list."""
    if not is_dense(data) and is_pair_list(nbmat_key):
        return take_rows(x, data[nbmat_key][0])
    return x.unsqueeze(neighbor_dim(data))


def sum_j(x: Tensor, data: Dict[str, Tensor], nbmat_key: str = Key.NBMAT.value) -> Tensor:
    """Sum a pair tensor over neighbours j: (B,N,N,...)->(B,N,...), (A,M,...)->(A,...).

    For a half pair list (P, ...) -> (A, ...), each pair value goes to both of its atoms.
    """
    if not is_dense(data) and is_pair_list(nbmat_key):
        pairs = data[nbmat_key]
        shape = [data[Key.COORD.value].shape[0]] + list(x.shape[1:])
        out = torch.zeros(shape, dtype=x.dtype, device=x.device)
        return out.index_add(0, pairs[0], x).index_add(0, pairs[1], x)
    return x.sum(neighbor_dim(data))


def gather_ij(table: Tensor, col: Tensor, data: Dict[str, Tensor], nbmat_key: str = Key.NBMAT.value) -> Tensor:
    """Row i, column ``col_ij`` of a per-atom table, for every pair.

    table: atom tensor (B, N, U, K) or (A, U, K); col: integer pair tensor with values in 0..U-1.
    Returns a pair tensor (..., K) with ``out[pair] = table[i, col[pair]]``.
    """
    k = table.shape[-1]
    if is_dense(data):
        idx = col.unsqueeze(-1).expand(list(col.shape) + [k])
        return torch.gather(table, 2, idx)
    a, u = table.shape[0], table.shape[1]
    if is_pair_list(nbmat_key):
        rows = data[nbmat_key][0]
    else:
        rows = torch.arange(a, device=col.device).unsqueeze(1)
    return take_rows(table.reshape(a * u, k), rows * u + col)


def num_molecules(data: Dict[str, Tensor]) -> int:
    if is_dense(data):
        return data[Key.COORD.value].shape[0]
    return int(data[Key.CHARGE.value].shape[0])


def mol_sum(x: Tensor, data: Dict[str, Tensor]) -> Tensor:
    """Per-molecule sum of an atom tensor: (B,N,...)->(B,...) or (A,...)->(n_mol,...).

    Padding / dummy atoms must already hold zeros. The result keeps the input dtype: cast to
    float64 before calling for energy sums (a segment sum by ``index_add`` in the flat layout).
    """
    if is_dense(data):
        return x.sum(1)
    if num_molecules(data) == 1:
        return x.sum(0, keepdim=True)
    shape = [num_molecules(data)] + list(x.shape[1:])
    out = torch.zeros(shape, dtype=x.dtype, device=x.device)
    return out.index_add(0, data[Key.MOL_IDX.value], x)


def mol_to_atoms(x: Tensor, data: Dict[str, Tensor]) -> Tensor:
    """Broadcast a per-molecule tensor to atoms: (B,...)->(B,1,...) or (n_mol,...)->(A,...)."""
    if is_dense(data):
        return x.unsqueeze(1)
    if x.shape[0] == 1:
        # one molecule: a view, no gather (and no scatter in the backward pass)
        return x.expand([data[Key.MOL_IDX.value].shape[0]] + list(x.shape[1:]))
    return take_rows(x, data[Key.MOL_IDX.value])


def atom_mask(data: Dict[str, Tensor]) -> Tensor:
    """True for real atoms, False for padding (dense) or the trailing dummy (flat)."""
    return data[Key.NUMBERS.value] != 0
