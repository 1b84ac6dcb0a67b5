"""DFT-D3(BJ) dispersion energy as a TorchScript-compatible module.

Textbook D3 with rational (Becke-Johnson) damping, following simple-dftd3 (the ``dftd3``
package) term by term:

* coordination number ``CN_i = Σ_j 1 / (1 + exp(-k1 (R_cov,ij / r_ij - 1)))`` with k1 = 16 and
  ``R_cov,ij = R_i + R_j`` built from Pyykkö's covalent radii scaled by 4/3 (metals -10 %);
* Gaussian weights ``w_i^a ∝ exp(-k3 (CN_i - CN_ref^a)²)``, k3 = 4, over the valid reference
  points of the element only, normalised; when the normalisation underflows to zero (an atom far
  above all its reference CNs) the reference with the largest CN gets weight 1, as in dftd3.
  Weights are evaluated in float64 whatever the working dtype;
* ``C6_ij = Σ_ab w_i^a w_j^b C6ref_ab``, ``C8_ij = 3 C6_ij Q_i Q_j`` with
  ``Q = sqrt(0.5 <r⁴>/<r²> sqrt(Z))`` (tad-dftd3's ``R4R2`` table);
* ``R0_ij = a1 sqrt(C8/C6) + a2``,
  ``E2 = -Σ_{i<j} [s6 C6 / (r⁶ + R0⁶) + s8 C8 / (r⁸ + R0⁸)]``;
* optional Axilrod-Teller-Muto three-body term (s9 != 0), dense layout only:
  ``E3 = Σ_{i<j<k} C9 (3 cosθ_i cosθ_j cosθ_k + 1) / (r_ij r_ik r_jk)³ · f``,
  ``C9 = s9 sqrt(C6_ij C6_ik C6_jk)``,
  ``f = 1 / (1 + 6 (R̄0 / R̄)^((alp + 2) / 3))`` where R̄ = r_ij r_ik r_jk and
  R̄0 = Π (4/3 · R_vdW,pair) uses the *pairwise van-der-Waals radii* (zero-damping style, as
  dftd3 does for every damping scheme), not the BJ radii a1 sqrt(C8/C6) + a2.

Reference data (tad-dftd3 ``reference-c6.pt``, its reference CNs and r4r2 values, tad-mctc's D3
covalent radii and pairwise vdW radii, all in Bohr / Hartree·Bohr⁶) are loaded once at
construction and registered as float64 buffers, so a saved TorchScript module is
self-contained. Elements Z = 1..103 are covered; row 0 (padding / dummy atoms) is all zero.

Cutoffs. Dense layout (isolated molecules): none, every pair/triple of the molecule is counted.
dftd3 truncates at 40 Bohr (CN), 60 Bohr (two-body) and 40 Bohr (three-body) by default; for
molecules smaller than ~21 Å this is identical. Flat layout (neighbour lists, periodic systems):
the neighbour list given by ``nbmat_key`` defines which pairs enter both the CN and the two-body
sum, and both the CN counting function and the pair energy are multiplied by the smooth switch

    s(r) = 1 - 10 x³ + 15 x⁴ - 6 x⁵,   x = clamp((r - r_on) / (r_off - r_on), 0, 1)

with r_off = ``cutoff`` (default 15 Å) and r_on = r_off - ``switch_width`` (default 3 Å): s and
its first two derivatives are continuous, so energy and forces are continuous as atoms cross the
cutoff. Pairs closer than r_on are untouched (s = 1 exactly). The neglected tail beyond 15 Å is
about -2πρ Σ C6 / (3 r_off³): of order 1e-4 eV per atom in liquid water. When the potential lists
every pair of isolated molecules (non-periodic input with the 'simple' Coulomb method; it marks the
``all_pairs=True``) there is no switch, so the flat layout equals the dense one for
molecules of any size.

Shapes and units (``forward``):

* ``numbers``: atom tensor of atomic numbers, dense (B, N) with 0 = padding, or flat (A,) with a
  trailing dummy atom of Z = 0.
* ``d_ij``: pair tensor of distances in Å, dense (B, N, N) or flat (A, M). Entries where
  ``pair_mask`` is True (self pairs, padding, unused neighbour slots) may hold any positive
  value and contribute exactly zero to energy and gradients.
* returns the per-molecule dispersion energy in eV, float64, (B,) or (n_mol,).

Internally everything is Bohr / Hartree; the working dtype is that of ``d_ij`` (float32 or
float64); float64 table values are cast after gathering, energies are summed in float64.
"""

