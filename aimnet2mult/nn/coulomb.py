"""Long-range Coulomb energy from the predicted atomic charges.

Three methods share one convention: the network learns the short range, and the Coulomb term adds
the bare interaction switched on smoothly over [0, rc] (rc = 4.6 Å in the official models):

    E_C = E_full - E_sr,     E_sr = ½ Σ_{i≠j} k_e χ(d_ij) q_i q_j / d_ij   (pairs with d < rc)
    χ(d) = exp(1 - 1/(1 - t²)),  t = clamp(d / rc, 0, 0.999999)     (χ(0) = 1, χ(d ≥ rc) = 0)

and the methods differ only in E_full (k_e = 14.3996 eV·Å/e²):

* ``simple`` — isolated molecules: E_full = ½ Σ_{i≠j} k_e q_i q_j / d_ij over ALL pairs of each
  molecule (no outer cutoff). Not defined for periodic input.
* ``dsf`` — damped shifted force (Fennell & Gezelter, J. Chem. Phys. 124, 234104 (2006)),
  cutoff R_c (``dsf_rc``, default 15 Å), damping α (``dsf_alpha``, default 0.2 Å⁻¹):

      E_full = ½ Σ_{i≠j, d<R_c} k_e q_i q_j [erfc(αd)/d − erfc(αR_c)/R_c
                                             + (erfc(αR_c)/R_c² + 2α/√π e^{−α²R_c²}/R_c)(d − R_c)]
               − k_e (erfc(αR_c)/(2R_c) + α/√π) Σ_i q_i²

  The pair term and its derivative vanish at R_c, so energy and forces are continuous. Periodic
  images enter through the neighbour list (any cell size). For large R_c it approaches Ewald.
* ``ewald`` — periodic, exact up to ``ewald_accuracy`` δ (default 1e-8), tin-foil boundary:

      E_full = ½ Σ'_{i,j,n} k_e q_i q_j erfc(α r)/r                               (real space, r < r_c)
             + (2π k_e / V) Σ_{k≠0, |k|<k_c} e^{−k²/4α²}/k² |Σ_j q_j e^{ik·r_j}|²   (reciprocal)
             − k_e α/√π Σ_i q_i²  −  k_e π Q² / (2 V α²)                             (self, background)

  with η = sqrt(−ln δ), α = η / r_c, k_c = 2αη (both truncation errors ~δ). The real-space cutoff
  is ``ewald_rc`` when set, otherwise r_c = η / α_opt with the classic balance
  α_opt = sqrt(π) (N / V²)^(1/6), clamped to [8, 15] Å. k-vectors k = n·B (B = 2π (cell⁻¹)ᵀ,
  rows = reciprocal vectors) over a half space, any (non-cubic) cell. Computed in float64. Without
  a cell (isolated molecules) ``ewald`` falls back to ``simple``, its non-periodic limit.

Pair terms are evaluated on the layout's pair tensors through ``nbops`` (dense (B, N, N), padded
(A, M), or a half pair list (P,)), summed per atom and per molecule in float64.
"""

import math
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from ..model_config import COULOMB_METHODS
from ..units import COULOMB_CONSTANT
from . import nbops
from .keys import Key


def pair_sums_and_grads(charges: Tensor, v: Tensor, dv: Tensor, data: Dict[str, Tensor],
                        pairs_key: str, k: float) -> Tuple[Tensor, Tensor, Tensor]:
    """E = Σ_p k q_i q_j v_p over a half pair list (per molecule, float64 eV), dE/dq (A,) and
    dE/dd (P,), for pair potentials v (P,) with derivative dv (P,) (1/Å²)."""
    pairs = data[pairs_key]
    q_i = nbops.take_rows(charges, pairs[0])
    q_j = nbops.take_rows(charges, pairs[1])
    kv = v * k
    qj_kv = q_j * kv  # dE/dq_i of each pair
    qi_kv = q_i * kv  # dE/dq_j
    e_atom = torch.zeros(charges.shape[0], dtype=torch.float64, device=charges.device).index_add(
        0, pairs[0], (q_i * qj_kv).double())
    g_q = torch.zeros_like(charges).index_add(0, pairs[0], qj_kv).index_add(0, pairs[1], qi_kv)
    return nbops.mol_sum(e_atom, data), g_q, q_i * q_j * (dv * k)


