"""Molecule catalogue: closed-shell organics from ASE's G2 collection plus a few ions.

Neutral molecules are taken unchanged from :mod:`ase.collections.g2` (MP2/6-31G* geometries);
:func:`g2_candidates` lists every G2 entry that passes the filter (closed shell, >= 3 atoms, only
H C N O F S Cl), and :data:`DEFAULT_NEUTRALS` is the curated subset used by default (covering all
seven elements and the common functional groups, leaving out oddities such as singlet CH2, O3 and
ClF3). Ions are built from neutral G2 parents by adding or removing one proton and relaxing the
result with GFN2-xTB at the ion's charge (see :data:`IONS`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

ALLOWED_ELEMENTS = ("H", "C", "N", "O", "F", "S", "Cl")

#: Curated neutral G2 molecules used by default (50). All pass :func:`passes_filter`.
DEFAULT_NEUTRALS = (
    "H2O", "NH3", "CH4", "SH2", "HCN", "CO2", "OCS", "SO2", "H2CO", "CH3OH",
    "H3CNH2", "CH3SH", "CH3Cl", "H2CF2", "HCF3", "C2H2", "C2H4", "C2H6", "CH3CHO", "CH3CH2OH",
    "CH3OCH3", "HCOOH", "CH3COOH", "HCOOCH3", "CH3CONH2", "CH3CN", "CH3NO2", "CH3COCl",
    "CH3CH2Cl", "H2CCHF", "H2CCHCl", "H2CCHCN", "CH2OCH2", "CH2NHCH2", "CH2SCH2", "CH3SCH3",
    "C2H6SO", "N2H4", "H2O2", "C3H8", "CH3COCH3", "C2H6CHOH", "CH3CH2NH2", "C3H9N",
    "butadiene", "cyclobutane", "C6H6", "C5H5N", "C4H4O", "C4H4S",
)


@dataclass(frozen=True)
class IonSpec:
    name: str
    parent: str  # G2 name of the neutral parent
    op: str  # "add_proton" | "remove_proton"
    site: str  # element of the atom that gains / loses the proton
    charge: int


#: Ions (name, G2 parent, operation, site element, charge).
IONS = (
    IonSpec("OH-", "H2O", "remove_proton", "O", -1),
    IonSpec("H3O+", "H2O", "add_proton", "O", +1),
    IonSpec("NH4+", "NH3", "add_proton", "N", +1),
    IonSpec("CH3NH3+", "H3CNH2", "add_proton", "N", +1),
    IonSpec("HCOO-", "HCOOH", "remove_proton", "O", -1),
    IonSpec("CH3COO-", "CH3COOH", "remove_proton", "O", -1),
)
ION_NAMES = tuple(i.name for i in IONS)


@dataclass
class Molecule:
    name: str
    charge: int
    mult: int
    numbers: list[int]
    positions: list[list[float]]  # Å
    source: str
    formula: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    def atoms(self):
        from ase import Atoms

        return Atoms(numbers=self.numbers, positions=np.asarray(self.positions))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Molecule":
        return cls(**d)


def safe_key(index: int, name: str) -> str:
    """File-system safe, unique key for molecule number ``index``."""
    s = name.replace("+", "p").replace("-", "m")
    s = re.sub(r"[^A-Za-z0-9_]", "_", s)
    return f"{index:03d}_{s}"


def n_electrons(numbers, charge: int = 0) -> int:
    return int(np.sum(numbers)) - int(charge)


def passes_filter(atoms) -> bool:
    """Closed shell (even electron count, no magnetic moments), >= 3 atoms, allowed elements."""
    syms = set(atoms.get_chemical_symbols())
    if not syms <= set(ALLOWED_ELEMENTS) or len(atoms) < 3:
        return False
    if n_electrons(atoms.numbers) % 2 != 0:
        return False
    return float(np.abs(atoms.get_initial_magnetic_moments()).sum()) == 0.0


def g2_candidates() -> list[str]:
    """All G2 names passing :func:`passes_filter`, in the collection's order."""
    from ase.collections import g2

    return [n for n in g2.names if passes_filter(g2[n])]


def g2_molecule(name: str) -> Molecule:
    from ase.collections import g2

    if name not in g2.names:
        raise KeyError(f"{name!r} is not in ase.collections.g2")
    a = g2[name]
    if not passes_filter(a):
        raise ValueError(f"G2 molecule {name!r} fails the closed-shell/element/size filter")
    return Molecule(name=name, charge=0, mult=1, numbers=[int(z) for z in a.numbers],
                    positions=a.positions.tolist(), source=f"ase.collections.g2:{name}",
                    formula=a.get_chemical_formula())


