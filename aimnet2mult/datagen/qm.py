"""Single-point labels (energy in eV, forces in eV/Å = -dE/dR, charges in e) and FD checks.

* GFN2-xTB / GFN1-xTB via ``tblite.interface.Calculator`` (works in Bohr/Hartree).
* B3LYP via PySCF: RKS (UKS for mult > 1) with density fitting, no dispersion correction,
  analytic gradient including the DFT-grid response (so the forces are the exact derivative of
  the reported energy, grid included).

All unit conversions use the CODATA 2018 constants of :mod:`aimnet2mult.units`. PySCF receives
coordinates in Bohr (converted here), so its own (older) Bohr constant is never used.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from aimnet2mult.units import BOHR_IN_ANGSTROM, HARTREE_IN_EV

FORCE_AU_TO_EV_PER_A = HARTREE_IN_EV / BOHR_IN_ANGSTROM

XTB_METHODS = {"gfn2-xtb": "GFN2-xTB", "gfn1-xtb": "GFN1-xTB"}


# --------------------------------------------------------------------------- xTB
def xtb_calc(method: str, numbers, coords_A, charge: float, mult: int, accuracy: float = 1.0):
    from tblite.interface import Calculator

    calc = Calculator(XTB_METHODS.get(method, method), np.asarray(numbers, dtype=int),
                      np.asarray(coords_A, dtype=float) / BOHR_IN_ANGSTROM,
                      charge=float(charge), uhf=int(mult) - 1)
    calc.set("verbosity", 0)
    calc.set("accuracy", float(accuracy))
    return calc


def xtb_single(method: str, numbers, coords_A, charge: float = 0, mult: int = 1,
               accuracy: float = 1.0) -> dict:
    """Energy (eV), forces (eV/Å) and Mulliken charges (e) of one geometry."""
    res = xtb_calc(method, numbers, coords_A, charge, mult, accuracy).singlepoint()
    return {
        "energy": float(res.get("energy")) * HARTREE_IN_EV,
        "forces": -np.asarray(res.get("gradient"), dtype=float) * FORCE_AU_TO_EV_PER_A,
        "charges": np.asarray(res.get("charges"), dtype=float),
    }


def xtb_energy(method: str, numbers, coords_A, charge: float = 0, mult: int = 1,
               accuracy: float = 1.0) -> float:
    return xtb_single(method, numbers, coords_A, charge, mult, accuracy)["energy"]


# --------------------------------------------------------------------------- DFT
@dataclass(frozen=True)
class DFTSettings:
    xc: str = "b3lyp"
    basis: str = "6-31g*"
    grid_level: int = 3
    conv_tol: float = 1e-9
    conv_tol_grad: float = 1e-6
    max_cycle: int = 100
    density_fit: bool = True
    grid_response: bool = True
    threads: int = 1
    max_memory_mb: int = 2000

    def to_dict(self) -> dict:
        return asdict(self)


def _pyscf_mol(numbers, coords_A, charge: int, mult: int, basis: str):
    from pyscf import gto

    coords_bohr = np.asarray(coords_A, dtype=float) / BOHR_IN_ANGSTROM
    return gto.M(atom=[(int(z), tuple(map(float, r))) for z, r in zip(numbers, coords_bohr)],
                 unit="Bohr", basis=basis, charge=int(round(charge)), spin=int(mult) - 1,
                 verbose=0)


def _dft_mf(mol, mult: int, s: DFTSettings):
    from pyscf import dft

    mf = dft.RKS(mol) if int(mult) == 1 else dft.UKS(mol)
    mf.xc = s.xc
    mf.grids.level = s.grid_level
    mf.conv_tol = s.conv_tol
    mf.conv_tol_grad = s.conv_tol_grad
    mf.max_cycle = s.max_cycle
    mf.max_memory = s.max_memory_mb
    if s.density_fit:
        mf = mf.density_fit()
    return mf


def _run_scf(mf, dm0=None):
    """Run SCF; if DIIS does not converge, continue with second-order SCF (Newton)."""
    e = mf.kernel(dm0=dm0)
    method = "diis"
    if not mf.converged:
        mf2 = mf.newton()
        e = mf2.kernel(mf.make_rdm1())
        method = "diis+newton"
        if mf2.converged:
            mf.mo_coeff, mf.mo_occ, mf.mo_energy = mf2.mo_coeff, mf2.mo_occ, mf2.mo_energy
            mf.e_tot, mf.converged = mf2.e_tot, True
    return e, method


def _set_threads(s: DFTSettings) -> None:
    from pyscf import lib

    lib.num_threads(s.threads)


def dft_single(numbers, coords_A, charge: float = 0, mult: int = 1,
               s: DFTSettings = DFTSettings(), forces: bool = True, dm0=None,
               return_mf: bool = False) -> dict:
    """DFT energy (eV) and, if ``forces``, forces (eV/Å) of one geometry."""
    _set_threads(s)
    t0 = time.perf_counter()
    mol = _pyscf_mol(numbers, coords_A, charge, mult, s.basis)
    mf = _dft_mf(mol, mult, s)
    e, scf_method = _run_scf(mf, dm0)
    out = {"energy": float(e) * HARTREE_IN_EV, "converged": bool(mf.converged),
           "scf_method": scf_method, "scf_cycles": int(getattr(mf, "cycles", -1))}
    if forces and mf.converged:
        g = mf.nuc_grad_method()
        g.grid_response = s.grid_response
        grad = g.kernel()
        out["forces"] = -np.asarray(grad, dtype=float) * FORCE_AU_TO_EV_PER_A
    out["wall_s"] = time.perf_counter() - t0
    if return_mf:
        out["mf"] = mf
    return out


def dft_auxbasis(mf) -> str:
    """Names of the auxiliary (density-fitting) basis sets PySCF picked."""
    try:
        b = mf.with_df.auxmol.basis
        if isinstance(b, dict):
            return ",".join(sorted({str(v) for v in b.values()}))
        return str(b)
    except Exception:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------- FD check
def fd_forces(energy_fn, coords_A, step: float = 1e-3, components=None) -> np.ndarray:
    """Central finite-difference forces -dE/dx (eV/Å) for the given (atom, xyz) components
    (all when None); other entries are NaN."""
    x0 = np.asarray(coords_A, dtype=float)
    fd = np.full(x0.shape, np.nan)
    if components is None:
        components = [(a, k) for a in range(x0.shape[0]) for k in range(3)]
    for a, k in components:
        xp = x0.copy()
        xp[a, k] += step
        xm = x0.copy()
        xm[a, k] -= step
        fd[a, k] = -(energy_fn(xp) - energy_fn(xm)) / (2.0 * step)
    return fd
