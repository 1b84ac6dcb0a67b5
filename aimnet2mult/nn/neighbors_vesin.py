"""vesin-torch neighbour lists as a swappable builder of the potential (``neighbor_list="vesin"``).

Same interface and outputs as :class:`aimnet2mult.nn.neighbors.TorchCellList`. vesin-torch
registers a TorchScript class: a saved module that uses it loads only in a process that has run
``import vesin_torch`` first (exported potentials record this as ``requires_extensions``, and
``aimnet2mult.export.load_potential`` imports it).
"""

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from vesin_torch import NeighborList

from .neighbors import assemble_lists

__all__ = ["vesin_pairs", "VesinNeighbors"]


def vesin_pairs(coord: Tensor, cell: Tensor, pbc: Tensor, cutoff: float,
                full_list: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(i, j, S) of all pairs closer than ``cutoff`` (Å). coord (N, 3), cell (3, 3) (rows; ignored
    in non-periodic directions), pbc (3,) bool. S (P, 3) int32 image shifts: r_ij = x_j - x_i + S·cell."""
    nl = NeighborList(cutoff=cutoff, full_list=full_list)
    res = nl.compute(points=coord.detach().to(torch.float64), box=cell.detach().to(torch.float64),
                     periodic=pbc, quantities="ijS")
    return res[0].to(torch.long), res[1].to(torch.long), res[2].to(torch.int32)


def same_molecule(i: Tensor, j: Tensor, s: Tensor, mol_idx: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    keep = mol_idx[i] == mol_idx[j]
    return i[keep], j[keep], s[keep]


class VesinNeighbors(nn.Module):
    """Neighbour lists from vesin-torch (cell lists, O(N), periodic with integer cell shifts)."""

    library: str

    def __init__(self):
        super().__init__()
        self.library = "vesin_torch"

    @torch.jit.export
    def pairs(self, coord: Tensor, cell: Tensor, pbc: Tensor, mol_idx: Tensor, cutoff: float,
              full_list: bool) -> Tuple[Tensor, Tensor, Tensor]:
        i, j, s = vesin_pairs(coord, cell, pbc, cutoff, full_list)
        if coord.shape[0] > 0 and bool((mol_idx != mol_idx[0]).any()):
            i, j, s = same_molecule(i, j, s, mol_idx.to(torch.long))
        return i, j, s

    def forward(self, coord: Tensor, cell: Tensor, pbc: Tensor, mol_idx: Tensor, n_mol: int,
                sr_cutoff: float, lr_cutoff: float) -> Dict[str, Tensor]:
        sr = self.pairs(coord, cell, pbc, mol_idx, sr_cutoff, True)
        lr: Optional[Tuple[Tensor, Tensor, Tensor]] = None
        if lr_cutoff > 0.0:
            lr = self.pairs(coord, cell, pbc, mol_idx, lr_cutoff, False)
        return assemble_lists(coord.shape[0], sr, lr, mol_idx, n_mol, lr_cutoff)
