"""AIMNet2 backbone: element embedding, three message passes and neural charge equilibration."""

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import nbops
from .basis import RadialBasis
from .conv import ShellConvolution, flat_pair_basis, shell_sums
from .mlp import make_mlp


def charge_equilibration(total: Tensor, q_raw: Tensor, phi: Tensor, data: Dict[str, Tensor]) -> Tensor:
    """Neural charge equilibration (NQE), independently per charge channel.

    total: (n_mol, C) target charge per channel; q_raw, phi: atom tensors (A..., C) (0 on padding).
    q_i = q̃_i + (φ_i² / (Σ_k φ_k² + 1e-6)) (Q - Σ_k q̃_k); the 1e-6 guard matches the official model,
    so the total is conserved up to (Q - Σq̃) 1e-6 / Σφ².
    """
    w = phi * phi
    w_sum = nbops.mol_sum(w, data) + 1e-6
    excess = total - nbops.mol_sum(q_raw, data)
    return q_raw + w / nbops.mol_to_atoms(w_sum, data) * nbops.mol_to_atoms(excess, data)


class AIMNet2Backbone(nn.Module):
    """Embedding + passes. Returns the AIM features (A..., aim_size) and charges (A..., C).

    The embedding table has one row per (shifted) element index: row z of fidelity f is
    ``z + f * offset``; row 0 is padding. Features a_i are the row viewed as (F, G) = (channel, shell).
    """

    num_features: int
    num_shells: int
    num_charge_channels: int

    def __init__(self, num_rows: int, cutoff: float, num_shells: int, shell_start: float,
                 num_features: int, num_combinations: int, passes: List[List[int]], aim_size: int,
                 num_charge_channels: int):
        super().__init__()
        self.num_features = num_features
        self.num_shells = num_shells
        self.num_charge_channels = num_charge_channels
        fg = num_features * num_shells
        c = num_charge_channels
        self.basis = RadialBasis(cutoff, num_shells, shell_start)
        self.embedding = nn.Embedding(num_rows, fg, padding_idx=0)
        self.conv_atoms = ShellConvolution(num_features, num_shells, num_combinations)
        self.conv_charges = ShellConvolution(c, num_shells, num_combinations)
        width0 = 2 * fg + num_features * num_combinations
        width = width0 + c + c * num_shells + c * num_combinations
        mlps: List[nn.Module] = []
        for ipass, hidden in enumerate(passes):
            last = ipass == len(passes) - 1
            n_out = aim_size if last else 2 * c + fg
            mlps.append(make_mlp(width0 if ipass == 0 else width, hidden, n_out,
                                 last_activation=ipass > 0))
        self.passes = nn.ModuleList(mlps)

    def forward(self, numbers: Tensor, charge_channels: Tensor,
                data: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        """numbers: shifted element indices (A...); charge_channels: (n_mol, C) targets.

        ``data`` must hold ``d_ij``, ``u_ij`` (pair geometry) for the layout seam.
        """
        gs, gv = self.basis(data["d_ij"], data["u_ij"])
        w: Optional[Tensor] = None
        if not nbops.is_dense(data):
            w = flat_pair_basis(gs, gv)
        mask = (numbers != 0).unsqueeze(-1)
        shape = list(numbers.shape) + [self.num_features, self.num_shells]
        a = self.embedding(numbers).view(shape)
        c = self.num_charge_channels
        q = torch.zeros(list(numbers.shape) + [c], dtype=a.dtype, device=a.device)
        aim = a.flatten(-2)
        n_pass = len(self.passes)
        f = self.num_features
        agh_both = torch.cat([self.conv_atoms.agh, self.conv_charges.agh], dim=0)
        for ipass, mlp in enumerate(self.passes):
            if ipass == 0:
                feats = [a.flatten(-2), self.conv_atoms(a, gs, gv, data, w)]
            else:
                # atom and charge convolutions as one: F + C channels over the same pairs
                qx = q.unsqueeze(-1).expand(list(q.shape) + [self.num_shells])
                s, p = shell_sums(torch.cat([a, qx], dim=-2), gs, gv, data, agh_both, w)
                # split (one backward node each) rather than slices (one zero-filled gradient each)
                s_a, s_q = torch.split(s, [f, c], dim=-2)
                p_a, p_q = torch.split(p, [f, c], dim=-2)
                feats = [a.flatten(-2), s_a.flatten(-2), p_a.flatten(-2), q, s_q.flatten(-2), p_q.flatten(-2)]
            out = mlp(torch.cat(feats, dim=-1)).masked_fill(~mask, 0.0)
            if ipass == n_pass - 1:
                aim = out
            else:
                dq, phi, da = torch.split(out, [c, c, out.shape[-1] - 2 * c], dim=-1)
                q_raw = dq if ipass == 0 else q + dq
                q = charge_equilibration(charge_channels, q_raw, phi, data)
                a = a + da.reshape(shape)
        return aim, q