from typing import Dict, Tuple

import torch
from torch import Tensor, nn

from ..dispersion_params import custom_d3bj_parameters
from ..units import ANGSTROM_TO_BOHR, HARTREE_IN_EV
from . import nbops
from .keys import Key
from .nbops import take_rows as take

__all__ = ["D3BJ", "load_d3_reference_tables"]

# Units (CODATA 2018, from aimnet2mult.units): 1 Bohr = 0.529177210903 Å,
# 1 Hartree = 27.211386245988 eV. Inputs are Å, outputs eV; the module works in Bohr/Hartree.
_ANGSTROM_TO_BOHR: float = ANGSTROM_TO_BOHR
_HARTREE_TO_EV: float = HARTREE_IN_EV

#: D3 model constants (simple-dftd3): counting-function steepness k1, Gaussian weighting
#: factor k3, van-der-Waals radius scaling of the ATM damping.
_K1: float = 16.0
_K3: float = 4.0
_RS9: float = 4.0 / 3.0

#: Distance (Bohr) substituted for masked pairs before any arithmetic (keeps exp/division finite).
_SAFE_R: float = 10.0


def load_d3_reference_tables() -> Dict[str, Tensor]:
    """D3 reference data from tad-dftd3 / tad-mctc as float64 CPU tensors (Bohr units).

    * ``refc6`` (Z, Z, 7, 7): reference C6 (tad-dftd3 ``reference-c6.pt``, Hartree·Bohr⁶)
    * ``refcn`` (Z, 7): reference CNs, -1 marks an unused slot (tad-dftd3 ``reference._load_cn``)
    * ``r4r2`` (Z,): sqrt(0.5 <r⁴>/<r²> sqrt(Z)) (tad-dftd3 ``data.R4R2``)
    * ``rcov`` (Z,): D3 covalent radii in Bohr, already scaled by 4/3 (tad-mctc ``radii.COV_D3``)
    * ``rvdw`` (Z, Z): pairwise vdW radii in Bohr (tad-mctc ``radii.VDW_PAIRWISE``)

    Z = 104 (dummy + H..Lr). Row/column 0 is zero (refcn -1) so padding atoms are inert.
    The radii are used as tad-mctc ships them (converted to Bohr with its CODATA 2014 Bohr,
    4e-10 relative from CODATA 2018: far below any tolerance that matters).
    """
    import tad_dftd3
    from tad_dftd3.data import R4R2
    from tad_dftd3.reference import _load_cn
    from tad_mctc.data import radii

    path = tad_dftd3.__path__[0] + "/reference-c6.pt"
    refc6 = torch.load(path, map_location="cpu", weights_only=True).to(torch.float64)
    nz = refc6.shape[0]
    refcn = _load_cn(dtype=torch.float64, device=torch.device("cpu"))
    r4r2 = R4R2(dtype=torch.float64, device=torch.device("cpu"))[:nz]
    rcov = radii.COV_D3(dtype=torch.float64, device=torch.device("cpu"))[:nz]
    rvdw = radii.VDW_PAIRWISE(dtype=torch.float64, device=torch.device("cpu"))[:nz, :nz]
    if refcn.shape[0] != nz or rvdw.shape[0] != nz:
        raise RuntimeError(
            f"Inconsistent D3 reference tables: c6 {tuple(refc6.shape)}, cn {tuple(refcn.shape)}, "
            f"rvdw {tuple(rvdw.shape)}."
        )
    # padding / dummy element 0 must be inert
    refc6[0].zero_()
    refc6[:, 0].zero_()
    refcn[0].fill_(-1.0)
    r4r2[0] = 0.0
    rcov[0] = 0.0
    rvdw[0].zero_()
    rvdw[:, 0].zero_()
    return {
        "refc6": refc6.contiguous(),
        "refcn": refcn.contiguous(),
        "r4r2": r4r2.contiguous(),
        "rcov": rcov.contiguous(),
        "rvdw": rvdw.contiguous(),
    }


