"""Periodic liquid-water-like boxes for tests and benchmarks (ASE; no external data).

A cubic cell of ``n_side**3`` water molecules at 1.0 g/cm³ (O on a jittered cubic lattice, each
molecule randomly oriented, orientations redrawn until no intermolecular atom pair is closer than
``min_distance`` Å under the minimum image), replicated with ``Atoms.repeat``. The result looks
like a liquid locally (O-O ≈ 3.1 Å, no overlaps) without needing an equilibration run.
"""

from typing import Tuple

import numpy as np

#: molecules per Å³ at 0.997 g/cm³
WATER_DENSITY = 0.0334


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                     [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
                     [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d]])


def water_cell(n_side: int = 4, seed: int = 0, min_distance: float = 1.7):
    """ASE Atoms: cubic periodic cell with n_side³ water molecules."""
    from ase import Atoms
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    n_mol = n_side ** 3
    length = (n_mol / WATER_DENSITY) ** (1.0 / 3.0)
    spacing = length / n_side
    h2o = molecule("H2O")
    local = h2o.positions - h2o.positions[0]  # O at the origin
    placed = np.zeros((0, 3))
    for ix in range(n_side):
        for iy in range(n_side):
            for iz in range(n_side):
                centre = (np.array([ix, iy, iz]) + 0.5) * spacing
                for _ in range(1000):
                    xyz = centre + rng.uniform(-0.15, 0.15, 3) + local @ _random_rotation(rng).T
                    if len(placed) == 0:
                        break
                    diff = xyz[:, None, :] - placed[None, :, :]
                    diff -= length * np.round(diff / length)
                    if np.sqrt((diff ** 2).sum(-1)).min() >= min_distance:
                        break
                else:
                    raise RuntimeError("could not place a water molecule without overlaps")
                placed = np.vstack([placed, xyz])
    return Atoms("OH2" * n_mol, positions=placed, cell=[length] * 3, pbc=True)


def water_box(n_atoms: int, seed: int = 0, n_side: int = 4):
    """A periodic water box of about ``n_atoms`` atoms: a ``water_cell(n_side)`` (3 n_side³ atoms)
    repeated along x, y, z (repetitions as even as possible)."""
    base = water_cell(n_side, seed)
    copies = max(1, int(round(n_atoms / len(base))))
    reps = _factor3(copies)
    return base.repeat(reps)


def _factor3(n: int) -> Tuple[int, int, int]:
    best = (n, 1, 1)
    for a in range(1, n + 1):
        if n % a:
            continue
        for b in range(1, n // a + 1):
            if (n // a) % b:
                continue
            c = n // a // b
            cand = tuple(sorted((a, b, c), reverse=True))
            if max(cand) - min(cand) < max(best) - min(best):
                best = cand
    return best
