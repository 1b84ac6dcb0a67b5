"""DFT-D4 dispersion energy (rational damping, EEQ charges, ATM three-body) as an energy term.

The D4 model of the ``dftd4`` library (E. Caldeweyher et al., J. Chem. Phys. 150, 154122 (2019)),
term by term, for isolated molecules:

* D4 coordination number ``CN_i = Σ_j k4 exp(-(|EN_i - EN_j| + k5)² / k6) · ½ (1 + erf(-kcn
  (r_ij / R_cov,ij - 1)))`` (Pauling EN, D3 covalent radii; k4 = 4.10451, k5 = 19.08857,
  k6 = 2 · 11.28174², kcn = 7.5; pairs within 30 Bohr);
* EEQ(2019) partial charges: CN' = the same erf count without the EN factor (25 Bohr), capped
  smoothly at 8 (``log(1 + e⁸) - log(1 + e^(8 - CN'))``); ``A q = -χ + κ sqrt(CN')`` with
  ``A_ii = η_i + sqrt(2/π) / r_i``, ``A_ij = erf(r_ij / sqrt(r_i² + r_j²)) / r_ij`` and the total
  charge of the molecule as constraint (one dense bordered linear solve per molecule);
* reference weights ``w_i^a = ζ(q_i) Σ_{k=1..n_a} exp(-6 k (CN_i - CN_a)²) / norm`` (the
  reference with the largest CN takes weight 1 when the normalisation underflows), with the
  charge scaling ``ζ = exp(3 (1 - exp(2 γ_i (1 - (q_a + Z_i) / (q_i + Z_i)))))``;
* ``C6_ij = (3/π) Σ_ω g_ω α_i(iω) α_j(iω)`` with ``α_i = Σ_a w_i^a α_a`` (23-point Casimir-Polder
  quadrature; the reference α_a already charge-scaled per reference, computed once at build);
* two-body: ``E2 = -Σ_{i<j} [s6 C6/(r⁶ + R0⁶) + s8 C8/(r⁸ + R0⁸)]``, ``C8 = 3 C6 Q_i Q_j``
  (the D4 r4r2 table), ``R0 = a1 sqrt(3 Q_i Q_j) + a2``; pairs within 60 Bohr;
* three-body (s9 != 0): ``E3 = Σ_{i<j<k} s9 C9 (3 cosθ_i cosθ_j cosθ_k + 1) / (r_ij r_ik r_jk)³ ·
  f``, ``C9 = sqrt(C6_ij C6_ik C6_jk)`` from *charge-neutral* weights (q = 0, as dftd4 does),
  ``f = 1 / (1 + 6 (R0_ij R0_ik R0_jk / (r_ij r_ik r_jk))^(alp/3))``, BJ radii R0 as above;
  every side within 40 Bohr.

The cutoffs (30/25/60/40 Bohr) are dftd4's defaults, applied as dftd4 applies them (hard), so
energies equal the library's for molecules of any size; beyond ~16 Å they change energies by
< 1e-6 eV. Charges are the EEQ model's, never the network's: D4's parameters were fitted with
EEQ charges. Everything runs in float64 whatever the working dtype (cast at entry).

Layout: the term needs every pair of each molecule (``cutoff = -1``: the potential lists all
pairs of isolated molecules on the flat half list ``pairs_lr``) and refuses periodic input (the
EEQ model of a periodic system needs an Ewald sum, not implemented). ``forward`` is the energy
(its forces by autograd, with the ATM sum's derivatives written by hand); ``energy_and_distance_grad``
is the same energy with dE/dr written by hand through the whole chain, for the potential's
autograd-free path: the direct r-dependence of E2 and E3 at fixed C6, then dE/dC6 -> dE/dα ->
dE/dw (reference weights) -> dE/dCN and dE/dq, dE/dq through the EEQ solve by one adjoint solve with
the same LU factors (A λ = dE/dq; dE/dA_ij = -λ_i q_j - λ_j q_i, dE/db = λ), and the counting
functions' derivatives. Both share the model pieces below, so the math stands once. The ATM sum
runs over the unique triples of each molecule (cached while the pair list is the same).

Reference data: ``aimnet2mult/resources/d4/d4_reference.npz``, vendored from tad-dftd4 0.8.0 and
tad-multicharge 0.5.0 (Apache-2.0; see ``make_tables.py`` beside it).
"""

import math
from typing import Dict, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..units import ANGSTROM_TO_BOHR, HARTREE_IN_EV
from . import nbops
from .keys import Key

__all__ = ["D4", "load_d4_reference_tables"]

#: 23-point trapezoidal weights of the Casimir-Polder integral over imaginary frequencies (dftd4).
_CASIMIR_POLDER_WEIGHTS = (
    2.4999500000000000e-002, 4.9999500000000000e-002, 7.5000000000000010e-002, 0.1, 0.1, 0.1, 0.1,
    0.1, 0.1, 0.1, 0.1, 0.15, 0.2, 0.2, 0.2, 0.2, 0.35, 0.5, 0.75, 1.0, 1.75, 2.5, 1.25,
)


