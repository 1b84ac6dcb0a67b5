"""Neighbour lists for the flat layout (vesin-torch cell lists, O(N), periodic with cell shifts).

Two lists serve the network (see ``nbops``):

* short range (AEV cutoff, 5 Å): a FULL list converted to the padded matrix ``nbmat`` (N+1, M)
  with integer image shifts ``cell_shifts`` (N+1, M, 3); row N (the dummy atom) and unused slots
  hold N. The message-passing convolutions need every i -> j once per row.
* long range (Coulomb / D3): a HALF pair list ``pairs_lr`` (2, P) with ``cell_shifts_lr`` (P, 3):
  each unordered pair (including periodic images, and an atom with its own images when the cell is
  smaller than the cutoff) exactly once, no padding. For isolated molecules with the ``simple``
  Coulomb method it holds every pair of each molecule (no cutoff).

Image shifts are integer multiples of the lattice vectors: the Cartesian shift of a pair is
``cell_shifts @ cell`` and ``r_ij = x_j - x_i + shift`` (vesin's convention). Keeping them integer
lets the potential rebuild the Cartesian shifts from a strained cell (stress) and lets a Verlet
list built once be reused while atoms move and the cell stays the same.

Everything here except :class:`VerletNeighborList` is TorchScript-compatible. vesin-torch
registers a TorchScript class: a saved module that uses it can be loaded only in a process that
has ``import vesin_torch`` first (exported potentials record this as ``requires_extensions``).
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from vesin_torch import NeighborList

__all__ = ["vesin_pairs", "padded_neighbor_matrix", "all_pairs_half", "build_neighbor_lists",
           "VerletNeighborList"]


def vesin_pairs(coord: Tensor, cell: Tensor, pbc: Tensor, cutoff: float,
                full_list: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(i, j, S) of all pairs closer than ``cutoff`` (Å). coord (N, 3), cell (3, 3) (rows; ignored
    in non-periodic directions), pbc (3,) bool. S (P, 3) int32 image shifts: r_ij = x_j - x_i + S·cell."""
    nl = NeighborList(cutoff=cutoff, full_list=full_list)
    res = nl.compute(points=coord.detach().to(torch.float64), box=cell.detach().to(torch.float64),
                     periodic=pbc, quantities="ijS")
    return res[0], res[1], res[2]


