"""A toy energy term, written only from docs/adding-a-term.md: a screened nuclear repulsion

    E = sum over pairs i<j of  a * Z_i Z_j / r_ij * exp(-r_ij / screen) * s(r_ij)     (eV, r in Å)

with s the smooth switch to 0 between cutoff - width and cutoff (s = 1 for every pair of isolated
molecules given all their pairs, ``all_pairs``). ``ToyRepulsion`` has the hand-written gradient,
``ToyRepulsionAutograd`` (the same energy) does not, so the potential takes its forces by autograd.
"""

from typing import Dict, Tuple

import torch
from torch import Tensor, nn

from aimnet2mult.nn import nbops
from aimnet2mult.nn.terms import register_term


class ToyRepulsionAutograd(nn.Module):
    name: str
    is_dispersion: bool
    cutoff: float
    a: float
    screen: float
    width: float

    def __init__(self, a: float = 0.05, screen: float = 0.8, cutoff: float = 6.0, width: float = 1.0):
        super().__init__()
        self.name = "toy_repulsion"
        self.is_dispersion = False
        self.cutoff = float(cutoff)
        self.a = float(a)
        self.screen = float(screen)
        self.width = float(width)

    def switch(self, d: Tensor) -> Tuple[Tensor, Tensor]:
        """(s(d), ds/dd): 1 below cutoff - width, 0 beyond cutoff, smooth (C2) in between."""
        x = ((d - (self.cutoff - self.width)) / self.width).clamp(0.0, 1.0)
        s = 1.0 - x * x * x * (10.0 - 15.0 * x + 6.0 * x * x)
        ds = -30.0 * x * x * (1.0 - x) * (1.0 - x) / self.width
        return s, ds

    def pair_energy(self, zz: Tensor, d: Tensor) -> Tuple[Tensor, Tensor]:
        """(e(d), de/dd) of the unswitched pair energy."""
        e = self.a * zz / d * torch.exp(-d / self.screen)
        return e, -e * (1.0 / d + 1.0 / self.screen)

    def forward(self, numbers: Tensor, d_ij: Tensor, pair_mask: Tensor, data: Dict[str, Tensor],
                pairs_key: str, all_pairs: bool) -> Tensor:
        z = numbers.to(d_ij.dtype)
        zz = nbops.atom_i(z, data, pairs_key) * nbops.gather_j(z, data, pairs_key)
        valid = ~pair_mask
        d = torch.where(valid, d_ij, torch.ones_like(d_ij))
        e, _ = self.pair_energy(zz, d)
        if not (all_pairs or nbops.is_dense(data)):
            e = e * self.switch(d)[0]
        e = torch.where(valid, e, torch.zeros_like(e)).to(torch.float64)
        # sum_j gives every atom its pairs (full lists hold each pair twice, and sum_j of the half
        # list adds each pair to both atoms): the molecule's sum counts every pair twice
        return 0.5 * nbops.mol_sum(nbops.sum_j(e, data, pairs_key), data)


class ToyRepulsion(ToyRepulsionAutograd):
    @torch.jit.export
    def energy_and_distance_grad(self, numbers: Tensor, d_ij: Tensor, data: Dict[str, Tensor],
                                 pairs_key: str, all_pairs: bool) -> Tuple[Tensor, Tensor]:
        pairs = data[pairs_key]
        z = numbers.to(d_ij.dtype)
        e, de = self.pair_energy(z[pairs[0]] * z[pairs[1]], d_ij)
        if not all_pairs:
            s, ds = self.switch(d_ij)
            e, de = e * s, de * s + e * ds
        n_mol = nbops.num_molecules(data)
        energy = torch.zeros(n_mol, dtype=torch.float64, device=d_ij.device)
        energy = energy.index_add(0, data["mol_idx"][pairs[0]], e.to(torch.float64))
        return energy, de


register_term("toy_repulsion", lambda params: ToyRepulsion(**params))
register_term("toy_repulsion_autograd", lambda params: ToyRepulsionAutograd(**params))