def load_d4_reference_tables() -> Dict[str, np.ndarray]:
    """The vendored D4/EEQ tables (float64 / int arrays indexed by Z; row 0 = dummy)."""
    from importlib import resources

    with resources.files("aimnet2mult.resources.d4").joinpath("d4_reference.npz").open("rb") as fh:
        with np.load(fh) as npz:
            return {k: npz[k] for k in npz.files}


def _zeta(ga: float, gam: Tensor, qref: Tensor, qmod: Tensor) -> Tensor:
    """dftd4's charge scaling ζ(qref, qmod) = exp(ga (1 - exp(gam (1 - qref / qmod)))), exp(ga) for qmod <= 0."""
    eps = 2.220446049250313e-16
    positive = qmod > 0.0
    safe = torch.where(positive, qmod - eps, torch.ones_like(qmod))
    scaled = torch.exp(ga * (1.0 - torch.exp(gam * (1.0 - qref / safe))))
    return torch.where(positive, scaled, torch.full_like(qmod, math.exp(ga)))


def reference_polarizabilities(tables: Dict[str, np.ndarray], ga: float, gc: float) -> Tensor:
    """Charge-scaled reference polarizabilities α_a(iω) (Z, 7, 23) float64, as dftd4 builds them:
    ``max(ascale_a (α_raw,a - hcount_a · sscale_s α_s ζ(Z_s, q_ref,a + Z_s)), 0)`` with the
    secondary (hydride) system s of reference a."""
    refsys = torch.as_tensor(tables["refsys"]).long()
    zeff = torch.as_tensor(tables["zeff"]).to(torch.float64)[refsys]
    gam = torch.as_tensor(tables["gam"]).to(torch.float64)[refsys] * gc
    refsq = torch.as_tensor(tables["clsh"]).to(torch.float64)
    zeta = torch.where(refsys > 0, _zeta(ga, gam, zeff, refsq + zeff), torch.zeros_like(gam))
    secscale = torch.as_tensor(tables["secscale"]).to(torch.float64).reshape(-1)
    secalpha = torch.as_tensor(tables["secalpha"]).to(torch.float64)
    aiw = secscale[refsys].unsqueeze(-1) * secalpha[refsys] * zeta.unsqueeze(-1)
    alpha = torch.as_tensor(tables["refascale"]).unsqueeze(-1) * (
        torch.as_tensor(tables["refalpha"]) - torch.as_tensor(tables["refscount"]).unsqueeze(-1) * aiw)
    return alpha.clamp(min=0.0)


def _local_index(numbers: Tensor, mol_idx: Tensor, n_mol: int) -> Tuple[Tensor, int]:
    """(position of each real atom inside its molecule (A,), largest molecule size); atoms need
    not be sorted by molecule, dummy atoms (Z = 0) are placed after all molecules."""
    n = numbers.shape[0]
    device = numbers.device
    key = torch.where(numbers > 0, mol_idx, torch.full_like(mol_idx, n_mol))
    order = torch.argsort(key * (n + 1) + torch.arange(n, device=device))
    counts = torch.bincount(key, minlength=n_mol + 1)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.zeros(n, dtype=torch.long, device=device)
    local[order] = torch.arange(n, device=device) - starts[key[order]]
    m = int(counts[:n_mol].max()) if n_mol > 0 else 0
    return local, m


