"""The multi-fidelity AIMNet2 network.

Shared backbone (basis, convolutions, interaction passes) with one enlarged element embedding table
(element Z of fidelity f uses row Z + f * offset) and per-fidelity energy readouts (or one shared
readout). The network predicts RESIDUAL energies: self-atomic energies (SAE) and dispersion are
added by the exported potential (``aimnet2mult.potential``).

Inputs (dense layout): ``coord`` (B, N, 3) Å, ``numbers`` (B, N) standard atomic numbers with 0 =
padding, ``charge`` (B,) e, ``fidelity`` (B,) int (optional only for single-fidelity models),
``mult`` (B,) (open-shell models). Outputs added to the returned dict: ``energy`` (B,) float64 eV
(residual NN energy + Coulomb), ``charges`` (B, N) e, ``spin_charges`` (B, N) for open-shell models,
``atomic_energies`` (B, N) float64, plus the pair geometry (``d_ij``, ``u_ij``, ``pair_mask``).

Inputs (flat layout, see ``nbops``): ``coord`` (A, 3) with a trailing dummy atom, ``numbers`` (A,)
(dummy 0), ``mol_idx`` (A,), ``charge`` (n_mol,), ``fidelity``/``mult`` (n_mol,), the short-range
neighbour matrix ``nbmat`` (A, M) with Cartesian image shifts ``shifts`` (A, M, 3) Å (optional, 0),
and for the long-range terms the half pair list ``pairs_lr`` (2, P) with ``shifts_lr`` (P, 3) Å
and, for periodic systems, ``cell`` (3, 3) Å. Without ``pairs_lr`` the long-range terms use the
short-range list. Outputs are atom tensors (A, ...) and (n_mol,) energies; ``d_ij_lr`` and
``pair_mask_lr`` hold the long-range geometry. Building these lists from coordinates is the job of
``aimnet2mult.potential`` / ``aimnet2mult.nn.neighbors``.
"""

from typing import Any, Dict

import torch
from torch import Tensor, nn

from . import nbops
from .backbone import AIMNet2Backbone
from .coulomb import Coulomb
from .geometry import long_range_geometry, pair_geometry
from .keys import Key
from .readout import EnergyReadout


