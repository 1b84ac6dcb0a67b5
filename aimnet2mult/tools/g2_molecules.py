"""Small closed-shell molecules from ASE's G2 collection, for batched-MD examples and checks."""

from typing import Iterable, List

import numpy as np


def small_molecules(n: int, elements: Iterable[int], seed: int = 0, rattle: float = 0.01) -> List:
    """``n`` ASE Atoms cycling through the G2 molecules with at least 2 atoms, an even electron
    count (closed shell at charge 0) and only ``elements`` (atomic numbers); each copy rattled by
    ``rattle`` Å (Gaussian, seeded) so that no two are identical."""
    from ase.build import molecule
    from ase.collections import g2

    allowed = set(int(z) for z in elements)
    names = [m for m in g2.names if set(molecule(m).numbers) <= allowed and len(molecule(m)) >= 2
             and int(molecule(m).numbers.sum()) % 2 == 0]
    if not names:
        raise ValueError(f"no G2 molecule has only the elements {sorted(allowed)}")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = molecule(names[i % len(names)])
        atoms.rattle(rattle, seed=int(rng.integers(1 << 30)))
        out.append(atoms)
    return out