def switch_on_envelope(d_ij: Tensor, rc: float) -> Tensor:
    """χ(d) = exp(1 - 1/(1 - t²)), t = clamp(d / rc, 0, 0.999999): 1 at d = 0, 0 for d >= rc."""
    t = (d_ij / rc).clamp(0.0, 0.999999)
    return torch.exp(1.0 - 1.0 / (1.0 - t * t))


def switch_on_envelope_and_derivative(d_ij: Tensor, rc: float) -> Tuple[Tensor, Tensor]:
    """(χ, dχ/dd) of :func:`switch_on_envelope` (dχ/dd is 0 where the clamp holds t constant):
    dχ/dd = χ · (-2t / (1 - t²)²) / rc."""
    chi = switch_on_envelope(d_ij, rc)
    t = d_ij / rc
    inside = (t > 0.0) & (t < 0.999999)
    t = t.clamp(0.0, 0.999999)
    one_m = 1.0 - t * t
    return chi, torch.where(inside, t * chi / (one_m * one_m) * (-2.0 / rc), torch.zeros_like(d_ij))


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
        q_i = nbops.atom_i(charges, data, nbmat_key)
        q_j = nbops.gather_j(charges, data, nbmat_key)
        qq = (q_i * q_j).masked_fill(pair_mask, 0.0)
        t = (d_ij / self.rc).clamp(0.0, 0.999999)
        chi = torch.exp(1.0 - 1.0 / (1.0 - t * t))
        e_ij = self.half_k * (1.0 - chi) * qq / d_ij
        return nbops.mol_sum(nbops.sum_j(e_ij.double(), data, nbmat_key), data)

    def energy_and_grads(self, charges: Tensor, d_ij: Tensor, data: Dict[str, Tensor],
                         pairs_key: str) -> Tuple[Tensor, Tensor, Tensor]:
        """Half pair list of real pairs, no autograd: (E (n_mol,), dE/dq (A,), dE/dd (P,))."""
        chi, dchi = switch_on_envelope_and_derivative(d_ij, self.rc)
        v = (1.0 - chi) / d_ij
        dv = (dchi + v) / (-d_ij)
        return pair_sums_and_grads(charges, v, dv, data, pairs_key, 2.0 * self.half_k)


class DSFCoulomb(nn.Module):
    """Damped shifted force Coulomb minus the switched-on short range (see the module docstring).

    ``subtract_sr=False`` gives the plain DSF energy of point charges.
    """

    rc: float
    alpha: float
    cutoff: float
    subtract_sr: bool
    half_k: float

    def __init__(self, rc: float = 4.6, alpha: float = 0.2, cutoff: float = 15.0,
                 subtract_sr: bool = True):
        super().__init__()
        self.rc = float(rc)
        self.alpha = float(alpha)
        self.cutoff = float(cutoff)
        self.subtract_sr = bool(subtract_sr)
        self.half_k = 0.5 * COULOMB_CONSTANT

    def forward(self, charges: Tensor, d_ij: Tensor, pair_mask: Tensor, data: Dict[str, Tensor],
                nbmat_key: str = "nbmat_lr") -> Tensor:
        a = self.alpha
        rc = self.cutoff
        erfc_rc = math.erfc(a * rc) / rc
        slope = erfc_rc / rc + 2.0 * a / math.sqrt(math.pi) * math.exp(-a * a * rc * rc) / rc
        valid = (~pair_mask) & (d_ij < rc)
        d = torch.where(valid, d_ij, torch.full_like(d_ij, rc))
        q_i = nbops.atom_i(charges, data, nbmat_key)
        q_j = nbops.gather_j(charges, data, nbmat_key)
        v = torch.erfc(a * d) / d - erfc_rc + slope * (d - rc)
        if self.subtract_sr:
            v = v - switch_on_envelope(d, self.rc) / d
        e_ij = torch.where(valid, self.half_k * q_i * q_j * v, torch.zeros_like(v))
        energy = nbops.mol_sum(nbops.sum_j(e_ij.double(), data, nbmat_key), data)
        q2 = (charges * charges).double()
        self_term = 2.0 * self.half_k * (0.5 * erfc_rc + a / math.sqrt(math.pi))
        return energy - self_term * nbops.mol_sum(q2, data)

    def energy_and_grads(self, charges: Tensor, d_ij: Tensor, data: Dict[str, Tensor],
                         pairs_key: str) -> Tuple[Tensor, Tensor, Tensor]:
        """Half pair list of real pairs, no autograd: (E (n_mol,), dE/dq (A,), dE/dd (P,))."""
        a = self.alpha
        rc = self.cutoff
        erfc_rc = math.erfc(a * rc) / rc
        slope = erfc_rc / rc + 2.0 * a / math.sqrt(math.pi) * math.exp(-a * a * rc * rc) / rc
        valid = d_ij < rc
        d = torch.where(valid, d_ij, torch.full_like(d_ij, rc))
        erfc_d = torch.erfc(a * d) / d
        v = erfc_d - erfc_rc + slope * (d - rc)
        dv = -erfc_d / d - 2.0 * a / math.sqrt(math.pi) * torch.exp(-a * a * d * d) / d + slope
        if self.subtract_sr:
            chi, dchi = switch_on_envelope_and_derivative(d, self.rc)
            v = v - chi / d
            dv = dv - (dchi - chi / d) / d
        v = torch.where(valid, v, torch.zeros_like(v))
        dv = torch.where(valid, dv, torch.zeros_like(dv))
        energy, g_q, g_d = pair_sums_and_grads(charges, v, dv, data, pairs_key, 2.0 * self.half_k)
        self_term = 2.0 * self.half_k * (0.5 * erfc_rc + a / math.sqrt(math.pi))
        energy = energy - self_term * nbops.mol_sum((charges * charges).double(), data)
        return energy, g_q - 2.0 * self_term * charges, g_d


