"""Energy readout: per-atom MLP plus a per-element atomic shift."""

from typing import List, Tuple

import torch
from torch import Tensor, nn

from .mlp import make_mlp, mlp_vjp


class EnergyReadout(nn.Module):
    """e_i = MLP(aim_i) + σ[index_i]; returns float64 atomic energies (eV).

    σ is stored in float64. ``float64_shift=False`` reproduces the official AIMNet2 TorchScript
    files, which add σ in float32 (rounding each atomic energy to the float32 grid near |σ|)
    before the float64 sum; models trained here use float64.
    """

    float64_shift: bool

    def __init__(self, n_in: int, hidden: List[int], num_rows: int, float64_shift: bool = True):
        super().__init__()
        self.float64_shift = float64_shift
        self.mlp = make_mlp(n_in, hidden, 1)
        self.shifts = nn.Parameter(torch.zeros(num_rows, dtype=torch.float64))

    def forward(self, aim: Tensor, index: Tensor) -> Tensor:
        """aim: (X, n_in); index: (X,) row of the shift table. Returns (X,) float64."""
        return self._add_shift(self.mlp(aim).squeeze(-1), index)

    def _add_shift(self, e: Tensor, index: Tensor) -> Tensor:
        shift = self.shifts[index]
        if self.float64_shift:
            return e.double() + shift.double()
        return (e + shift.to(e.dtype)).double()

    def forward_vjp(self, aim: Tensor, index: Tensor, weight: Tensor) -> Tuple[Tensor, Tensor]:
        """Atomic energies (X,) float64 (run under no_grad) and the gradient of Σ weight·e with
        respect to aim (X, n_in), by the hand-written VJP of the MLP. weight: (X,)."""
        kinds: List[int] = []
        saved: List[Tensor] = []
        h = aim
        for layer in self.mlp:
            h = layer.record(h, kinds, saved)
        energy = self._add_shift(h.squeeze(-1), index)
        g_aim = mlp_vjp(weight.to(aim.dtype).unsqueeze(-1), kinds, saved, 0, len(kinds))
        return energy, g_aim
