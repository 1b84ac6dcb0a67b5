"""Shell convolutions of AIMNet2 (scalar and vector parts), for atom features and charges."""

from typing import Dict

import torch
from torch import Tensor, nn

from . import nbops


class ShellConvolution(nn.Module):
    """Per-channel message passing over radial shells.

    For channel features x_j[f, g] (f = channel, g = shell):
      S_i[f, g]    = Σ_j gs_ijg x_j[f, g]                              (scalar part, F*G)
      V_i[f, h, :] = Σ_g A[f, g, h] Σ_j x_j[f, g] gv_ijg               (vector part)
      P_i[f, h]    = |V_i[f, h, :]|²                                    (F*H, rotation invariant)
    Output: [S (F*G) | P (F*H)] flattened row-major.
    Atom features use F = 16 channels with their own value per shell (d2 features); charges use
    F = number of charge channels and the same value for every shell.
    """

    def __init__(self, num_channels: int, num_shells: int, num_combinations: int):
        super().__init__()
        self.agh = nn.Parameter(torch.empty(num_channels, num_shells, num_combinations))
        nn.init.normal_(self.agh, std=1.0 / (num_shells ** 0.5))

    def forward(self, x: Tensor, gs: Tensor, gv: Tensor, data: Dict[str, Tensor]) -> Tensor:
        """x: atom tensor (A..., F, G); gs (P..., G); gv (P..., G, 3). Returns (A..., F*G + F*H)."""
        if nbops.is_dense(data):
            s = torch.einsum("bijg,bjfg->bifg", gs, x)
            t = torch.einsum("bijgx,bjfg->bifgx", gv, x)
        else:
            x_j = nbops.gather_j(x, data)
            s = torch.einsum("amg,amfg->afg", gs, x_j)
            t = torch.einsum("amgx,amfg->afgx", gv, x_j)
        v = torch.einsum("...fgx,fgh->...fhx", t, self.agh)
        p = (v * v).sum(-1)
        return torch.cat([s.flatten(-2), p.flatten(-2)], dim=-1)