class EwaldCoulomb(nn.Module):
    """Ewald summation minus the switched-on short range (see the module docstring).

    ``subtract_sr=False`` gives the plain Ewald energy of point charges (Madelung checks).
    """

    rc: float
    accuracy: float
    real_cutoff: float
    min_cutoff: float
    max_cutoff: float
    subtract_sr: bool
    half_k: float

    def __init__(self, rc: float = 4.6, accuracy: float = 1e-8, real_cutoff: float = 0.0,
                 subtract_sr: bool = True):
        super().__init__()
        self.rc = float(rc)
        self.accuracy = float(accuracy)
        self.real_cutoff = float(real_cutoff)
        self.min_cutoff = 8.0
        self.max_cutoff = 15.0
        self.subtract_sr = bool(subtract_sr)
        self.half_k = 0.5 * COULOMB_CONSTANT

    @torch.jit.export
    def parameters_for(self, n_atoms: int, volume: float) -> List[float]:
        """[alpha (1/Å), real-space cutoff (Å), reciprocal cutoff (1/Å)] for a cell of ``volume``
        Å³ holding ``n_atoms`` charges."""
        eta = math.sqrt(-math.log(self.accuracy))
        if self.real_cutoff > 0.0:
            r_cut = self.real_cutoff
        else:
            alpha_opt = math.sqrt(math.pi) * (max(n_atoms, 1) / (volume * volume)) ** (1.0 / 6.0)
            r_cut = min(max(eta / alpha_opt, self.min_cutoff), self.max_cutoff)
        r_cut = max(r_cut, self.rc)
        alpha = eta / r_cut
        return [alpha, r_cut, 2.0 * alpha * eta]

    def _kvectors(self, cell: Tensor, k_cut: float) -> Tensor:
        """Reciprocal vectors k = n·B, 0 < |k| < k_cut, one of each ±k pair (N_k, 3), float64."""
        recip = 2.0 * math.pi * torch.linalg.inv(cell).transpose(0, 1)  # rows b_i, a_i·b_j = 2π δ_ij
        lengths = torch.linalg.norm(cell.detach(), dim=1)
        nmax = [int(math.floor(k_cut * float(lengths[i]) / (2.0 * math.pi))) for i in range(3)]
        dev = cell.device
        r0 = torch.arange(-nmax[0], nmax[0] + 1, device=dev, dtype=torch.float64)
        r1 = torch.arange(-nmax[1], nmax[1] + 1, device=dev, dtype=torch.float64)
        r2 = torch.arange(-nmax[2], nmax[2] + 1, device=dev, dtype=torch.float64)
        grid = torch.cartesian_prod(r0, r1, r2).reshape(-1, 3)
        half = (grid[:, 0] > 0) | ((grid[:, 0] == 0) & (grid[:, 1] > 0)) | (
            (grid[:, 0] == 0) & (grid[:, 1] == 0) & (grid[:, 2] > 0))
        grid = grid[half]
        k_detached = grid @ recip.detach()
        keep = (k_detached * k_detached).sum(-1) < k_cut * k_cut
        return grid[keep] @ recip

    def forward(self, charges: Tensor, d_ij: Tensor, pair_mask: Tensor, data: Dict[str, Tensor],
                nbmat_key: str = "nbmat_lr") -> Tensor:
        if Key.CELL.value not in data or nbops.is_dense(data):
            raise ValueError("Ewald summation needs a periodic system in the flat layout "
                             "('coord' (N, 3) with 'cell' and 'pbc')")
        if nbops.num_molecules(data) != 1:
            raise ValueError("Ewald summation evaluates one periodic system at a time")
        cell = data[Key.CELL.value].to(torch.float64)
        volume = torch.abs(torch.linalg.det(cell))
        n_real = int((data[Key.NUMBERS.value] != 0).sum())
        params = self.parameters_for(n_real, float(volume.detach()))
        alpha, r_cut, k_cut = params[0], params[1], params[2]

        # real space (working dtype, float64 sums)
        valid = (~pair_mask) & (d_ij < r_cut)
        d = torch.where(valid, d_ij, torch.full_like(d_ij, r_cut))
        q_i = nbops.atom_i(charges, data, nbmat_key)
        q_j = nbops.gather_j(charges, data, nbmat_key)
        v = torch.erfc(alpha * d) / d
        if self.subtract_sr:
            v = v - switch_on_envelope(d, self.rc) / d
        e_ij = torch.where(valid, self.half_k * q_i * q_j * v, torch.zeros_like(v))
        energy = nbops.mol_sum(nbops.sum_j(e_ij.double(), data, nbmat_key), data)

        # reciprocal space, self and background terms (float64)
        q = charges.to(torch.float64)
        pos = data[Key.COORD.value].to(torch.float64)
        kvec = self._kvectors(cell, k_cut)
        k2 = (kvec * kvec).sum(-1)
        phase = pos @ kvec.transpose(0, 1)  # (A, N_k)
        c = q @ torch.cos(phase)
        s = q @ torch.sin(phase)
        weight = torch.exp(-k2 / (4.0 * alpha * alpha)) / k2
        k_e = 2.0 * self.half_k
        e_rec = 4.0 * math.pi * k_e / volume * (weight * (c * c + s * s)).sum()
        e_self = -k_e * alpha / math.sqrt(math.pi) * (q * q).sum()
        total = q.sum()
        e_bg = -k_e * math.pi * total * total / (2.0 * volume * alpha * alpha)
        return energy + (e_rec + e_self + e_bg).unsqueeze(0)


