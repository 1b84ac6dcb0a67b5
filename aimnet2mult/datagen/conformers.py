"""Conformer sampling: short GFN2-xTB Langevin MD with geometry sanity checks.

For one molecule and one "pool" (``xtb`` or ``dft``) the requested number of frames is spread
over independent trajectories, one per temperature in ``temps`` (cycled). Each trajectory starts
from the reference geometry with Maxwell-Boltzmann velocities, is equilibrated for
``equil_steps`` steps and then sampled every ``interval`` steps. A frame is rejected when two atoms
are closer than ``min_dist`` Å, or when the bond graph differs from the reference one (a reference
bond stretched beyond ``break_factor`` x the covalent-radius sum, or a new contact shorter than
``form_factor`` x the sum); after a rejection the trajectory is restarted. All random numbers come
from a ``numpy.random.SeedSequence`` passed in by the caller, so sampling is deterministic.

Sampled coordinates are rounded to float32 (the precision they are stored with) before they are
labelled, so stored labels belong exactly to stored coordinates.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .store import get_logger


@dataclass(frozen=True)
class MDSettings:
    temps: tuple[float, ...] = (300.0, 450.0, 600.0)
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.01
    equil_steps: int = 400
    interval: int = 20
    min_dist: float = 0.6
    bond_scale: float = 1.2
    break_factor: float = 1.5
    form_factor: float = 1.0
    max_restarts: int = 50


def _radii_sum(numbers):
    from ase.data import covalent_radii

    r = covalent_radii[np.asarray(numbers)]
    return r[:, None] + r[None, :]


def _dmat(pos):
    pos = np.asarray(pos, dtype=float)
    return np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)


def bond_matrix(numbers, pos, scale: float = 1.2) -> np.ndarray:
    """Boolean bond matrix: d_ij < scale * (r_i + r_j) with ASE covalent radii."""
    d = _dmat(pos)
    b = d < scale * _radii_sum(numbers)
    np.fill_diagonal(b, False)
    return b


def check_geometry(numbers, pos, ref_bonds: np.ndarray, s: MDSettings = MDSettings()):
    """Return (ok, reason). ``reason`` is '' when ok."""
    n = len(numbers)
    if n < 2:
        return True, ""
    d = _dmat(pos)
    iu = np.triu_indices(n, 1)
    dmin = float(d[iu].min())
    if dmin < s.min_dist:
        return False, f"atoms closer than {s.min_dist} A ({dmin:.3f})"
    rs = _radii_sum(numbers)
    broken = ref_bonds & (d > s.break_factor * rs)
    if broken.any():
        i, j = np.argwhere(np.triu(broken))[0]
        return False, f"bond {i}-{j} broken ({d[i, j]:.2f} A)"
    formed = (~ref_bonds) & (d < s.form_factor * rs)
    np.fill_diagonal(formed, False)
    if formed.any():
        i, j = np.argwhere(np.triu(formed))[0]
        return False, f"new bond {i}-{j} ({d[i, j]:.2f} A)"
    return True, ""


def _split_counts(n: int, k: int) -> list[int]:
    k = max(1, min(k, n)) if n > 0 else 0
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def sample_md(numbers, positions, charge: int, mult: int, n_frames: int,
              seed_seq: np.random.SeedSequence, s: MDSettings = MDSettings(),
              label: str = "") -> tuple[np.ndarray, dict]:
    """Sample ``n_frames`` geometries (Å, float32-representable float64). Returns (coords, info)."""
    from ase import Atoms, units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from tblite.ase import TBLite

    log = get_logger()
    numbers = np.asarray(numbers, dtype=int)
    ref = np.asarray(positions, dtype=float)
    ref_bonds = bond_matrix(numbers, ref, s.bond_scale)
    frames: list[np.ndarray] = []
    frame_temps: list[float] = []
    n_rejected = 0
    n_restarts = 0
    counts = _split_counts(n_frames, len(s.temps))
    traj_seeds = seed_seq.spawn(len(counts))
    for t_idx, (n_t, tseed) in enumerate(zip(counts, traj_seeds)):
        temp = float(s.temps[t_idx % len(s.temps)])
        rng = np.random.default_rng(tseed)
        got = 0
        while got < n_t:
            atoms = Atoms(numbers=numbers, positions=ref.copy())
            atoms.calc = TBLite(method="GFN2-xTB", charge=charge, multiplicity=mult, verbosity=0)
            with warnings.catch_warnings():  # deprecated in newer ASE; kept for reproducibility
                warnings.simplefilter("ignore", DeprecationWarning)
                MaxwellBoltzmannDistribution(atoms, temperature_K=temp, rng=rng)
            Stationary(atoms)
            atoms.set_constraint(FixCom())
            dyn = Langevin(atoms, s.timestep_fs * units.fs, temperature_K=temp,
                           friction=s.friction_per_fs / units.fs, fixcm=False, rng=rng)
            try:
                dyn.run(s.equil_steps)
                while got < n_t:
                    dyn.run(s.interval)
                    pos = atoms.get_positions().astype(np.float32).astype(np.float64)
                    ok, why = check_geometry(numbers, pos, ref_bonds, s)
                    if not ok:
                        n_rejected += 1
                        log.info("%s: rejected frame at %.0f K (%s); restarting trajectory",
                                 label, temp, why)
                        break
                    frames.append(pos)
                    frame_temps.append(temp)
                    got += 1
            except Exception as exc:  # SCC failure or similar: restart the trajectory
                log.warning("%s: MD failed at %.0f K (%s); restarting trajectory", label, temp, exc)
            if got < n_t:
                n_restarts += 1
                if n_restarts > s.max_restarts:
                    raise RuntimeError(f"{label}: too many MD restarts ({n_restarts})")
    coords = np.array(frames, dtype=np.float64).reshape(n_frames, len(numbers), 3)
    info = {"temps": np.array(frame_temps, dtype=np.float64),
            "n_rejected": int(n_rejected), "n_restarts": int(n_restarts)}
    return coords, info