class D4(nn.Module):
    """DFT-D4 with rational (BJ) damping and the ATM three-body term, EEQ(2019) charges.

    Args: s6, s8 (scalings), a1 (dimensionless), a2 (Bohr), s9 (ATM scaling, 0 = two-body only),
    alp (ATM damping exponent, 16). ``forward`` follows ``aimnet2mult.nn.terms``; see the module
    docstring for the model and its limits.
    """

    s6: float
    s8: float
    a1: float
    a2: float
    s9: float
    alp: float
    ga: float
    gc: float
    wf: float
    max_z: int
    ang2bohr: float
    hartree2ev: float
    cn_cutoff: float
    eeq_cn_cutoff: float
    eeq_cn_max: float
    disp2_cutoff: float
    disp3_cutoff: float
    kcn: float
    k4: float
    k5: float
    k6: float
    name: str
    is_dispersion: bool
    cutoff: float
    atm_chunk: int

    def __init__(self, s6: float, s8: float, a1: float, a2: float, s9: float = 1.0, alp: float = 16.0):
        super().__init__()
        from ..dispersion_params import custom_d4_parameters

        p = custom_d4_parameters(s6=s6, s8=s8, a1=a1, a2=a2, s9=s9, alp=alp)
        self.s6, self.s8, self.a1, self.a2 = p["s6"], p["s8"], p["a1"], p["a2"]
        self.s9, self.alp = p["s9"], p["alp"]
        self.ga, self.gc, self.wf = 3.0, 2.0, 6.0
        self.ang2bohr = ANGSTROM_TO_BOHR
        self.hartree2ev = HARTREE_IN_EV
        self.cn_cutoff, self.eeq_cn_cutoff, self.eeq_cn_max = 30.0, 25.0, 8.0
        self.disp2_cutoff, self.disp3_cutoff = 60.0, 40.0
        self.kcn, self.k4, self.k5, self.k6 = 7.5, 4.10451, 19.08857, 2.0 * 11.28174**2
        self.name = "d4"
        self.is_dispersion = True
        self.cutoff = -1.0  # every pair of each (isolated) molecule
        self.atm_chunk = 65536  # triples per chunk of the ATM sum: 1.5x faster than one pass at 99 atoms
        tables = load_d4_reference_tables()
        nz = int(tables["refcovcn"].shape[0])
        self.max_z = nz - 1

        def f64(key: str) -> Tensor:
            return torch.as_tensor(tables[key][:nz]).to(torch.float64).contiguous()

        ngw = torch.as_tensor(tables["refc"]).to(torch.float64)
        valid = ngw > 0
        refcn = f64("refcovcn")
        refcn_masked = torch.where(valid, refcn, torch.full_like(refcn, -1.0))
        largest = refcn_masked == refcn_masked.max(-1, keepdim=True)[0]
        self.register_buffer("ngw", ngw)
        self.register_buffer("refcn", refcn)
        self.register_buffer("ref_fallback", (valid & largest).to(torch.float64))
        self.register_buffer("refq", torch.where(valid, f64("clsq"), torch.zeros_like(refcn)))
        alpha = reference_polarizabilities(tables, self.ga, self.gc)
        # the quadrature weights (with 3/π) folded in as sqrt, so that C6_ij = Σ_ω ã_i ã_j
        cpw = torch.tensor(_CASIMIR_POLDER_WEIGHTS, dtype=torch.float64) * (3.0 / math.pi)
        self.register_buffer("alpha", (alpha * cpw.sqrt()).contiguous())
        self.register_buffer("zeff", f64("zeff"))
        self.register_buffer("gam", f64("gam") * self.gc)
        self.register_buffer("r4r2", f64("r4r2"))
        self.register_buffer("rcov", f64("rcov"))
        self.register_buffer("en", f64("en"))
        for key in ("chi", "eta", "kcn", "rad"):
            self.register_buffer("eeq_" + key, f64("eeq_" + key))
        # the dummy / padding element is inert
        for buf in (self.zeff, self.r4r2, self.rcov, self.en, self.eeq_chi, self.eeq_kcn):
            buf[0] = 0.0
        self.eeq_eta[0] = 1.0
        self.eeq_rad[0] = 1.0
        # the triples of the last pair list (see _cached_triples); not saved with the module
        self.register_buffer("_triple_pairs", torch.zeros(2, 0, dtype=torch.long), persistent=False)
        self.register_buffer("_triple_mol", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("_triple_index", torch.zeros(3, 0, dtype=torch.long), persistent=False)

    @classmethod
    def from_params(cls, params: Dict[str, float]) -> "D4":
        """Build from a dict as returned by ``d4_parameters`` / ``custom_d4_parameters``."""
        return cls(s6=params["s6"], s8=params["s8"], a1=params["a1"], a2=params["a2"],
                   s9=params.get("s9", 1.0), alp=params.get("alp", 16.0))

    # ------------------------------------------------------------------ model pieces (float64, Bohr)
    def coordination_numbers(self, numbers: Tensor, pairs: Tensor, r: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor]:
        """(D4 CN, capped EEQ CN), (A,) each, from the half pair list (``r`` in Bohr)."""
        c_d4, _, c_eeq, _ = self._coordination_pairs(numbers, pairs, r, valid)
        zero = torch.zeros(numbers.shape[0], dtype=r.dtype, device=r.device)
        cn = zero.index_add(0, pairs[0], c_d4).index_add(0, pairs[1], c_d4)
        cn_e = zero.index_add(0, pairs[0], c_eeq).index_add(0, pairs[1], c_eeq)
        return cn, self._cap(cn_e)

    def _cap(self, cn: Tensor) -> Tensor:
        cap = self.eeq_cn_max
        return math.log1p(math.exp(cap)) - torch.log1p(torch.exp(cap - cn))

    def eeq_system(self, numbers: Tensor, pairs: Tensor, r: Tensor, valid: Tensor, cn_eeq: Tensor,
                   mol_idx: Tensor, charge: Tensor, n_mol: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The bordered EEQ system per molecule: (matrix (n_mol, m+1, m+1), right-hand side
        (n_mol, m+1), local index of each atom (A,), the real atoms' indices (R,), and the
        Coulomb kernel γ_ij of each pair (P,)). Unknowns: the molecule's charges, then the
        Lagrange multiplier of its total charge."""
        device = r.device
        real = numbers > 0
        local, m = _local_index(numbers, mol_idx, n_mol)
        mat = torch.zeros(n_mol, m + 1, m + 1, dtype=r.dtype, device=device)
        rhs = torch.zeros(n_mol, m + 1, dtype=r.dtype, device=device)
        # padding rows: A = 1, b = 0 -> q = 0
        diag_idx = torch.arange(m, device=device)
        mat[:, diag_idx, diag_idx] = 1.0
        rad = self.eeq_rad[numbers]
        ra, rb = rad[pairs[0]], rad[pairs[1]]
        gamma = 1.0 / torch.sqrt(ra * ra + rb * rb)
        coul = torch.where(valid, torch.erf(r * gamma) / r, torch.zeros_like(r))
        mol_p = mol_idx[pairs[0]]
        li, lj = local[pairs[0]], local[pairs[1]]
        mat = mat.index_put((mol_p, li, lj), coul, accumulate=True)
        mat = mat.index_put((mol_p, lj, li), coul, accumulate=True)
        ri = real.nonzero().squeeze(-1)
        mol_r, loc_r = mol_idx[ri], local[ri]
        diag = self.eeq_eta[numbers[ri]] + math.sqrt(2.0 / math.pi) / rad[ri] - 1.0
        mat = mat.index_put((mol_r, loc_r, loc_r), diag, accumulate=True)
        ones = torch.ones_like(diag)
        border = torch.full_like(mol_r, m)
        mat = mat.index_put((mol_r, loc_r, border), ones)
        mat = mat.index_put((mol_r, border, loc_r), ones)
        b = -self.eeq_chi[numbers[ri]] + self.eeq_kcn[numbers[ri]] * self._sqrt_cn(cn_eeq[ri])
        rhs = rhs.index_put((mol_r, loc_r), b)
        rhs[:, m] = charge.to(r.dtype)
        return mat, rhs, local, ri, gamma

    @staticmethod
    def _sqrt_cn(cn: Tensor) -> Tensor:
        """sqrt(CN') with 0 at CN' = 0 (sqrt'(0) is infinite: an isolated atom must not give NaN forces)."""
        positive = cn > 1e-300
        return torch.where(positive, torch.sqrt(torch.where(positive, cn, torch.ones_like(cn))), torch.zeros_like(cn))

    def eeq_charges(self, numbers: Tensor, pairs: Tensor, r: Tensor, valid: Tensor, cn_eeq: Tensor,
                    mol_idx: Tensor, charge: Tensor, n_mol: int) -> Tensor:
        """EEQ(2019) partial charges (A,) e: one bordered dense solve per molecule."""
        mat, rhs, local, ri, _ = self.eeq_system(numbers, pairs, r, valid, cn_eeq, mol_idx, charge, n_mol)
        x = torch.linalg.solve(mat, rhs.unsqueeze(-1)).squeeze(-1)
        q = torch.zeros(numbers.shape[0], dtype=r.dtype, device=r.device)
        return q.index_put((ri,), x[mol_idx[ri], local[ri]])

    def reference_weights(self, numbers: Tensor, cn: Tensor) -> Tuple[Tensor, Tensor]:
        """Gaussian CN weights of the references and their CN derivative: (A, 7) each."""
        ngw = self.ngw[numbers]
        valid = ngw > 0
        dcn = cn.unsqueeze(-1) - self.refcn[numbers]
        e1 = torch.exp(-self.wf * dcn * dcn)
        de1 = -2.0 * self.wf * dcn * e1
        three = ngw > 2.5  # e1 + e1² + e1³ = Σ_k exp(-k wf dcn²)
        expw = torch.where(three, e1 + e1 * e1 + e1 * e1 * e1, e1)
        dexpw = torch.where(three, de1 * (1.0 + 2.0 * e1 + 3.0 * e1 * e1), de1)
        expw = torch.where(valid, expw, torch.zeros_like(expw))
        dexpw = torch.where(valid, dexpw, torch.zeros_like(dexpw))
        norm = expw.sum(-1, keepdim=True)
        ok = norm > 0.0
        safe = torch.where(ok, norm, torch.ones_like(norm))
        gw = torch.where(ok, expw / safe, self.ref_fallback[numbers])
        dgw = torch.where(ok, (dexpw - gw * dexpw.sum(-1, keepdim=True)) / safe, torch.zeros_like(dexpw))
        return gw, dgw

    def charge_scaling(self, numbers: Tensor, q: Tensor) -> Tuple[Tensor, Tensor]:
        """ζ of every reference at charge q and dζ/dq: (A, 7) each (zero outside the references)."""
        valid = self.ngw[numbers] > 0
        zi = self.zeff[numbers].unsqueeze(-1)
        gam = self.gam[numbers].unsqueeze(-1)
        qref = self.refq[numbers] + zi
        qmod = q.unsqueeze(-1) + zi
        zeta = _zeta(self.ga, gam, qref, qmod)
        eps = 2.220446049250313e-16
        positive = qmod > 0.0
        safe = torch.where(positive, qmod - eps, torch.ones_like(qmod))
        inner = torch.exp(gam * (1.0 - qref / safe))
        dzeta = torch.where(positive, -zeta * self.ga * inner * gam * qref / (safe * safe), torch.zeros_like(zeta))
        zero = torch.zeros_like(zeta)
        return torch.where(valid, zeta, zero), torch.where(valid, dzeta, zero)

    def weighted_polarizabilities(self, numbers: Tensor, cn: Tensor, q: Tensor) -> Tensor:
        """Σ_a w_i^a α_a(iω) with the quadrature weights folded in: (A, 23)."""
        gw, _ = self.reference_weights(numbers, cn)
        zeta, _ = self.charge_scaling(numbers, q)
        return torch.einsum("ar,arw->aw", gw * zeta, self.alpha[numbers])

    def _coordination_pairs(self, numbers: Tensor, pairs: Tensor, r: Tensor,
                            valid: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per pair: the D4 CN count, its dr, the EEQ count, its dr."""
        zi, zj = numbers[pairs[0]], numbers[pairs[1]]
        rc = self.rcov[zi] + self.rcov[zj]
        rc = torch.where(valid, rc, torch.ones_like(rc))
        t = self.kcn * (r / rc - 1.0)
        count = 0.5 * (1.0 + torch.erf(-t))
        dcount = -(self.kcn / math.sqrt(math.pi)) * torch.exp(-t * t) / rc
        den = self.k4 * torch.exp(-(torch.abs(self.en[zi] - self.en[zj]) + self.k5) ** 2 / self.k6)
        in_cn = valid & (r <= self.cn_cutoff)
        in_eeq = valid & (r <= self.eeq_cn_cutoff)
        zero = torch.zeros_like(r)
        return (torch.where(in_cn, den * count, zero), torch.where(in_cn, den * dcount, zero),
                torch.where(in_eeq, count, zero), torch.where(in_eeq, dcount, zero))

    def _two_body(self, numbers: Tensor, pairs: Tensor, r: Tensor, valid: Tensor,
                  c6: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per pair: E2 (Hartree), dE2/dr at fixed C6, dE2/dC6, and the BJ radius R0 (Bohr)."""
        qq = 3.0 * self.r4r2[numbers[pairs[0]]] * self.r4r2[numbers[pairs[1]]]
        r0 = self.a1 * torch.sqrt(qq) + self.a2
        r2 = r * r
        r6 = r2 * r2 * r2
        r0_2 = r0 * r0
        r0_6 = r0_2 * r0_2 * r0_2
        d6 = r6 + r0_6
        d8 = r6 * r2 + r0_6 * r0_2
        de_dc6 = -(self.s6 / d6 + self.s8 * qq / d8)
        e_pair = c6 * de_dc6
        de_dr = c6 * (self.s6 * 6.0 * r6 / (r * d6 * d6) + self.s8 * qq * 8.0 * r6 * r / (d8 * d8))
        inside = valid & (r <= self.disp2_cutoff)
        zero = torch.zeros_like(r)
        return (torch.where(inside, e_pair, zero), torch.where(inside, de_dr, zero), torch.where(inside, de_dc6, zero),
                r0)

    # ------------------------------------------------------------------ energy
    def forward(self, numbers: Tensor, d_ij: Tensor, pair_mask: Tensor, data: Dict[str, Tensor],
                pairs_key: str, all_pairs: bool) -> Tensor:
        if pairs_key != Key.PAIRS_LR.value or Key.CELL.value in data:
            raise ValueError("the D4 term needs every pair of each isolated molecule on the flat half list "
                             "'pairs_lr' (periodic systems are not supported by D4 here)")
        numbers = numbers.to(torch.long)
        pairs = data[pairs_key]
        mol_idx = data[Key.MOL_IDX.value]
        n_mol = nbops.num_molecules(data)
        valid = ~pair_mask
        r = torch.where(valid, d_ij.to(torch.float64) * self.ang2bohr, torch.full_like(d_ij, 10.0, dtype=torch.float64))
        cn, cn_eeq = self.coordination_numbers(numbers, pairs, r, valid)
        charge = self._total_charge(data, n_mol, r.device)
        q = self.eeq_charges(numbers, pairs, r, valid, cn_eeq, mol_idx, charge, n_mol)
        ai, aj = pairs[0], pairs[1]
        pol = self.weighted_polarizabilities(numbers, cn, q)
        c6 = (pol[ai] * pol[aj]).sum(-1)
        e_pair, _, _, r0 = self._two_body(numbers, pairs, r, valid, c6)
        energy = torch.zeros(n_mol, dtype=torch.float64, device=r.device).index_add(0, mol_idx[ai], e_pair)
        if self.s9 != 0.0:
            pol0 = self.weighted_polarizabilities(numbers, cn, torch.zeros_like(q))
            c6_0 = (pol0[ai] * pol0[aj]).sum(-1)
            energy = energy + self._atm(numbers, pairs, r, valid, c6_0, r0, mol_idx, n_mol, d_ij.dtype)
        return energy * self.hartree2ev

    def _total_charge(self, data: Dict[str, Tensor], n_mol: int, device: torch.device) -> Tensor:
        if Key.CHARGE.value in data:
            charge = data[Key.CHARGE.value].to(torch.float64).reshape(-1)
            if charge.shape[0] == 1 and n_mol > 1:
                charge = charge.expand(n_mol)
            return charge
        return torch.zeros(n_mol, dtype=torch.float64, device=device)

    @torch.jit.export
    def energy_and_distance_grad(self, numbers: Tensor, d_ij: Tensor, data: Dict[str, Tensor],
                                 pairs_key: str, all_pairs: bool = False) -> Tuple[Tensor, Tensor]:
        """D4 on the flat half list of every pair of each molecule, run under no_grad: (energy
        (n_mol,) float64 eV, dE/dd_ij (P,) eV/Å), the gradient written by hand through CN, EEQ
        (one adjoint solve), reference weights, C6 and the ATM sum (see the module docstring)."""
        if pairs_key != Key.PAIRS_LR.value or Key.CELL.value in data:
            raise ValueError("the D4 term needs every pair of each isolated molecule on the flat half list "
                             "'pairs_lr' (periodic systems are not supported by D4 here)")
        numbers = numbers.to(torch.long)
        pairs = data[pairs_key]
        ai, aj = pairs[0], pairs[1]
        mol_idx = data[Key.MOL_IDX.value]
        n_mol = nbops.num_molecules(data)
        n = numbers.shape[0]
        valid = (numbers[ai] > 0) & (numbers[aj] > 0)
        r = torch.where(valid, d_ij.to(torch.float64) * self.ang2bohr, torch.full_like(d_ij, 10.0, dtype=torch.float64))
        device = r.device
        # coordination numbers
        c_d4, dc_d4, c_eeq, dc_eeq = self._coordination_pairs(numbers, pairs, r, valid)
        zero_a = torch.zeros(n, dtype=r.dtype, device=device)
        cn = zero_a.index_add(0, ai, c_d4).index_add(0, aj, c_d4)
        s_eeq = zero_a.index_add(0, ai, c_eeq).index_add(0, aj, c_eeq)
        cn_eeq = self._cap(s_eeq)
        # EEQ charges, keeping the LU factors for the adjoint solve
        charge = self._total_charge(data, n_mol, device)
        mat, rhs, local, ri, gamma = self.eeq_system(numbers, pairs, r, valid, cn_eeq, mol_idx, charge, n_mol)
        lu, piv = torch.linalg.lu_factor(mat)
        x = torch.linalg.lu_solve(lu, piv, rhs.unsqueeze(-1)).squeeze(-1)
        mol_r, loc_r = mol_idx[ri], local[ri]
        q = zero_a.index_put((ri,), x[mol_r, loc_r])
        # C6 from the weighted polarizabilities
        alpha = self.alpha[numbers]
        gw, dgw = self.reference_weights(numbers, cn)
        zeta, dzeta = self.charge_scaling(numbers, q)
        pol = torch.einsum("ar,arw->aw", gw * zeta, alpha)
        c6 = (pol[ai] * pol[aj]).sum(-1)
        e_pair, g_r, de_dc6, r0 = self._two_body(numbers, pairs, r, valid, c6)
        energy = torch.zeros(n_mol, dtype=torch.float64, device=device).index_add(0, mol_idx[ai], e_pair)
        # dE/dα_i(ω) = Σ_j dE/dC6_ij α_j(ω) -> dE/dw_i^a
        g_pol = torch.zeros_like(pol).index_add(0, ai, de_dc6.unsqueeze(-1) * pol[aj])
        g_pol = g_pol.index_add(0, aj, de_dc6.unsqueeze(-1) * pol[ai])
        h = torch.einsum("aw,arw->ar", g_pol, alpha)
        de_dcn = (h * zeta * dgw).sum(-1)
        de_dq = (h * gw * dzeta).sum(-1)
        if self.s9 != 0.0:
            zeta0, _ = self.charge_scaling(numbers, torch.zeros_like(q))
            pol0 = torch.einsum("ar,arw->aw", gw * zeta0, alpha)
            c6_0 = (pol0[ai] * pol0[aj]).sum(-1)
            e3, g_r3, g_c6_0 = self._atm_parts(numbers, pairs, r, valid, c6_0, r0, mol_idx, n_mol, d_ij.dtype)
            energy = energy + e3
            g_r = g_r + g_r3
            g_pol0 = torch.zeros_like(pol0).index_add(0, ai, g_c6_0.unsqueeze(-1) * pol0[aj])
            g_pol0 = g_pol0.index_add(0, aj, g_c6_0.unsqueeze(-1) * pol0[ai])
            de_dcn = de_dcn + (torch.einsum("aw,arw->ar", g_pol0, alpha) * zeta0 * dgw).sum(-1)
        # through the EEQ solve: A λ = dE/dq (A symmetric); dE/db = λ, dE/dA = -λ xᵀ
        g_x = torch.zeros_like(x).index_put((mol_r, loc_r), de_dq[ri])
        lam = torch.linalg.lu_solve(lu, piv, g_x.unsqueeze(-1)).squeeze(-1)
        lam_a = zero_a.index_put((ri,), lam[mol_r, loc_r])
        sqrt_cn = self._sqrt_cn(cn_eeq)
        dsqrt = torch.where(sqrt_cn > 0.0, 0.5 / torch.where(sqrt_cn > 0.0, sqrt_cn, torch.ones_like(sqrt_cn)),
                            torch.zeros_like(sqrt_cn))
        de_ds = lam_a * self.eeq_kcn[numbers] * dsqrt * torch.sigmoid(self.eeq_cn_max - s_eeq)
        rg = r * gamma
        dcoul = torch.where(valid, (2.0 / math.sqrt(math.pi)) * gamma * torch.exp(-rg * rg) / r
                            - torch.erf(rg) / (r * r), torch.zeros_like(r))
        de_dcoul = -(lam_a[ai] * q[aj] + lam_a[aj] * q[ai])
        g_r = (g_r + (de_dcn[ai] + de_dcn[aj]) * dc_d4 + (de_ds[ai] + de_ds[aj]) * dc_eeq + de_dcoul * dcoul)
        g_r = torch.where(valid, g_r, torch.zeros_like(g_r))
        return energy * self.hartree2ev, (g_r * (self.hartree2ev * self.ang2bohr)).to(d_ij.dtype)

    def _triples(self, numbers: Tensor, pairs: Tensor, inside: Tensor, mol_idx: Tensor,
                 n_mol: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Every triple i < j < k of a molecule whose three pairs are all ``inside``, as the
        indices of its pairs (ij, ik, jk) in the half list: (T,) each."""
        device = pairs.device
        local, m = _local_index(numbers, mol_idx, n_mol)
        a = torch.where(local[pairs[0]] < local[pairs[1]], pairs[0], pairs[1])
        b = torch.where(local[pairs[0]] < local[pairs[1]], pairs[1], pairs[0])
        mol_p = mol_idx[a]
        la, lb = local[a], local[b]
        index = torch.full((n_mol, m, m), -1, dtype=torch.long, device=device)
        pid = torch.arange(pairs.shape[1], device=device)
        index = index.index_put((mol_p, la, lb), pid).index_put((mol_p, lb, la), pid)
        size = torch.bincount(mol_idx[numbers > 0], minlength=n_mol)
        # pair (a, b) with local a < b makes a triple with every k of the molecule above b
        count = torch.where(inside, size[mol_p] - 1 - lb, torch.zeros_like(lb))
        p_ab = torch.repeat_interleave(pid, count)
        first = torch.cumsum(count, 0) - count
        lk = lb[p_ab] + 1 + (torch.arange(p_ab.shape[0], device=device) - first[p_ab])
        mol_t = mol_p[p_ab]
        p_ak = index[mol_t, la[p_ab], lk]
        p_bk = index[mol_t, lb[p_ab], lk]
        ok = (p_ak >= 0) & (p_bk >= 0)
        p_ak = torch.where(ok, p_ak, torch.zeros_like(p_ak))
        p_bk = torch.where(ok, p_bk, torch.zeros_like(p_bk))
        ok = ok & inside[p_ak] & inside[p_bk]
        keep = ok.nonzero().squeeze(-1)
        return p_ab[keep], p_ak[keep], p_bk[keep]

    def _cached_triples(self, numbers: Tensor, pairs: Tensor, mol_idx: Tensor,
                        n_mol: int) -> Tuple[Tensor, Tensor, Tensor]:
        """``_triples`` of every pair, reused while the pair list stays the same (an MD run: the
        potential lists every pair of the molecule in the same order at each step)."""
        same = (self._triple_pairs.shape == pairs.shape and self._triple_mol.shape == mol_idx.shape
                and self._triple_pairs.device == pairs.device)
        if same:
            same = bool(torch.equal(self._triple_pairs, pairs)) and bool(torch.equal(self._triple_mol, mol_idx))
        if not same:
            everything = torch.ones(pairs.shape[1], dtype=torch.bool, device=pairs.device)
            t_ab, t_ak, t_bk = self._triples(numbers, pairs, everything, mol_idx, n_mol)
            self._triple_index = torch.stack([t_ab, t_ak, t_bk])
            self._triple_pairs = pairs.clone()
            self._triple_mol = mol_idx.clone()
        return self._triple_index[0], self._triple_index[1], self._triple_index[2]

    def _atm_parts(self, numbers: Tensor, pairs: Tensor, r: Tensor, valid: Tensor, c6: Tensor, r0: Tensor,
                   mol_idx: Tensor, n_mol: int, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor]:
        """Axilrod-Teller-Muto energy (n_mol,) Hartree over the unique triples and its derivatives
        with respect to the pair distances and C6 (P,) each, written by hand (the triple sum is most
        of D4's cost; autograd over it would keep ~20 triple-sized temporaries). The triple
        arithmetic runs in ``dtype`` (the potential's working dtype), the sum in float64."""
        inside = valid & (r <= self.disp3_cutoff)
        with torch.no_grad():
            t_ab, t_ak, t_bk = self._cached_triples(numbers, pairs, mol_idx, n_mol)
            keep = inside.to(dtype)
            rd = r.detach().to(dtype)
            r2 = rd * rd
            sc = torch.sqrt(c6.detach().clamp(min=0.0)).to(dtype) * keep  # a side beyond the cutoff: no triple
            tp = (r0.detach().to(dtype) / rd) ** (self.alp / 3.0)  # per pair: (R0 / r)^(alp/3)
            feat = torch.stack([r2, sc, tp], dim=0)
            g = torch.zeros(2, r.shape[0], dtype=dtype, device=r.device)
            energy = torch.zeros(n_mol, dtype=torch.float64, device=r.device)
            n_t = t_ab.shape[0]
            # in chunks: the ~40 triple-sized temporaries of a chunk stay in cache
            start = 0
            while start < n_t:
                end = min(start + self.atm_chunk, n_t)
                g, e = self._atm_chunk(feat, t_ab[start:end], t_ak[start:end], t_bk[start:end], g)
                if n_mol == 1:
                    energy = energy + e.to(torch.float64).sum()
                else:
                    energy = energy.index_add(0, mol_idx[pairs[0][t_ab[start:end]]], e.to(torch.float64))
                start = end
            g_r = (g[0] * 2.0 * rd * keep).to(r.dtype)
            g_sc = g[1]
            positive = sc > 0.0
            g_c6 = torch.where(positive, g_sc * 0.5 / torch.where(positive, sc, torch.ones_like(sc)),
                               torch.zeros_like(sc)).to(r.dtype)
        return energy, g_r, g_c6

    def _atm_chunk(self, feat: Tensor, t_ab: Tensor, t_ak: Tensor, t_bk: Tensor, g: Tensor) -> Tuple[Tensor, Tensor]:
        """ATM energies of some triples (T,) and their (de/dr², de/dsqrtC6) added into the pairs'
        columns of ``g`` (2, P). ``feat`` (3, P): r², sqrt C6 (0 beyond the cutoff), (R0/r)^(alp/3)."""
        # one gather per side of the triple, into contiguous (3, T) rows
        f_ab, f_ak, f_bk = feat.index_select(1, t_ab), feat.index_select(1, t_ak), feat.index_select(1, t_bk)
        x, y, z = f_ab[0], f_ak[0], f_bk[0]
        cab, cak, cbk = f_ab[1], f_ak[1], f_bk[1]
        rr2 = x * y * z
        inv3 = 1.0 / (torch.sqrt(rr2) * rr2)
        inv5 = inv3 / rr2
        u, v, w = x + z - y, x - z + y, y + z - x
        uv, uw = u * v, u * w
        ss = uv * w
        ang = 0.375 * ss * inv5 + inv3
        tt = f_ab[2] * f_ak[2] * f_bk[2]
        f = 1.0 / (1.0 + 6.0 * tt)
        af = self.s9 * ang * f
        cbc = cak * cbk
        c9 = cab * cbc
        e = af * c9
        # e = s9 c9 A F with A = 0.375 S / R⁵ + 1 / R³, F = 1 / (1 + 6 T), S = u v w:
        # de/dx = q dS/dx + p / x (x = r_ij², likewise y, z), dS/dx = 2 x w - u v, ...
        q = (0.375 * self.s9) * c9 * inv5 * f
        p = (self.s9 * f) * c9 * (ang * self.alp * tt * f - 0.9375 * ss * inv5 - 1.5 * inv3)
        afc = af * cab
        # scatter per side into the pairs' (de/dr², de/dsqrtC6) columns (1-D index_add: faster than rows)
        g_x = g[0].index_add(0, t_ab, q * (2.0 * x * w - uv) + p / x)
        g_x = g_x.index_add(0, t_ak, q * (2.0 * y * u - v * w) + p / y)
        g_x = g_x.index_add(0, t_bk, q * (2.0 * z * v - uw) + p / z)
        g_c = g[1].index_add(0, t_ab, af * cbc).index_add(0, t_ak, afc * cbk).index_add(0, t_bk, afc * cak)
        g = torch.stack([g_x, g_c])
        return g, e

    def _atm(self, numbers: Tensor, pairs: Tensor, r: Tensor, valid: Tensor, c6: Tensor, r0: Tensor,
             mol_idx: Tensor, n_mol: int, dtype: torch.dtype) -> Tensor:
        """The ATM energy (n_mol,) Hartree for autograd callers: the exact value and the exact
        first derivatives with respect to ``r`` and ``c6`` (see ``_atm_parts``)."""
        energy, g_r, g_c6 = self._atm_parts(numbers, pairs, r, valid, c6, r0, mol_idx, n_mol, dtype)
        # value: the triple sum; first derivatives: g_r, g_c6 (a linear surrogate of zero value)
        lin = g_r * r + g_c6 * c6
        surrogate = torch.zeros(n_mol, dtype=r.dtype, device=r.device).index_add(0, mol_idx[pairs[0]], lin)
        return energy + (surrogate - surrogate.detach())