def _neighbors(atoms, i: int) -> list[int]:
    from ase.data import covalent_radii

    d = atoms.get_distances(i, range(len(atoms)))
    r = covalent_radii[atoms.numbers]
    return [j for j in range(len(atoms)) if j != i and d[j] < 1.2 * (r[i] + r[j])]


def _protonate(atoms, site: str):
    from ase import Atoms

    idx = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == site]
    i = idx[0]
    nb = _neighbors(atoms, i)
    pos = atoms.positions
    v = -sum((pos[j] - pos[i]) / np.linalg.norm(pos[j] - pos[i]) for j in nb)
    if np.linalg.norm(v) < 0.3:  # (near-)planar site: go out of plane
        a, b = pos[nb[0]] - pos[i], pos[nb[1]] - pos[i]
        v = v + np.cross(a, b)
    else:
        # small tilt away from any symmetry plane so the relaxation can find the minimum
        a = pos[nb[0]] - pos[i]
        v = v / np.linalg.norm(v) + 0.2 * np.cross(v, a) / (np.linalg.norm(np.cross(v, a)) + 1e-12)
    v = v / np.linalg.norm(v)
    bond = {"O": 0.98, "N": 1.02}[site]
    new = Atoms(numbers=list(atoms.numbers) + [1], positions=np.vstack([pos, pos[i] + bond * v]))
    return new


def _deprotonate(atoms, site: str):
    syms = atoms.get_chemical_symbols()
    for i, s in enumerate(syms):
        if s != site:
            continue
        hs = [j for j in _neighbors(atoms, i) if syms[j] == "H"]
        if hs:
            new = atoms.copy()
            del new[hs[0]]
            return new
    raise ValueError(f"no H bonded to a {site} atom")


def relax_xtb(atoms, charge: int, mult: int = 1, fmax: float = 0.01, steps: int = 500):
    """Relax with GFN2-xTB (tblite's ASE calculator) and BFGS; returns the relaxed copy."""
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    a = atoms.copy()
    a.calc = TBLite(method="GFN2-xTB", charge=charge, multiplicity=mult, verbosity=0)
    opt = BFGS(a, logfile=None)
    converged = opt.run(fmax=fmax, steps=steps)
    f = float(np.abs(a.get_forces()).max())
    out = a.copy()
    return out, bool(converged), f


def build_ion(spec: IonSpec, seed: int = 0) -> Molecule:
    parent = g2_molecule(spec.parent).atoms()
    if spec.op == "add_proton":
        a = _protonate(parent, spec.site)
    elif spec.op == "remove_proton":
        a = _deprotonate(parent, spec.site)
    else:  # pragma: no cover
        raise ValueError(spec.op)
    # tiny deterministic displacement to break the parent's symmetry before relaxing
    rng = np.random.default_rng([seed, 7919])
    a.positions = a.positions + rng.normal(0.0, 0.01, a.positions.shape)
    relaxed, converged, fmax = relax_xtb(a, spec.charge)
    if n_electrons(relaxed.numbers, spec.charge) % 2:
        raise AssertionError(f"{spec.name} is not closed shell")
    return Molecule(
        name=spec.name, charge=spec.charge, mult=1, numbers=[int(z) for z in relaxed.numbers],
        positions=relaxed.positions.tolist(),
        source=(f"ase.collections.g2:{spec.parent} "
                f"{'+H+' if spec.op == 'add_proton' else '-H+'} at {spec.site}, "
                "relaxed with GFN2-xTB (tblite, BFGS fmax 0.01 eV/A)"),
        formula=relaxed.get_chemical_formula(),
        extra={"relax_converged": converged, "relax_final_fmax_eV_per_A": fmax},
    )


def build_molecules(names: list[str] | None = None, seed: int = 0) -> list[Molecule]:
    """Build the molecule list; ``names`` may mix G2 names and ion names (default: all)."""
    if names is None:
        names = list(DEFAULT_NEUTRALS) + list(ION_NAMES)
    if len(set(names)) != len(names):
        raise ValueError("duplicate molecule names")
    ions = {i.name: i for i in IONS}
    out = []
    for n in names:
        out.append(build_ion(ions[n], seed) if n in ions else g2_molecule(n))
    return out
