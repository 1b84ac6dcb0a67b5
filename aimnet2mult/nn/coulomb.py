"""Long-range Coulomb energy from the predicted atomic charges."""

from typing import Dict

import torch
from torch import Tensor, nn

from . import nbops
from ..units import COULOMB_CONSTANT


class SimpleCoulomb(nn.Module):
    """E_C = ½ Σ_{i≠j} k_e (1 - χ(d_ij)) q_i q_j / d_ij over all pairs, no outer cutoff.

    χ(d) = exp(1 - 1/(1 - t²)), t = clamp(d / rc, 0, 0.999999): 1 at d = 0, 0 for d >= rc, so the
    bare Coulomb interaction is switched on smoothly over [0, rc] and the network learns the short
    range. Pairs are ordered (i→j and j→i), hence the ½. Pair terms are summed in float64.
    """

    rc: float
    half_k: float

    def __init__(self, rc: float = 4.6):
        super().__init__()
        self.rc = float(rc)
        self.half_k = 0.5 * COULOMB_CONSTANT

    def forward(self, charges: Tensor, d_ij: Tensor, pair_mask: Tensor, data: Dict[str, Tensor],
                nbmat_key: str = "nbmat_lr") -> Tensor:
        """charges: atom tensor (A...) e; d_ij, pair_mask: pair tensors. Returns (n_mol,) float64 eV."""
        q_i = nbops.atom_i(charges, data)
        q_j = nbops.gather_j(charges, data, nbmat_key)
        qq = (q_i * q_j).masked_fill(pair_mask, 0.0)
        t = (d_ij / self.rc).clamp(0.0, 0.999999)
        chi = torch.exp(1.0 - 1.0 / (1.0 - t * t))
        e_ij = self.half_k * (1.0 - chi) * qq / d_ij
        return nbops.mol_sum(nbops.sum_j(e_ij.double(), data), data)
