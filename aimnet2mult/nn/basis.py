"""Radial basis of AIMNet2: Gaussian shells times a cosine cutoff, and their vector form."""

import math
from typing import NamedTuple, Tuple

import torch
from torch import Tensor, nn


def cosine_cutoff(d: Tensor, rc: float) -> Tensor:
    """0.5 cos(pi clamp(d/rc, 0, 1)) + 0.5: 1 at d = 0, exactly 0 for d >= rc."""
    return 0.5 * torch.cos(math.pi * (d / rc).clamp(0.0, 1.0)) + 0.5


class PairBasis(NamedTuple):
    """The radial basis of a pair list in its layout's form (what the shell convolutions take).

    Dense layout: gs (B, N, N, G), gv (B, N, N, G, 3) of :meth:`RadialBasis.forward`, w empty.
    Flat layout: w (G, A, 4, M) and gs (G, A, M) of :meth:`RadialBasis.flat_basis`, gv empty.
    """

    gs: Tensor
    gv: Tensor
    w: Tensor


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

    def _gaussians(self, diff: Tensor) -> Tensor:
        """exp(-eta (d - s_g)²) of the distances to the shell centres ``diff`` (any shape)."""
        return torch.exp(diff * diff * (-self.eta.to(diff.dtype)))

    def forward(self, d_ij: Tensor, u_ij: Tensor) -> Tuple[Tensor, Tensor]:
        """Pair-major basis of the dense layout: d_ij (B, N, N) Å, u_ij (B, N, N, 3) ->
        gs (B, N, N, G), gv (B, N, N, G, 3). The flat layout's is :meth:`flat_basis`."""
        gs = self._gaussians(d_ij.unsqueeze(-1) - self.shifts.to(d_ij.dtype))
        gs = gs * cosine_cutoff(d_ij, self.cutoff).unsqueeze(-1)
        gv = gs.unsqueeze(-1) * u_ij.unsqueeze(-2)
        return gs, gv

    def _shells(self, d_ij: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Shell-major pieces of the flat layout, d_ij (A, M) Å: (d - s_g (G, A, M), Gaussians
        exp(-eta (d - s_g)²) (G, A, M), fc (A, M), x = clamp(d / rc, 0, 1) (A, M))."""
        diff = d_ij - self.shifts.to(d_ij.dtype).view(-1, 1, 1)
        x = (d_ij / self.cutoff).clamp(0.0, 1.0)
        return diff, self._gaussians(diff), cosine_cutoff(d_ij, self.cutoff), x

    def flat_basis(self, d_ij: Tensor, u_ij: Tensor) -> Tuple[Tensor, Tensor]:
        """The flat layout's pair basis W (G, A, 4, M): W[g, i, 0, m] = gs and W[g, i, 1:4, m] =
        gs u of pair (i, nbmat[i, m]), built shell-major (no (A, M, G, 4) intermediate, no
        transposing copy), and gs (G, A, M) for :meth:`vjp`. d_ij (A, M) Å, u_ij (A, M, 3). One W
        serves every shell convolution of a forward pass."""
        _, gauss, fc, _ = self._shells(d_ij)
        gs = (gauss * fc).unsqueeze(2)  # (G, A, 1, M)
        return torch.cat([gs, gs * u_ij.transpose(1, 2)], dim=2), gs.squeeze(2)

    def pair_basis(self, d_ij: Tensor, u_ij: Tensor, dense: bool) -> PairBasis:
        """The basis of the layout: :meth:`forward` (dense) or :meth:`flat_basis` (flat)."""
        if dense:
            gs, gv = self.forward(d_ij, u_ij)
            return PairBasis(gs, gv, torch.empty(0, dtype=gs.dtype, device=gs.device))
        w, gs = self.flat_basis(d_ij, u_ij)
        return PairBasis(gs, torch.empty(0, dtype=w.dtype, device=w.device), w)

    def vjp(self, d_ij: Tensor, u_ij: Tensor, gs: Tensor, g_w: Tensor) -> Tuple[Tensor, Tensor]:
        """Hand-written VJP of :meth:`flat_basis`: the gradient g_w of W (G, A, 4, M) ->
        (dE/dd (A, M), dE/du (A, M, 3)). d_ij (A, M) Å, u_ij (A, M, 3), gs (G, A, M) from
        :meth:`flat_basis`. Reductions run over the shell (leading) dimension."""
        g_gv = g_w[:, :, 1:, :]  # (G, A, 3, M)
        g_gs = g_w[:, :, 0, :] + (g_gv * u_ij.transpose(1, 2)).sum(2)  # (G, A, M)
        g_u = (g_gv * gs.unsqueeze(2)).sum(0).transpose(1, 2)  # (A, M, 3)
        diff, gauss, fc, x = self._shells(d_ij)
        # d fc / dd; zero beyond the cutoff (the clamp), where fc is constant
        dfc = torch.where(d_ij < self.cutoff, torch.sin(math.pi * x) * (-0.5 * math.pi / self.cutoff),
                          torch.zeros_like(d_ij))
        dgs = gauss * (dfc - diff * fc * (2.0 * self.eta.to(d_ij.dtype)))
        return (g_gs * dgs).sum(0), g_u
