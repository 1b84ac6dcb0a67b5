"""Periodic liquid-water-like boxes for tests and benchmarks (ASE; no external data).

A cubic cell of ``n_side**3`` water molecules at 1.0 g/cm³ (O on a jittered cubic lattice, each
molecule randomly oriented, orientations redrawn until no intermolecular atom pair is closer than
``min_distance`` Å under the minimum image). The result looks like a liquid locally (O-O ≈ 3.1 Å,
no overlaps) without needing an equilibration run. ``water_box`` builds a cubic box of about a
requested number of atoms.
"""

from typing import Optional, Tuple

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
    """ASE Atoms: cubic periodic cell with n_side³ water molecules (O(n_side³) to build)."""
    from ase import Atoms
    from ase.build import molecule

    if n_side < 1:
        raise ValueError(f"n_side must be >= 1, got {n_side}")
    rng = np.random.default_rng(seed)
    n_mol = n_side ** 3
    length = (n_mol / WATER_DENSITY) ** (1.0 / 3.0)
    spacing = length / n_side
    h2o = molecule("H2O")
    local = h2o.positions - h2o.positions[0]  # O at the origin
    # molecules already placed, by lattice site (NaN = empty); only the 26 neighbouring sites can
    # hold atoms closer than min_distance (< spacing)
    sites = np.full((n_side, n_side, n_side, 3, 3), np.nan)
    offsets = [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)
               if (dx, dy, dz) != (0, 0, 0)]
    for ix in range(n_side):
        for iy in range(n_side):
            for iz in range(n_side):
                near = {((ix + dx) % n_side, (iy + dy) % n_side, (iz + dz) % n_side) for dx, dy, dz in offsets}
                near.discard((ix, iy, iz))
                others = np.concatenate([sites[s] for s in near]) if near else np.zeros((0, 3))
                others = others[~np.isnan(others[:, 0])]
                centre = (np.array([ix, iy, iz]) + 0.5) * spacing
                for _ in range(1000):
                    xyz = centre + rng.uniform(-0.15, 0.15, 3) + local @ _random_rotation(rng).T
                    if len(others) == 0:
                        break
                    diff = xyz[:, None, :] - others[None, :, :]
                    diff -= length * np.round(diff / length)
                    if np.sqrt((diff ** 2).sum(-1)).min() >= min_distance:
                        break
                else:
                    raise RuntimeError("could not place a water molecule without overlaps")
                sites[ix, iy, iz] = xyz
    return Atoms("OH2" * n_mol, positions=sites.reshape(-1, 3), cell=[length] * 3, pbc=True)


def water_box(n_atoms: int, seed: int = 0, n_side: Optional[int] = None):
    """A cubic periodic water box of about ``n_atoms`` atoms (3 m³ atoms, m = round((n_atoms/3)^⅓)).

    Without ``n_side`` the box is one random ``water_cell(m)``; with ``n_side`` it is a
    ``water_cell(n_side)`` repeated along x, y, z (repetitions as even as possible)."""
    if n_side is None:
        m = max(1, int(round((n_atoms / 3.0) ** (1.0 / 3.0))))
        return water_cell(m, seed)
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