class Coulomb(nn.Module):
    """The Coulomb term of a model: one of ``simple``, ``dsf``, ``ewald`` or ``none``.

    All methods are held, so the method can be switched after construction (``configure``, also
    on an exported TorchScript potential). A model built with ``none`` learned its electrostatics
    inside the network and refuses to switch a Coulomb term on.
    """

    method: str
    trained_with_coulomb: bool

    def __init__(self, method: str = "simple", rc: float = 4.6, dsf_alpha: float = 0.2,
                 dsf_rc: float = 15.0, ewald_accuracy: float = 1e-8, ewald_rc: float = 0.0):
        super().__init__()
        if method not in COULOMB_METHODS:
            raise ValueError(f"unknown Coulomb method {method!r}; choose one of {', '.join(COULOMB_METHODS)}")
        self.method = method
        self.trained_with_coulomb = method != "none"
        self.simple = SimpleCoulomb(rc)
        self.dsf = DSFCoulomb(rc, dsf_alpha, dsf_rc)
        self.ewald = EwaldCoulomb(rc, ewald_accuracy, ewald_rc)

    @torch.jit.export
    def configure(self, method: str, dsf_alpha: float = -1.0, dsf_rc: float = -1.0,
                  ewald_accuracy: float = -1.0, ewald_rc: float = -1.0) -> None:
        """Switch the method; a negative parameter keeps its current value (``ewald_rc`` 0 =
        automatic)."""
        if method != "simple" and method != "dsf" and method != "ewald" and method != "none":
            raise ValueError("unknown Coulomb method '{}'; choose one of simple, dsf, ewald, none".format(method))
        if method != "none" and not self.trained_with_coulomb:
            raise ValueError("this model was built without a Coulomb term (method 'none'); its network "
                             "learned the electrostatics, so a Coulomb term cannot be switched on")
        if dsf_alpha >= 0.0:
            self.dsf.alpha = dsf_alpha
        if dsf_rc >= 0.0:
            if dsf_rc < self.dsf.rc:
                raise ValueError("'dsf_rc' ({} Å) must not be smaller than the short-range switch radius "
                                 "rc ({} Å)".format(dsf_rc, self.dsf.rc))
            self.dsf.cutoff = dsf_rc
        if ewald_accuracy >= 0.0:
            if not (0.0 < ewald_accuracy < 1.0):
                raise ValueError("'ewald_accuracy' must lie in (0, 1), got {}".format(ewald_accuracy))
            self.ewald.accuracy = ewald_accuracy
        if ewald_rc >= 0.0:
            self.ewald.real_cutoff = ewald_rc
        self.method = method

    @torch.jit.export
    def settings(self) -> Dict[str, float]:
        return {"rc": self.simple.rc, "dsf_alpha": self.dsf.alpha, "dsf_rc": self.dsf.cutoff,
                "ewald_accuracy": self.ewald.accuracy, "ewald_rc": self.ewald.real_cutoff}

    @torch.jit.export
    def pair_cutoff(self, n_atoms: int, volume: float, periodic: bool) -> float:
        """Neighbour-list cutoff this method needs in the flat layout: -1 = every pair of each
        molecule (isolated systems, ``simple``), 0 = no pairs (``none``), else a distance in Å."""
        if self.method == "none":
            return 0.0
        if self.method == "dsf":
            return self.dsf.cutoff
        if self.method == "ewald" and periodic:
            return self.ewald.parameters_for(n_atoms, volume)[1]
        return -1.0

    def has_manual_grads(self, data: Dict[str, Tensor]) -> bool:
        """Whether :meth:`energy_and_grads` covers this input (every method but periodic Ewald,
        whose reciprocal sum depends on positions and cell directly)."""
        if self.method == "none":
            return False
        return not (self.method == "ewald" and Key.CELL.value in data)

    def energy_and_grads(self, charges: Tensor, d_ij: Tensor, data: Dict[str, Tensor],
                         pairs_key: str) -> Tuple[Tensor, Tensor, Tensor]:
        """The energy of :meth:`forward` on a flat half pair list with its hand-written
        gradients (run under no_grad): (E (n_mol,) float64 eV, dE/dq (A,) eV/e, dE/dd (P,) eV/Å).
        See :meth:`has_manual_grads` for the inputs it covers."""
        if self.method == "dsf":
            return self.dsf.energy_and_grads(charges, d_ij, data, pairs_key)
        if not self.has_manual_grads(data):
            raise RuntimeError("no hand-written Coulomb gradients for method '{}' on this input".format(self.method))
        if Key.CELL.value in data:
            raise ValueError("Coulomb method '{}' sums all pairs of an isolated molecule and cannot be "
                             "used for a periodic system: choose 'dsf' or 'ewald'".format(self.method))
        return self.simple.energy_and_grads(charges, d_ij, data, pairs_key)

    def forward(self, charges: Tensor, d_ij: Tensor, pair_mask: Tensor, data: Dict[str, Tensor],
                nbmat_key: str = "nbmat_lr") -> Tensor:
        periodic = Key.CELL.value in data and not nbops.is_dense(data)
        if self.method == "dsf":
            return self.dsf(charges, d_ij, pair_mask, data, nbmat_key)
        if self.method == "ewald" and periodic:
            return self.ewald(charges, d_ij, pair_mask, data, nbmat_key)
        if self.method == "none":
            return torch.zeros(nbops.num_molecules(data), dtype=torch.float64, device=charges.device)
        if periodic:
            raise ValueError("Coulomb method '{}' sums all pairs of an isolated molecule and cannot be "
                             "used for a periodic system: choose 'dsf' or 'ewald'".format(self.method))
        return self.simple(charges, d_ij, pair_mask, data, nbmat_key)
