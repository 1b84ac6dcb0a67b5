"""A self-contained potential for ONE fidelity: network + SAE + dispersion + forces.

``Potential`` is what ships: standard atomic numbers in, total energy (residual network energy +
Σ SAE + Coulomb + the fidelity's D3(BJ)) in float64 eV, forces by autograd inside the module, and
clear errors for bad input. It is TorchScript-compatible; ``aimnet2mult.export`` saves it as a
``.jpt`` with JSON metadata.

Contract (dense layout)::

    out = potential({'coord': (B, N, 3) Å, 'numbers': (B, N) int (0 = padding),
                     'charge': (B,) e [optional, 0], 'mult': (B,) [optional, 1]})
    out['energy'] (B,) float64 eV, out['forces'] (B, N, 3) eV/Å, out['charges'] (B, N) e,
    out['spin_charges'] (B, N) for open-shell models, out['dispersion_energy'] (B,) float64 eV
"""

from typing import Dict, List

import torch
from torch import Tensor, nn

from .nn import nbops
from .nn.geometry import min_real_distance
from .nn.model import MultiFidelityAIMNet2

#: closer than this (Å), two atoms are taken to be at the same position: an input error
MIN_DISTANCE = 0.1


class Potential(nn.Module):
    fidelity: int
    fidelity_name: str
    open_shell: bool
    symbols: List[str]
    min_distance: float

    def __init__(self, model: MultiFidelityAIMNet2, sae: Tensor, supported: Tensor,
                 dispersion: List[nn.Module], fidelity: int, fidelity_name: str, symbols: List[str]):
        """model: single-fidelity network; sae: (offset,) float64 eV per element; supported:
        (offset,) bool; dispersion: [] or [D3BJ]."""
        super().__init__()
        if model.num_fidelities != 1:
            raise ValueError("Potential wraps a single-fidelity network (see aimnet2mult.export)")
        self.model = model
        self.register_buffer("sae", sae.to(torch.float64))
        self.register_buffer("supported", supported.to(torch.bool))
        self.dispersion = nn.ModuleList(dispersion)
        self.fidelity = int(fidelity)
        self.fidelity_name = fidelity_name
        self.open_shell = model.num_charge_channels == 2
        self.symbols = list(symbols)
        self.min_distance = MIN_DISTANCE

    def _element_list(self) -> str:
        names: List[str] = []
        for z in range(self.supported.shape[0]):
            if bool(self.supported[z]):
                names.append(self.symbols[z] if z < len(self.symbols) else str(z))
        return ", ".join(names)

    def _validate(self, data: Dict[str, Tensor]) -> None:
        for key in ["coord", "numbers"]:
            if key not in data:
                raise ValueError("input lacks '{}': the potential needs 'coord' (B, N, 3) in Å and "
                                 "'numbers' (B, N)".format(key))
        coord = data["coord"]
        numbers = data["numbers"]
        if coord.dim() != 3 or coord.shape[-1] != 3:
            raise ValueError("'coord' must have shape (B, N, 3) (Å), got {}".format(list(coord.shape)))
        if not coord.is_floating_point():
            raise ValueError("'coord' must be a floating-point tensor, got {}".format(coord.dtype))
        if numbers.is_floating_point() or numbers.dtype == torch.bool:
            raise ValueError("'numbers' must be an integer tensor, got {}".format(numbers.dtype))
        if numbers.shape != coord.shape[:2]:
            raise ValueError("'numbers' must have shape (B, N) = {}, got {}".format(
                list(coord.shape[:2]), list(numbers.shape)))
        b = coord.shape[0]
        for key in ["charge", "mult"]:
            if key in data:
                if data[key].shape != torch.Size([b]):
                    raise ValueError("'{}' must have shape (B,) = [{}], got {}".format(key, b, list(data[key].shape)))
                if not bool(torch.isfinite(data[key].to(torch.float64)).all()):
                    raise ValueError("'{}' contains NaN or infinite values".format(key))
        if not bool(torch.isfinite(coord).all()):
            raise ValueError("'coord' contains NaN or infinite values")
        if bool((numbers < 0).any()) or bool((numbers >= self.supported.shape[0]).any()):
            raise ValueError("atomic numbers must lie in 0..{} (0 = padding)".format(self.supported.shape[0] - 1))
        ok = self.supported[numbers.to(torch.long)] | (numbers == 0)
        if not bool(ok.all()):
            z = int(numbers[~ok][0])
            name = self.symbols[z] if z < len(self.symbols) else str(z)
            raise ValueError("element {} (Z={}) is not supported by fidelity {} ('{}'); supported elements: {}".format(
                name, z, self.fidelity, self.fidelity_name, self._element_list()))
        if bool((numbers != 0).sum(1).eq(0).any()):
            raise ValueError("a molecule of the batch has no atoms (all numbers are 0)")
        if "mult" in data:
            mult = data["mult"].to(torch.float64)
            if not self.open_shell and bool((mult != 1.0).any()):
                bad = float(mult[mult != 1.0][0])
                raise ValueError("this potential is closed-shell (no spin channel): 'mult' must be 1, got {}".format(bad))
            if bool((mult < 1.0).any()) or bool((mult != torch.round(mult)).any()):
                raise ValueError("'mult' must be a positive integer (2S+1)")

    def forward(self, data: Dict[str, Tensor]) -> Dict[str, Tensor]:
        self._validate(data)
        dtype = self.model.backbone.embedding.weight.dtype
        coord = data["coord"].detach().to(dtype)
        numbers = data["numbers"].to(torch.long)
        b = coord.shape[0]
        inp: Dict[str, Tensor] = {"numbers": numbers}
        if "charge" in data:
            inp["charge"] = data["charge"].to(dtype)
        else:
            inp["charge"] = torch.zeros(b, dtype=dtype, device=coord.device)
        if "mult" in data:
            inp["mult"] = data["mult"].to(dtype)
        else:
            inp["mult"] = torch.ones(b, dtype=dtype, device=coord.device)
        # forces need autograd even when the caller runs under no_grad (TorchScript has no
        # enable_grad context manager, so the mode is set and restored by hand)
        grad_was_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        coord.requires_grad_(True)
        inp["coord"] = coord
        out = self.model(inp)
        energy = out["energy"] + nbops.mol_sum(self.sae[numbers], out)
        e_disp = torch.zeros(b, dtype=torch.float64, device=coord.device)
        for disp in self.dispersion:
            e_disp = e_disp + disp(numbers, out["d_ij"], out["pair_mask"], out, "nbmat")
        energy = energy + e_disp
        grads = torch.autograd.grad([energy.sum()], [coord])
        torch.set_grad_enabled(grad_was_enabled)
        if float(min_real_distance(out["d_ij"].detach(), out["pair_mask"])) < self.min_distance:
            raise ValueError("two atoms are closer than {} Å (coincident atoms): check the coordinates".format(
                self.min_distance))
        forces = grads[0]
        if forces is None:
            forces = torch.zeros_like(coord)
        result: Dict[str, Tensor] = {
            "energy": energy.detach(),
            "forces": -forces.detach(),
            "charges": out["charges"].detach(),
            "dispersion_energy": e_disp.detach(),
        }
        if self.open_shell:
            result["spin_charges"] = out["spin_charges"].detach()
        return result
