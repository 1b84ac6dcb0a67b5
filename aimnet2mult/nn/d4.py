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
EEQ model of a periodic system needs an Ewald sum, not implemented). Its forces come from
autograd through the whole chain (CN, EEQ solve, weights, C6); the potential takes them by a
local autograd call on the pair distances, so the network keeps its hand-written gradient.
The ATM sum is dense per molecule: memory O(N³) for a molecule of N atoms (float64: 8 N³ bytes
per temporary, ~10 of them kept for the backward pass; about 80 MB at N = 100, 2 GB at N = 300).

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
    def _erf_count(self, r: Tensor, rc: Tensor) -> Tensor:
        return 0.5 * (1.0 + torch.erf(-self.kcn * (r / rc - 1.0)))

    def coordination_numbers(self, numbers: Tensor, pairs: Tensor, r: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor]:
        """(D4 CN, capped EEQ CN), (A,) each, from the half pair list (``r`` in Bohr)."""
        zi, zj = numbers[pairs[0]], numbers[pairs[1]]
        rc = self.rcov[zi] + self.rcov[zj]
        rc = torch.where(valid, rc, torch.ones_like(rc))
        count = self._erf_count(r, rc)
        den = self.k4 * torch.exp(-(torch.abs(self.en[zi] - self.en[zj]) + self.k5) ** 2 / self.k6)
        c_d4 = torch.where(valid & (r <= self.cn_cutoff), den * count, torch.zeros_like(r))
        c_eeq = torch.where(valid & (r <= self.eeq_cn_cutoff), count, torch.zeros_like(r))
        zero = torch.zeros(numbers.shape[0], dtype=r.dtype, device=r.device)
        cn = zero.index_add(0, pairs[0], c_d4).index_add(0, pairs[1], c_d4)
        cn_e = zero.index_add(0, pairs[0], c_eeq).index_add(0, pairs[1], c_eeq)
        cap = self.eeq_cn_max
        cn_e = math.log1p(math.exp(cap)) - torch.log1p(torch.exp(cap - cn_e))
        return cn, cn_e

    def eeq_charges(self, numbers: Tensor, pairs: Tensor, r: Tensor, valid: Tensor, cn_eeq: Tensor,
                    mol_idx: Tensor, charge: Tensor, n_mol: int) -> Tensor:
        """EEQ(2019) partial charges (A,) e: one bordered dense solve per molecule."""
        n = numbers.shape[0]
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
        cn_r = cn_eeq[ri]
        positive = cn_r > 1e-300  # sqrt'(0) is infinite: an isolated atom (CN 0) must not give NaN forces
        root = torch.where(positive, torch.sqrt(torch.where(positive, cn_r, torch.ones_like(cn_r))),
                           torch.zeros_like(cn_r))
        b = -self.eeq_chi[numbers[ri]] + self.eeq_kcn[numbers[ri]] * root
        rhs = rhs.index_put((mol_r, loc_r), b)
        rhs[:, m] = charge.to(r.dtype)
        x = torch.linalg.solve(mat, rhs.unsqueeze(-1)).squeeze(-1)
        q = torch.zeros(n, dtype=r.dtype, device=device)
        return q.index_put((ri,), x[mol_r, loc_r])

    def weighted_polarizabilities(self, numbers: Tensor, cn: Tensor, q: Tensor) -> Tensor:
        """Σ_a w_i^a α_a(iω) with the quadrature weights folded in: (A, 23)."""
        ngw = self.ngw[numbers]
        valid = ngw > 0
        dcn = cn.unsqueeze(-1) - self.refcn[numbers]
        e1 = torch.exp(-self.wf * dcn * dcn)
        expw = torch.where(ngw > 2.5, e1 + e1 * e1 + e1 * e1 * e1, e1)
        expw = torch.where(valid, expw, torch.zeros_like(expw))
        norm = expw.sum(-1, keepdim=True)
        ok = norm > 0.0
        gw = torch.where(ok, expw / torch.where(ok, norm, torch.ones_like(norm)), self.ref_fallback[numbers])
        zi = self.zeff[numbers].unsqueeze(-1)
        zeta = _zeta(self.ga, self.gam[numbers].unsqueeze(-1), self.refq[numbers] + zi, q.unsqueeze(-1) + zi)
        w = torch.where(valid, gw * zeta, torch.zeros_like(gw))
        return torch.einsum("ar,arw->aw", w, self.alpha[numbers])

    # ------------------------------------------------------------------ energy
    def forward(self, numbers: Tensor, d_ij: Tensor, pair_mask: Tensor, data: Dict[str, Tensor],
                pairs_key: str, all_pairs: bool) -> Tensor:
        if pairs_key != "pairs_lr" or "cell" in data:
            raise ValueError("the D4 term needs every pair of each isolated molecule on the flat half list "
                             "'pairs_lr' (periodic systems are not supported by D4 here)")
        numbers = numbers.to(torch.long)
        pairs = data[pairs_key]
        mol_idx = data["mol_idx"]
        n_mol = nbops.num_molecules(data)
        valid = ~pair_mask
        r = torch.where(valid, d_ij.to(torch.float64) * self.ang2bohr, torch.full_like(d_ij, 10.0, dtype=torch.float64))
        cn, cn_eeq = self.coordination_numbers(numbers, pairs, r, valid)
        if "charge" in data:
            charge = data["charge"].to(torch.float64).reshape(-1)
            if charge.shape[0] == 1 and n_mol > 1:
                charge = charge.expand(n_mol)
        else:
            charge = torch.zeros(n_mol, dtype=torch.float64, device=r.device)
        q = self.eeq_charges(numbers, pairs, r, valid, cn_eeq, mol_idx, charge, n_mol)
        ai, aj = pairs[0], pairs[1]
        # two-body
        pol = self.weighted_polarizabilities(numbers, cn, q)
        c6 = (pol[ai] * pol[aj]).sum(-1)
        qq = 3.0 * self.r4r2[numbers[ai]] * self.r4r2[numbers[aj]]
        r0 = self.a1 * torch.sqrt(qq) + self.a2
        r2 = r * r
        r6 = r2 * r2 * r2
        r0_2 = r0 * r0
        r0_6 = r0_2 * r0_2 * r0_2
        e_pair = -(self.s6 * c6 / (r6 + r0_6) + self.s8 * c6 * qq / (r6 * r2 + r0_6 * r0_2))
        e_pair = torch.where(valid & (r <= self.disp2_cutoff), e_pair, torch.zeros_like(e_pair))
        energy = torch.zeros(n_mol, dtype=torch.float64, device=r.device).index_add(0, mol_idx[ai], e_pair)
        if self.s9 != 0.0:
            pol0 = self.weighted_polarizabilities(numbers, cn, torch.zeros_like(q))
            c6_0 = (pol0[ai] * pol0[aj]).sum(-1)
            energy = energy + self._atm(numbers, pairs, r, valid, c6_0, r0, mol_idx, n_mol, d_ij.dtype)
        return energy * self.hartree2ev

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

    def _atm(self, numbers: Tensor, pairs: Tensor, r: Tensor, valid: Tensor, c6: Tensor, r0: Tensor,
             mol_idx: Tensor, n_mol: int, dtype: torch.dtype) -> Tensor:
        """Axilrod-Teller-Muto energy (n_mol,) Hartree over the unique triples, with its gradient
        with respect to the pair distances and C6 written by hand (the triple sum is most of D4's
        cost; autograd over it would keep ~20 triple-sized temporaries): the returned energy has
        the exact value and the exact first derivatives with respect to ``r`` and ``c6``. The
        triple arithmetic runs in ``dtype`` (the potential's working dtype), the sum in float64."""
        inside = valid & (r <= self.disp3_cutoff)
        with torch.no_grad():
            t_ab, t_ak, t_bk = self._cached_triples(numbers, pairs, mol_idx, n_mol)
            keep = inside.to(dtype)
            rd = r.detach().to(dtype)
            r2 = rd * rd
            sc = torch.sqrt(c6.detach().clamp(min=0.0)).to(dtype) * keep  # a side beyond the cutoff: no triple
            tp = (r0.detach().to(dtype) / rd) ** (self.alp / 3.0)  # per pair: (R0 / r)^(alp/3)
            x, y, z = r2[t_ab], r2[t_ak], r2[t_bk]
            cab, cak, cbk = sc[t_ab], sc[t_ak], sc[t_bk]
            rr2 = x * y * z
            inv3 = 1.0 / (torch.sqrt(rr2) * rr2)
            inv5 = inv3 / rr2
            u, v, w = x + z - y, x - z + y, y + z - x
            uv, uw = u * v, u * w
            ss = uv * w
            ang = 0.375 * ss * inv5 + inv3
            tt = tp[t_ab] * tp[t_ak] * tp[t_bk]
            f = 1.0 / (1.0 + 6.0 * tt)
            af = self.s9 * ang * f
            cbc = cak * cbk
            c9 = cab * cbc
            e = (af * c9).to(torch.float64)
            # e = s9 c9 A F with A = 0.375 S / R⁵ + 1 / R³, F = 1 / (1 + 6 T), S = u v w:
            # de/dx = q dS/dx + p / x (x = r_ij², likewise y, z), dS/dx = 2 x w - u v, ...
            q = (0.375 * self.s9) * c9 * inv5 * f
            p = (self.s9 * f) * c9 * (ang * self.alp * tt * f - 0.9375 * ss * inv5 - 1.5 * inv3)
            de_x = q * (2.0 * x * w - uv) + p / x
            de_y = q * (2.0 * y * u - v * w) + p / y
            de_z = q * (2.0 * z * v - uw) + p / z
            n_p = r.shape[0]
            g_r2 = torch.zeros(n_p, dtype=dtype, device=r.device)
            g_r2 = g_r2.index_add(0, t_ab, de_x).index_add(0, t_ak, de_y).index_add(0, t_bk, de_z)
            g_sc = torch.zeros(n_p, dtype=dtype, device=r.device)
            g_sc = g_sc.index_add(0, t_ab, af * cbc).index_add(0, t_ak, af * cab * cbk)
            g_sc = g_sc.index_add(0, t_bk, af * cab * cak)
            g_r = (g_r2 * 2.0 * rd * keep).to(r.dtype)
            positive = sc > 0.0
            g_c6 = torch.where(positive, g_sc * 0.5 / torch.where(positive, sc, torch.ones_like(sc)),
                               torch.zeros_like(sc)).to(r.dtype)
            mol_t = mol_idx[pairs[0][t_ab]]
            energy = torch.zeros(n_mol, dtype=torch.float64, device=r.device).index_add(0, mol_t, e)
        # value: the triple sum; first derivatives: g_r, g_c6 (a linear surrogate of zero value)
        lin = g_r * r + g_c6 * c6
        surrogate = torch.zeros(n_mol, dtype=r.dtype, device=r.device).index_add(0, mol_idx[pairs[0]], lin)
        return energy + (surrogate - surrogate.detach())
