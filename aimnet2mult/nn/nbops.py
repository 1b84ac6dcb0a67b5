"""Neighbor operations: the one seam between the two evaluation layouts.

Every network part is written in terms of "atom tensors" and "pair tensors" and the few
functions below, so the same math serves both layouts:

* dense (``coord`` is (B, N, 3)): molecules padded to N atoms (``numbers == 0`` marks padding).
  Atom tensors are (B, N, ...), pair tensors (B, N, N, ...) with j running over all atoms of the
  same molecule.
* flat (``coord`` is (A, 3)): all atoms concatenated plus one trailing dummy atom (index A-1,
  ``numbers == 0``); ``nbmat`` (A, M) lists neighbour indices, unused slots hold A-1.
  Atom tensors are (A, ...), pair tensors (A, M, ...); ``mol_idx`` (A,) gives each atom's molecule.

The layout is read from ``data['coord'].dim()``. Pair masks are True where a pair is NOT real
(self pair, padding, unused neighbour slot).
"""

from typing import Dict

import torch
from torch import Tensor


def is_dense(data: Dict[str, Tensor]) -> bool:
    """True for the dense padded layout (coord (B, N, 3)), False for the flat layout (A, 3)."""
    return data["coord"].dim() == 3


def neighbor_dim(data: Dict[str, Tensor]) -> int:
    """Index of the neighbour (j) axis of pair tensors: 2 in dense (B,N,N), 1 in flat (A,M)."""
    return 2 if is_dense(data) else 1


def gather_j(x: Tensor, data: Dict[str, Tensor], nbmat_key: str = "nbmat") -> Tensor:
    """Values of neighbour j for every pair.

    x: atom tensor (B, N, ...) or (A, ...). Returns a pair tensor (B, N, N, ...) or (A, M, ...).
    In the dense layout the result is an expanded view (no copy).
    """
    if is_dense(data):
        b, n = x.shape[0], x.shape[1]
        shape = [b, n] + list(x.shape[1:])
        return x.unsqueeze(1).expand(shape)
    return x[data[nbmat_key]]


def atom_i(x: Tensor, data: Dict[str, Tensor]) -> Tensor:
    """Atom tensor broadcastable against pair tensors (inserts the neighbour axis)."""
    return x.unsqueeze(neighbor_dim(data))


def sum_j(x: Tensor, data: Dict[str, Tensor]) -> Tensor:
    """Sum a pair tensor over neighbours j: (B,N,N,...)->(B,N,...) or (A,M,...)->(A,...)."""
    return x.sum(neighbor_dim(data))


def num_molecules(data: Dict[str, Tensor]) -> int:
    if is_dense(data):
        return data["coord"].shape[0]
    return int(data["charge"].shape[0])


def mol_sum(x: Tensor, data: Dict[str, Tensor]) -> Tensor:
    """Per-molecule sum of an atom tensor: (B,N,...)->(B,...) or (A,...)->(n_mol,...).

    Padding / dummy atoms must already hold zeros. The result keeps the input dtype: cast to
    float64 before calling for energy sums.
    """
    if is_dense(data):
        return x.sum(1)
    shape = [num_molecules(data)] + list(x.shape[1:])
    out = torch.zeros(shape, dtype=x.dtype, device=x.device)
    return out.index_add(0, data["mol_idx"], x)


def mol_to_atoms(x: Tensor, data: Dict[str, Tensor]) -> Tensor:
    """Broadcast a per-molecule tensor to atoms: (B,...)->(B,1,...) or (n_mol,...)->(A,...)."""
    if is_dense(data):
        return x.unsqueeze(1)
    return x[data["mol_idx"]]


def atom_mask(data: Dict[str, Tensor]) -> Tensor:
    """True for real atoms, False for padding (dense) or the trailing dummy (flat)."""
    return data["numbers"] != 0
