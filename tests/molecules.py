"""Test geometries: ASE's G2 set plus a few built by hand (heavy halogens, ions)."""

import numpy as np
from ase import Atoms
from ase.build import molecule


def _replace_halogen(name: str, old: str, new: str, bond: float) -> Atoms:
    atoms = molecule(name)
    i = [a.index for a in atoms if a.symbol == old][0]
    c = [a.index for a in atoms if a.symbol == "C"][0]
    v = atoms.positions[i] - atoms.positions[c]
    atoms.positions[i] = atoms.positions[c] + v / np.linalg.norm(v) * bond
    syms = atoms.get_chemical_symbols()
    syms[i] = new
    atoms.set_chemical_symbols(syms)
    return atoms


def hydroxide() -> Atoms:
    return Atoms("OH", positions=[[0, 0, 0], [0.97, 0, 0]])


def ammonium() -> Atoms:
    d = 1.03 / np.sqrt(3.0)
    return Atoms("NH4", positions=[[0, 0, 0], [d, d, d], [-d, -d, d], [-d, d, -d], [d, -d, -d]])


def get(name: str) -> tuple:
    """(Atoms, total charge)."""
    if name == "OH-":
        return hydroxide(), -1
    if name == "NH4+":
        return ammonium(), 1
    if name == "CH3Br":
        return _replace_halogen("CH3Cl", "Cl", "Br", 1.94), 0
    if name == "CH3I":
        return _replace_halogen("CH3Cl", "Cl", "I", 2.14), 0
    return molecule(name), 0


#: at least ten molecules incl. OH-, NH4+ and Si, P, S, Cl, Br, I
PARITY_SET = ["H2O", "CH4", "C6H6", "CH3CH2OH", "OH-", "NH4+", "SiH4", "PH3", "CH3SH", "CH3Cl",
              "CH3Br", "CH3I", "CH3COOH"]


def batch(names, dtype="float32"):
    """Padded dense batch dict (numpy) of the named molecules."""
    mols = [get(n) for n in names]
    n = max(len(a) for a, _ in mols)
    coord = np.zeros((len(mols), n, 3))
    numbers = np.zeros((len(mols), n), dtype=np.int64)
    charge = np.zeros(len(mols))
    for b, (a, q) in enumerate(mols):
        coord[b, :len(a)] = a.positions
        numbers[b, :len(a)] = a.numbers
        charge[b] = q
    return coord.astype(dtype), numbers, charge.astype(dtype)