def same_molecule(i: Tensor, j: Tensor, s: Tensor, mol_idx: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    keep = mol_idx[i] == mol_idx[j]
    return i[keep], j[keep], s[keep]


def padded_neighbor_matrix(i: Tensor, j: Tensor, s: Tensor, n_atoms: int) -> Tuple[Tensor, Tensor]:
    """Full pair list -> (nbmat (N+1, M) int64 with empty slots = N, cell_shifts (N+1, M, 3))."""
    order = torch.argsort(i, stable=True)
    i = i[order]
    j = j[order]
    s = s[order]
    counts = torch.bincount(i, minlength=n_atoms)
    m = 1
    if i.shape[0] > 0:
        m = max(int(counts.max()), 1)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(i.shape[0], device=i.device) - start[i]
    nbmat = torch.full((n_atoms + 1, m), n_atoms, dtype=torch.long, device=i.device)
    nbmat[i, slot] = j
    shifts = torch.zeros((n_atoms + 1, m, 3), dtype=s.dtype, device=i.device)
    shifts[i, slot] = s
    return nbmat, shifts


def all_pairs_half(mol_idx: Tensor, n_mol: int) -> Tuple[Tensor, Tensor]:
    """Every pair i < j of each molecule (isolated molecules, no cutoff): (pairs (2, P), zero shifts
    (P, 3)). ``mol_idx`` (N,) must be sorted (atoms of a molecule contiguous)."""
    n = mol_idx.shape[0]
    dev = mol_idx.device
    counts = torch.bincount(mol_idx, minlength=n_mol)
    start = torch.cumsum(counts, 0) - counts
    max_n = int(counts.max())
    k = torch.arange(max_n, device=dev).unsqueeze(0)
    i = torch.arange(n, device=dev).unsqueeze(1).expand(n, max_n)
    j = start[mol_idx].unsqueeze(1) + k
    valid = (k < counts[mol_idx].unsqueeze(1)) & (j > i)
    pairs = torch.stack([i[valid], j[valid]])
    return pairs, torch.zeros((pairs.shape[1], 3), dtype=torch.int32, device=dev)


def build_neighbor_lists(coord: Tensor, cell: Tensor, pbc: Tensor, mol_idx: Tensor, n_mol: int,
                         sr_cutoff: float, lr_cutoff: float) -> Dict[str, Tensor]:
    """Short- and long-range lists of one flat system (see the module docstring).

    coord (N, 3) Å; cell (3, 3) Å rows (zeros for isolated systems); pbc (3,) bool; mol_idx (N,)
    sorted molecule index (pairs between different molecules are dropped); lr_cutoff: Å, -1 = all
    pairs of each molecule, 0 = no long-range list. Returns ``nbmat``, ``cell_shifts`` and, unless
    lr_cutoff == 0, ``pairs_lr``, ``cell_shifts_lr`` (integer shifts as int32).
    """
    n = coord.shape[0]
    out: Dict[str, Tensor] = {}
    i, j, s = vesin_pairs(coord, cell, pbc, sr_cutoff, True)
    if n_mol > 1:
        i, j, s = same_molecule(i, j, s, mol_idx)
    nbmat, shifts = padded_neighbor_matrix(i, j, s, n)
    out["nbmat"] = nbmat
    out["cell_shifts"] = shifts
    if lr_cutoff < 0.0:
        pairs, shifts_lr = all_pairs_half(mol_idx, n_mol)
        out["pairs_lr"] = pairs
        out["cell_shifts_lr"] = shifts_lr
    elif lr_cutoff > 0.0:
        i, j, s = vesin_pairs(coord, cell, pbc, lr_cutoff, False)
        if n_mol > 1:
            i, j, s = same_molecule(i, j, s, mol_idx)
        out["pairs_lr"] = torch.stack([i, j])
        out["cell_shifts_lr"] = s
    return out


class VerletNeighborList:
    """Verlet-skin cache of a potential's neighbour lists, for MD callers (plain Python).

    The lists are built with every cutoff enlarged by ``skin`` (Å) and reused until an atom has
    moved more than ``skin / 2`` since the last build (then no pair can have crossed into a
    cutoff unseen), or the cell, pbc, atom count or molecule assignment changed. Pairs beyond a
    cutoff contribute exactly zero (AEV cosine cutoff, DSF, switched D3; Ewald drops real-space
    pairs beyond its cutoff), so results equal those of fresh lists.

    Usage::

        nl = VerletNeighborList(potential, skin=1.0)
        for step in ...:
            out = potential(nl.update(inp))     # inp: flat input dict (coord (N, 3), cell, pbc, ...)

    ``potential`` is an in-memory or TorchScript potential (``aimnet2mult.export``); its
    ``neighbor_lists`` method builds the lists. ``builds`` counts the rebuilds.
    """

    def __init__(self, potential, skin: float = 1.0):
        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.potential = potential
        self.skin = float(skin)
        self.builds = 0
        self._ref: Optional[Tensor] = None
        self._key: Optional[List] = None
        self._lists: Dict[str, Tensor] = {}

    def _state_key(self, data: Dict[str, Tensor]) -> List:
        cell = data.get("cell")
        pbc = data.get("pbc")
        mol = data.get("mol_idx")
        return [int(data["coord"].shape[0]),
                None if cell is None else cell.detach().to(torch.float64).cpu().reshape(-1).tolist(),
                None if pbc is None else pbc.detach().cpu().reshape(-1).tolist(),
                None if mol is None else mol.detach().cpu().tolist()]

    def needs_rebuild(self, data: Dict[str, Tensor]) -> bool:
        if self._ref is None or self._key != self._state_key(data):
            return True
        disp = (data["coord"].detach().to(torch.float64) - self._ref).norm(dim=-1)
        return bool(disp.numel() > 0 and float(disp.max()) > 0.5 * self.skin)

    def update(self, data: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """``data`` plus the (possibly cached) neighbour lists, ready for the potential."""
        coord = data["coord"]
        if coord.dim() != 2:
            raise ValueError("VerletNeighborList works on flat input: 'coord' must be (N, 3)")
        if self.needs_rebuild(data):
            cell: Optional[Tensor] = data.get("cell")
            pbc: Optional[Tensor] = data.get("pbc")
            mol: Optional[Tensor] = data.get("mol_idx")
            self._lists = dict(self.potential.neighbor_lists(coord.detach(), cell, pbc, mol, self.skin))
            self._ref = coord.detach().to(torch.float64).clone()
            self._key = self._state_key(data)
            self.builds += 1
        out = dict(data)
        out.update(self._lists)
        return out