class D3BJ(nn.Module):
    """DFT-D3 with Becke-Johnson damping (and optional ATM three-body term).

    Args: s6, s8 (scalings), a1 (dimensionless), a2 (Bohr), s9 (ATM scaling; 0 disables the
    three-body term), alp (ATM damping exponent parameter). See the module docstring for the
    forward contract.
    """

    s6: float
    s8: float
    a1: float
    a2: float
    s9: float
    alp: float
    max_z: int
    # module constants as attributes (TorchScript cannot close over module-level floats)
    ang2bohr: float
    hartree2ev: float
    k1: float
    k3: float
    rs9: float
    safe_r: float
    cutoff: float
    switch_width: float
    # the energy-term interface (aimnet2mult.nn.terms)
    name: str
    is_dispersion: bool

    def __init__(self, s6: float, s8: float, a1: float, a2: float, s9: float = 0.0,
                 alp: float = 14.0, cutoff: float = 15.0, switch_width: float = 3.0):
        super().__init__()
        p = custom_d3bj_parameters(s6=s6, s8=s8, a1=a1, a2=a2, s9=s9, alp=alp)
        self.s6 = p["s6"]
        self.s8 = p["s8"]
        self.a1 = p["a1"]
        self.a2 = p["a2"]
        self.s9 = p["s9"]
        self.alp = p["alp"]
        self.ang2bohr = _ANGSTROM_TO_BOHR
        self.hartree2ev = _HARTREE_TO_EV
        self.k1 = _K1
        self.k3 = _K3
        self.rs9 = _RS9
        self.safe_r = _SAFE_R
        if not 0.0 <= switch_width < cutoff:
            raise ValueError(f"D3 switch: need 0 <= switch_width < cutoff, got {switch_width}, {cutoff}")
        self.cutoff = float(cutoff)
        self.switch_width = float(switch_width)
        self.name = "d3bj"
        self.is_dispersion = True
        tables = load_d3_reference_tables()
        self.register_buffer("refc6", tables["refc6"])
        self.register_buffer("refcn", tables["refcn"])
        # per element: 1 for the used reference slots, and the exceptional-case weights (1 on the
        # used slot(s) of largest reference CN), so that _weights needs no masking per call
        valid = tables["refcn"] >= 0.0
        largest = tables["refcn"] == tables["refcn"].max(-1, keepdim=True)[0]
        self.register_buffer("ref_valid", valid.to(torch.float64))
        self.register_buffer("ref_fallback", (valid & largest).to(torch.float64))
        self.register_buffer("r4r2", tables["r4r2"])
        self.register_buffer("rcov", tables["rcov"])
        self.register_buffer("rvdw", tables["rvdw"])
        self.max_z = int(tables["refc6"].shape[0]) - 1

    @classmethod
    def from_params(cls, params: Dict[str, float]) -> "D3BJ":
        """Build from a dict as returned by ``d3bj_parameters`` / ``custom_d3bj_parameters``."""
        return cls(s6=params["s6"], s8=params["s8"], a1=params["a1"], a2=params["a2"],
                   s9=params.get("s9", 0.0), alp=params.get("alp", 14.0),
                   cutoff=params.get("cutoff", 15.0), switch_width=params.get("switch_width", 3.0))

    def extra_repr(self) -> str:
        return (f"s6={self.s6}, s8={self.s8}, a1={self.a1}, a2={self.a2}, s9={self.s9}, "
                f"alp={self.alp}, cutoff={self.cutoff}, switch_width={self.switch_width}")

    def counting(self, rc: Tensor, r: Tensor) -> Tensor:
        """D3's coordination-number counting function 1 / (1 + exp(-k1 (rc / r - 1))) (r and the
        summed covalent radii rc in Bohr), as a sigmoid (no overflow for far pairs)."""
        return torch.sigmoid(self.k1 * (rc / r - 1.0))

    def switch(self, d_ij: Tensor) -> Tensor:
        """Smooth switch s(r) of the flat layout (1 below cutoff - switch_width, 0 beyond cutoff)."""
        width = max(self.switch_width, 1e-6)
        x = ((d_ij - (self.cutoff - width)) / width).clamp(0.0, 1.0)
        x3 = x * x * x
        return 1.0 - x3 * (10.0 - 15.0 * x + 6.0 * x * x)

    # ------------------------------------------------------------------------------------------
    def _weights(self, numbers: Tensor, cn: Tensor, derivative: bool = False) -> Tuple[Tensor, Tensor]:
        """Gaussian reference weights w (atom tensor (..., 7)), computed in float64, and, when
        ``derivative``, dw/dCN (else an empty tensor)."""
        refcn = self.refcn[numbers]  # (..., 7) float64
        dcn = refcn - cn.to(torch.float64).unsqueeze(-1)
        w = torch.exp(dcn * dcn * (-self.k3)) * self.ref_valid[numbers]  # unused slots weigh 0
        norm = w.sum(-1, keepdim=True)
        # dftd3: a vanishing norm (underflow far above all reference CNs) puts all weight on the
        # reference with the largest CN and has zero derivative.
        exceptional = norm == 0.0
        safe_norm = torch.where(exceptional, torch.ones_like(norm), norm)
        gw = torch.where(exceptional, self.ref_fallback[numbers], w / safe_norm)
        dgw = torch.empty(0, dtype=gw.dtype, device=gw.device)
        if derivative:
            # zero by itself on unused slots and exceptional atoms, where w (hence dw) is 0
            dw = dcn * w * (2.0 * self.k3)  # d(unnormalised w)/dCN
            dgw = (dw - gw * dw.sum(-1, keepdim=True)) / safe_norm
        return gw, dgw

    def _reference_sums(self, numbers: Tensor, w: Tensor) -> Tuple[Tensor, Tensor]:
        """Σ_a w_i^a C6ref[Z_i, Z, a, :] for every atom i and every element Z present, the first
        half of C6_ij = Σ_ab w_i^a w_j^b C6ref_ab (contracted per atom against the U elements
        present only, then gathered per pair): (g (..., U, 7), lut (max_z + 1,) element -> U index).
        numbers: atom tensor (...) int64; w: reference weights (..., 7) in the working dtype."""
        uz = torch.unique(numbers)
        lut = torch.zeros(self.max_z + 1, dtype=torch.long, device=numbers.device)
        lut[uz] = torch.arange(uz.shape[0], dtype=torch.long, device=numbers.device)
        ref = self.refc6[numbers.unsqueeze(-1), uz].to(w.dtype)  # (..., U, 7, 7)
        return (ref * w.unsqueeze(-2).unsqueeze(-1)).sum(-2), lut

    def _check_numbers(self, numbers: Tensor) -> None:
        if numbers.numel() > 0:
            zmax = int(numbers.max())
            if zmax > self.max_z or int(numbers.min()) < 0:
                raise ValueError(f"D3BJ supports atomic numbers 1..{self.max_z} only, got Z = "
                                 f"{zmax}.")

    def forward(self, numbers: Tensor, d_ij: Tensor, pair_mask: Tensor,
                data: Dict[str, Tensor], nbmat_key: str = "nbmat_lr", all_pairs: bool = False) -> Tensor:
        dense = nbops.is_dense(data)
        if self.s9 != 0.0 and not dense:
            raise RuntimeError(
                "D3 three-body (ATM) term is only available in the dense layout; use s9 = 0 "
                "with the flat (neighbour-list) layout."
            )
        self._check_numbers(numbers)
        dtype = d_ij.dtype
        numbers = numbers.to(torch.long)
        key = nbmat_key

        # distances in Bohr; masked pairs replaced before any arithmetic
        valid = ~pair_mask
        r = torch.where(pair_mask, torch.full_like(d_ij, self.safe_r), d_ij * self.ang2bohr)
        z_j = nbops.gather_j(numbers, data, key)
        # flat layout: smooth cutoff (exactly 1 below cutoff - switch_width), unless the list holds
        # every pair of isolated molecules (``all_pairs``, set by the potential)
        switched = not dense and not all_pairs
        sw = torch.ones_like(d_ij)
        if switched:
            sw = torch.where(valid, self.switch(d_ij), torch.zeros_like(d_ij))

        # coordination number (exponential counting function)
        rcov_i = self.rcov[numbers].to(dtype)
        rc = nbops.atom_i(rcov_i, data, key) + nbops.gather_j(rcov_i, data, key)
        count = self.counting(rc, r)
        count = torch.where(valid, count, torch.zeros_like(count))
        if switched:
            count = count * sw
        cn = nbops.sum_j(count, data, key)

        # reference weights and C6 = Σ_ab w_i^a w_j^b C6ref_ab
        w = self._weights(numbers, cn)[0].to(dtype)  # (..., 7)
        g, lut = self._reference_sums(numbers, w)
        g_ij = nbops.gather_ij(g, lut[z_j], data, key)  # (pair..., 7)
        c6 = (g_ij * nbops.gather_j(w, data, key)).sum(-1)

        # two-body rational damping
        q_i = self.r4r2[numbers].to(dtype)
        qq = 3.0 * nbops.atom_i(q_i, data, key) * nbops.gather_j(q_i, data, key)
        c8 = c6 * qq
        r2, r6, r8, den6, den8 = self._bj_powers(r, qq)
        e_pair = self.s6 * c6 / den6 + self.s8 * c8 / den8
        if switched:
            e_pair = e_pair * sw
        e_pair = torch.where(valid, e_pair, torch.zeros_like(e_pair)).to(torch.float64)
        e_atom = -0.5 * nbops.sum_j(e_pair, data, key)

        if self.s9 != 0.0:
            e_atom = e_atom + self._atm(numbers, r2, valid, c6)

        return nbops.mol_sum(e_atom, data) * self.hartree2ev

    def _bj_powers(self, r: Tensor, qq: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """r², r⁶, r⁸ and the BJ denominators r⁶ + R0⁶, r⁸ + R0⁸ with R0 = a1 sqrt(C8/C6) + a2
        (qq = C8/C6), all in Bohr powers."""
        r0 = self.a1 * torch.sqrt(qq) + self.a2
        r2 = r * r
        r6 = r2 * r2 * r2
        r8 = r6 * r2
        r0_2 = r0 * r0
        r0_6 = r0_2 * r0_2 * r0_2
        return r2, r6, r8, r6 + r0_6, r8 + r0_6 * r0_2

    def switch_derivative(self, d_ij: Tensor) -> Tensor:
        """ds/dd (1/Å) of :meth:`switch`."""
        width = max(self.switch_width, 1e-6)
        x = ((d_ij - (self.cutoff - width)) / width).clamp(0.0, 1.0)
        return -30.0 * x * x * (1.0 - x) * (1.0 - x) / width

    @torch.jit.export
    def energy_and_distance_grad(self, numbers: Tensor, d_ij: Tensor, data: Dict[str, Tensor],
                                 pairs_key: str, all_pairs: bool = False) -> Tuple[Tensor, Tensor]:
        """Two-body D3(BJ) on a flat half pair list ``data[pairs_key]`` (2, P) of real pairs (run
        under no_grad): (energy per molecule (n_mol,) float64 eV, dE/dd_ij (P,) eV/Å).

        The hand-written gradient of :meth:`forward`: the direct r-dependence at fixed C6/C8,
        the C6 dependence through the coordination numbers (dC6/dw · dw/dCN · dCN/dr for both
        atoms of every pair), and the smooth switch. The caller turns dE/dd into forces with one
        autograd vector-Jacobian product through the distances."""
        if self.s9 != 0.0:
            raise RuntimeError("D3 three-body (ATM) term is only available in the dense layout")
        pairs = data[pairs_key]
        i_idx = pairs[0]
        j_idx = pairs[1]
        n_atoms = data[Key.COORD.value].shape[0]
        dtype = d_ij.dtype
        numbers = numbers.to(torch.long)
        self._check_numbers(numbers)
        r = d_ij * self.ang2bohr
        # the smooth cutoff switch, unless the list holds every pair of isolated molecules
        switched = not all_pairs
        sw = self.switch(d_ij) if switched else torch.empty(0, dtype=dtype, device=d_ij.device)

        rcov = self.rcov[numbers].to(dtype)
        rc = take(rcov, i_idx) + take(rcov, j_idx)
        count = self.counting(rc, r)
        count_sw = count * sw if switched else count
        cn = torch.zeros(n_atoms, dtype=dtype, device=d_ij.device)
        cn = cn.index_add(0, i_idx, count_sw).index_add(0, j_idx, count_sw)

        w64, dw_dcn = self._weights(numbers, cn, True)
        w = w64.to(dtype)
        g, lut = self._reference_sums(numbers, w)
        n_u = g.shape[1]
        g = g.reshape(n_atoms * n_u, 7)
        lz = take(lut, numbers)
        dc6_dwj = take(g, i_idx * n_u + take(lz, j_idx))  # (P, 7) = Σ_a w_i^a C6ref[Zi, Zj, a, :]
        dc6_dwi = take(g, j_idx * n_u + take(lz, i_idx))  # (P, 7) = Σ_b C6ref[Zi, Zj, :, b] w_j^b
        c6 = (dc6_dwj * take(w, j_idx)).sum(-1)

        q = self.r4r2[numbers].to(dtype)
        qq = take(q, i_idx) * take(q, j_idx) * 3.0
        r2, r6, r8, den6, den8 = self._bj_powers(r, qq)
        inv6 = torch.reciprocal(den6)
        qq_den8 = qq / den8
        # e_pair = c6 (s6 / den6 + s8 qq / den8) (Hartree, > 0); E = -Σ sw e_pair in eV
        de_pair_dc6 = torch.add(inv6 * self.s6, qq_den8, alpha=self.s8)
        e_pair = c6 * de_pair_dc6
        scale = -self.hartree2ev
        if switched:
            de_pair_dc6 = de_pair_dc6 * sw  # now ∂(sw e_pair)/∂c6
        e_sum = e_pair * sw if switched else e_pair
        e_atom = torch.zeros(n_atoms, dtype=torch.float64, device=d_ij.device).index_add(
            0, i_idx, e_sum.to(torch.float64))
        energy = nbops.mol_sum(e_atom, data) * scale

        # gradient, in eV per Å of every pair distance. Direct part at fixed C6:
        # ∂e_pair/∂r = -c6 r (6 s6 r⁴ / den6² + 8 s8 qq r⁶ / den8²)
        r4 = r2 * r2
        inner = torch.add((r4 * inv6 * inv6) * (6.0 * self.s6), r6 * qq_den8 / den8, alpha=8.0 * self.s8)
        de_dr = inner * r * c6 * (-scale * self.ang2bohr)
        if switched:
            de_dr = de_dr * sw
        # C6 part through the coordination numbers of both atoms of every pair
        g_w = torch.zeros(n_atoms, 7, dtype=dtype, device=d_ij.device)
        de_dc6 = (de_pair_dc6 * scale).unsqueeze(-1)
        g_w = g_w.index_add(0, i_idx, de_dc6 * dc6_dwi).index_add(0, j_idx, de_dc6 * dc6_dwj)
        de_dcn = (g_w * dw_dcn.to(dtype)).sum(-1)  # (A,)
        de_dcn_pair = take(de_dcn, i_idx) + take(de_dcn, j_idx)
        # d count / dd = count (1 - count) (-k1 rc / r²) · (Bohr per Å)
        dcount_dd = count * (1.0 - count) * rc / r2 * (-self.k1 * self.ang2bohr)
        if not switched:
            return energy, de_dr + de_dcn_pair * dcount_dd
        de_dr = de_dr + de_dcn_pair * dcount_dd * sw
        de_dsw = e_pair * scale + de_dcn_pair * count
        return energy, de_dr + de_dsw * self.switch_derivative(d_ij)

    def _atm(self, numbers: Tensor, r2: Tensor, valid: Tensor, c6: Tensor) -> Tensor:
        """Axilrod-Teller-Muto energy per atom (Hartree, float64), dense layout (B, N, N)."""
        # pair quantities, made benign on masked pairs before sqrt
        one = torch.ones_like(c6)
        sc6 = torch.sqrt(torch.where(valid, torch.abs(c6), one))  # (B, N, N)
        rvdw = self.rvdw[numbers.unsqueeze(-1), numbers.unsqueeze(-2)].to(c6.dtype)
        r0 = torch.where(valid, self.rs9 * rvdw, one)
        rr = torch.sqrt(r2)  # r2 is built from safe distances, > 0 everywhere

        # triples (B, i, j, k): pair ij -> [:, :, :, None], ik -> [:, :, None, :], jk -> [:, None]
        vt = valid.unsqueeze(-1) & valid.unsqueeze(-2) & valid.unsqueeze(-3)
        c9 = self.s9 * sc6.unsqueeze(-1) * sc6.unsqueeze(-2) * sc6.unsqueeze(-3)
        r0t = r0.unsqueeze(-1) * r0.unsqueeze(-2) * r0.unsqueeze(-3)
        r1 = rr.unsqueeze(-1) * rr.unsqueeze(-2) * rr.unsqueeze(-3)
        r2ij = r2.unsqueeze(-1)
        r2ik = r2.unsqueeze(-2)
        r2jk = r2.unsqueeze(-3)
        r3 = r1 * r1 * r1
        r5 = r3 * r1 * r1
        fdamp = 1.0 / (1.0 + 6.0 * torch.pow(r0t / r1, (self.alp + 2.0) / 3.0))
        s = (r2ij + r2jk - r2ik) * (r2ij - r2jk + r2ik) * (-r2ij + r2jk + r2ik)
        ang = 0.375 * s / r5 + 1.0 / r3
        e = ang * fdamp * c9
        e = torch.where(vt, e, torch.zeros_like(e)).to(torch.float64)
        return e.sum((-2, -1)) / 6.0
