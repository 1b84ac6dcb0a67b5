"""Radial basis of AIMNet2: Gaussian shells times a cosine cutoff, and their vector form."""

from typing import Tuple

import math

import torch
from torch import Tensor, nn


def cosine_cutoff(d: Tensor, rc: float) -> Tensor:
    """0.5 cos(pi clamp(d/rc, 0, 1)) + 0.5: 1 at d = 0, exactly 0 for d >= rc."""
    return 0.5 * torch.cos(math.pi * (d / rc).clamp(0.0, 1.0)) + 0.5


class RadialBasis(nn.Module):
    """g_s(d) = exp(-eta (d - s_g)^2) fc(d), g = 0..G-1, and g_v = g_s ⊗ u.

    Shifts are float32 ``linspace(start, cutoff, G + 1)[:G]``; eta = (G / (cutoff - start))^2.
    Both are buffers so imported models keep their exact stored values.
    """

    cutoff: float

    def __init__(self, cutoff: float = 5.0, num_shells: int = 16, shell_start: float = 0.8):
        super().__init__()
        self.cutoff = float(cutoff)
        shifts = torch.linspace(shell_start, cutoff, num_shells + 1, dtype=torch.float32)[:-1]
        self.register_buffer("shifts", shifts)
        self.register_buffer("eta", torch.tensor((num_shells / (cutoff - shell_start)) ** 2,
                                                 dtype=torch.float32))

    def forward(self, d_ij: Tensor, u_ij: Tensor) -> Tuple[Tensor, Tensor]:
        """d_ij: pair tensor (P...) Å; u_ij: (P..., 3). Returns gs (P..., G), gv (P..., G, 3)."""
        shifts = self.shifts.to(d_ij.dtype)
        eta = self.eta.to(d_ij.dtype)
        fc = cosine_cutoff(d_ij, self.cutoff).unsqueeze(-1)
        gs = torch.exp(-eta * (d_ij.unsqueeze(-1) - shifts) ** 2) * fc
        gv = gs.unsqueeze(-1) * u_ij.unsqueeze(-2)
        return gs, gv