class MultiFidelityAIMNet2(nn.Module):
    num_fidelities: int
    fidelity_offset: int
    num_charge_channels: int
    use_fidelity_readouts: bool
    cutoff: float
    use_coulomb: bool
    manual_forces: bool

    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        from ..model_config import coulomb_settings, validate_model_config

        cfg = validate_model_config(dict(config))
        self.num_fidelities = int(cfg["num_fidelities"])
        self.fidelity_offset = int(cfg["fidelity_offset"])
        self.num_charge_channels = int(cfg["num_charge_channels"])
        self.use_fidelity_readouts = bool(cfg["use_fidelity_readouts"])
        self.cutoff = float(cfg["cutoff"])
        num_rows = self.num_fidelities * self.fidelity_offset
        self.backbone = AIMNet2Backbone(
            num_rows=num_rows, cutoff=self.cutoff, num_shells=int(cfg["num_shells"]),
            shell_start=float(cfg["shell_start"]), num_features=int(cfg["num_features"]),
            num_combinations=int(cfg["num_combinations"]), passes=[list(p) for p in cfg["passes"]],
            aim_size=int(cfg["aim_size"]), num_charge_channels=self.num_charge_channels)
        f64 = cfg["shift_dtype"] == "float64"
        n_readouts = self.num_fidelities if self.use_fidelity_readouts else 1
        # per-fidelity readouts index their shift table by the standard Z; a shared one by shifted Z
        rows = self.fidelity_offset if self.use_fidelity_readouts else num_rows
        self.readouts = nn.ModuleList(
            [EnergyReadout(int(cfg["aim_size"]), list(cfg["energy_head"]), rows, f64) for _ in range(n_readouts)])
        coul = coulomb_settings(cfg)
        self.use_coulomb = coul is not None
        # exported potentials switch this on (see _forward_manual_vjp); training keeps autograd
        self.manual_forces = False
        if coul is None:
            self.coulomb = Coulomb("none")
        else:
            self.coulomb = Coulomb(coul["method"], coul["rc"], coul["dsf_alpha"], coul["dsf_rc"],
                                   coul["ewald_accuracy"], coul["ewald_rc"])

    def _fidelity_per_atom(self, data: Dict[str, Tensor]) -> Tensor:
        n_mol = nbops.num_molecules(data)
        if Key.FIDELITY.value in data:
            fid = data[Key.FIDELITY.value].to(torch.long)
            if fid.dim() == 0:
                fid = fid.expand(n_mol)
        elif self.num_fidelities == 1:
            fid = torch.zeros(n_mol, dtype=torch.long, device=data[Key.COORD.value].device)
        else:
            raise ValueError("this model has {} fidelities: the batch needs a 'fidelity' entry "
                             "(index per molecule)".format(self.num_fidelities))
        if fid.shape[0] != n_mol:
            raise ValueError("'fidelity' must have one entry per molecule ({}), got shape {}".format(
                n_mol, list(fid.shape)))
        if bool(((fid < 0) | (fid >= self.num_fidelities)).any()):
            raise ValueError("fidelity index out of range: this model has fidelities 0..{}".format(
                self.num_fidelities - 1))
        if nbops.is_dense(data):
            return fid.unsqueeze(1).expand(data[Key.NUMBERS.value].shape)
        return fid[data[Key.MOL_IDX.value]]

    def _charge_channels(self, data: Dict[str, Tensor], dtype: torch.dtype) -> Tensor:
        charge = data[Key.CHARGE.value].to(dtype)
        if self.num_charge_channels == 1:
            return charge.unsqueeze(-1)
        unpaired = data[Key.MULT.value].to(dtype) - 1.0
        return torch.stack([0.5 * (charge + unpaired), 0.5 * (charge - unpaired)], dim=-1)

    def forward(self, data: Dict[str, Tensor], forces_by_hand: bool = False) -> Dict[str, Tensor]:
        """``forces_by_hand`` (the potential, when every term has a hand-written gradient): take
        the hand-written gradient path even though the coordinates do not require grad."""
        dtype = self.backbone.embedding.weight.dtype
        data = dict(data)
        data[Key.COORD.value] = data[Key.COORD.value].to(dtype)
        numbers = data[Key.NUMBERS.value].to(torch.long)
        data[Key.NUMBERS.value] = numbers
        if Key.CHARGE.value not in data:
            data[Key.CHARGE.value] = torch.zeros(nbops.num_molecules(data), dtype=dtype, device=numbers.device)
        if self.num_charge_channels == 2 and Key.MULT.value not in data:
            data[Key.MULT.value] = torch.ones(nbops.num_molecules(data), dtype=dtype, device=numbers.device)
        if bool(((numbers < 0) | (numbers >= self.fidelity_offset)).any()):
            raise ValueError("atomic numbers must lie in 0..{} (0 = padding)".format(self.fidelity_offset - 1))
        fid_atom = self._fidelity_per_atom(data)
        real = numbers != 0
        shifted = torch.where(real, numbers + fid_atom * self.fidelity_offset, numbers)

        data = pair_geometry(data, self.cutoff * self.cutoff)
        dense = nbops.is_dense(data)
        if not dense and Key.PAIRS_LR.value in data:
            data = long_range_geometry(data)
        if not dense and self.takes_manual_forces() and (data[Key.COORD.value].requires_grad or forces_by_hand):
            return self._forward_manual_vjp(data, shifted, real)
        aim, q = self.backbone(shifted, self._charge_channels(data, dtype), data)

        if len(self.readouts) == 1:
            e_atom = torch.zeros(numbers.shape, dtype=torch.float64, device=numbers.device)
            for readout in self.readouts:
                e_atom = torch.where(real, readout(aim, shifted), e_atom)
        else:
            e_atom = torch.zeros(numbers.shape, dtype=torch.float64, device=numbers.device)
            for k, readout in enumerate(self.readouts):
                sel = real & (fid_atom == k)
                if bool(sel.any()):
                    e_atom = e_atom.index_put((sel,), readout(aim[sel], numbers[sel]))
        energy = nbops.mol_sum(e_atom, data)

        if self.coulomb.method != "none":
            energy = energy + self._coulomb_energy(q.sum(-1), data)
        return self._outputs(data, e_atom, energy, q)

    def _coulomb_energy(self, charges: Tensor, data: Dict[str, Tensor]) -> Tensor:
        """Coulomb energy (n_mol,) on the long-range pair list when there is one (flat layout),
        else on the short-range pairs."""
        if not nbops.is_dense(data) and Key.PAIRS_LR.value in data:
            return self.coulomb(charges, data[Key.D_IJ_LR.value], data[Key.PAIR_MASK_LR.value], data,
                                Key.PAIRS_LR.value)
        return self.coulomb(charges, data[Key.D_IJ.value], data[Key.PAIR_MASK.value], data, Key.NBMAT.value)

    def _outputs(self, data: Dict[str, Tensor], e_atom: Tensor, energy: Tensor, q: Tensor) -> Dict[str, Tensor]:
        data[Key.ATOMIC_ENERGIES.value] = e_atom
        data[Key.ENERGY.value] = energy
        data[Key.CHARGES.value] = q.sum(-1)
        if self.num_charge_channels == 2:
            data[Key.SPIN_CHARGES.value] = q[..., 0] - q[..., 1]
        return data

    def takes_manual_forces(self) -> bool:
        """Whether flat-layout forces come from the hand-written VJP (:meth:`_forward_manual_vjp`):
        manual forces on, eval mode, a single readout."""
        return self.manual_forces and not self.training and len(self.readouts) == 1

    def _forward_manual_vjp(self, data: Dict[str, Tensor], shifted: Tensor, real: Tensor) -> Dict[str, Tensor]:
        """Flat-layout forward for force evaluation (single readout, eval mode).

        The network runs without autograd; the gradient of its energy with respect to the pair
        geometry is computed by the hand-written VJPs of the readout, the backbone (to the pair
        basis W of ``RadialBasis.flat_basis``) and the basis (to d_ij and u_ij). The returned energy
        (network + Coulomb) carries autograd history only through the Coulomb term; the caller
        adds the network's part of the forces as the vector-Jacobian product of the geometry
        ``data['d_ij']``, ``data['u_ij']`` with ``data['vjp_distance_grad']``,
        ``data['vjp_direction_grad']`` (∂E/∂d, ∂E/∂u), i.e. ``torch.autograd.grad([E, d, u], ...,
        grad_outputs=[1, ∂E/∂d, ∂E/∂u])``. The Coulomb term's gradient with respect to the
        charges enters the backbone VJP. (No ``x - x.detach()`` surrogate: TorchScript freezing, which
        openmm-torch applies, removes the detach and with it the forces.) With
        ``forces_by_hand`` (set by the potential when every term has a hand-written
        gradient) the coordinates need not require grad: the caller applies the geometry VJP
        itself (``geometry.flat_geometry_vjp``), without autograd.
        """
        dtype = self.backbone.embedding.weight.dtype
        readout = self.readouts[0]
        with torch.no_grad():
            w0, gs = self.backbone.basis.flat_basis(data[Key.D_IJ.value], data[Key.U_IJ.value])
            charge_channels = self._charge_channels(data, dtype)
            aim, q, record = self.backbone.forward_recorded(shifted, charge_channels, data, w0)
            e_atom, g_aim = readout.forward_vjp(aim, shifted, real.to(dtype))
            e_atom = torch.where(real, e_atom, torch.zeros_like(e_atom))
        energy = nbops.mol_sum(e_atom, data)
        g_q = torch.zeros_like(q)
        if Key.PAIRS_LR.value in data and self.coulomb.has_manual_grads(data):
            # hand-written Coulomb gradients: dE/dq into the backbone VJP, dE/dd to the caller
            with torch.no_grad():
                e_coul, g_charges, g_d_lr = self.coulomb.energy_and_grads(q.sum(-1), data[Key.D_IJ_LR.value], data,
                                                                           Key.PAIRS_LR.value)
            g_q = g_charges.unsqueeze(-1).expand(q.shape)
            data[Key.VJP_LR_DISTANCE_GRAD.value] = g_d_lr
            energy = energy + e_coul
        elif self.coulomb.method != "none":  # periodic Ewald: autograd, dE/dq taken here
            q_leaf = q.detach().requires_grad_(True)
            e_coul = self._coulomb_energy(q_leaf.sum(-1), data)
            grads = torch.autograd.grad([e_coul.sum()], [q_leaf], retain_graph=True, allow_unused=True)
            gq = grads[0]
            if gq is not None:
                g_q = gq
            energy = energy + e_coul
        with torch.no_grad():
            g_w = self.backbone.vjp(g_aim, g_q, shifted, data, w0, record)
            g_d, g_u = self.backbone.basis.vjp(data[Key.D_IJ.value], data[Key.U_IJ.value], gs, g_w)
        data[Key.VJP_DISTANCE_GRAD.value] = g_d
        data[Key.VJP_DIRECTION_GRAD.value] = g_u
        return self._outputs(data, e_atom, energy, q)
