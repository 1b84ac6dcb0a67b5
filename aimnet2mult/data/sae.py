"""Self-atomic energies (SAE): fitting, reading and writing.

The SAE of a fidelity are per-element energies that are subtracted from the reference energies so
that the network learns residual (interaction) energies: ``E_residual = E - sum_atoms SAE[Z]``.

Fitting procedure (:func:`fit_sae`)
-----------------------------------
1. Composition matrix ``F`` (molecules x elements): ``F[m, j]`` = number of atoms of element ``j``
   in molecule ``m``; energies ``E`` in eV. Everything in float64; no intercept or any other column.
2. Least squares ``F @ sae ~= E`` (``numpy.linalg.lstsq``). Molecules with the same composition are
   aggregated first (rows scaled by sqrt(count), target = mean energy of the composition), which
   gives exactly the same solution with far less memory.
3. Outlier trimming ("remove the 2nd and 98th percentile, then recalculate"): the residuals
   ``r = E - F @ sae`` of all molecules are computed; molecules whose residual lies outside the
   ``[2 %, 98 %]`` percentile range of the residuals (``trim=(0.02, 0.98)``, inclusive bounds) are
   dropped, and the least squares fit is repeated once on the kept molecules.
4. No element is ever dropped silently: if trimming would remove every molecule that contains some
   element, all molecules containing that element are kept (and a log line says so). Likewise, if
   trimming would lower the rank of the composition matrix, trimming is abandoned (logged).
5. An element that occurs in no molecule is not in the result. If the compositions do not
   determine every element separately (rank-deficient ``F``, e.g. a data set of water molecules
   only), numpy's minimum-norm solution is used and a warning is logged; the residuals are still
   as small as least squares allows.

``trim=None`` disables step 3. ``seed`` only matters with ``max_samples``: a fit on a random
subset of that many molecules (for very large data sets).

SAE files are YAML, one ``Z: energy`` line per element in eV (``1: -13.587234``);
:func:`read_sae` also accepts element symbols as keys.
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import yaml

from ..elements import atomic_number, symbol
from ..io_utils import atomic_write_text
from ..model_config import ConfigError
from .h5dataset import MAX_Z, DataError

log = logging.getLogger(__name__)


class SAEError(DataError, ConfigError):
    """An SAE file is missing or malformed (both a data and a configuration error)."""


@dataclass
class SAEFit:
    """Result of :func:`fit_sae_details`."""

    sae: Dict[int, float]
    n_molecules: int
    n_used: int                       # molecules of the final fit (after trimming)
    rmse: float                       # RMS residual of the used molecules, eV
    rank_deficient: bool = False
    kept_for_elements: List[int] = field(default_factory=list)  # elements whose molecules were re-added


def _composition(sources) -> Tuple[np.ndarray, np.ndarray, List[int]]:
    """Stack composition matrices and energies of one or several datasets on a common element list."""
    if hasattr(sources, "element_counts"):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise DataError("fit_sae: no datasets given")
    elements = sorted(set(z for ds in sources for z in ds.elements))
    col = {z: j for j, z in enumerate(elements)}
    n = sum(len(ds) for ds in sources)
    F = np.zeros((n, len(elements)), dtype=np.int32)
    E = np.empty(n, dtype=np.float64)
    start = 0
    for ds in sources:
        k = len(ds)
        F[start:start + k, [col[z] for z in ds.elements]] = ds.element_counts()
        E[start:start + k] = ds.energies()
        start += k
    return F, E, elements


def _lstsq(U: np.ndarray, w: np.ndarray, sums: np.ndarray) -> Tuple[np.ndarray, int]:
    """Least squares on unique compositions ``U`` with multiplicities ``w`` and energy sums."""
    sel = w > 0
    sw = np.sqrt(w[sel])
    mean = sums[sel] / w[sel]
    sol, _, rank, _ = np.linalg.lstsq(U[sel] * sw[:, None], mean * sw, rcond=None)
    return sol, int(rank)


def fit_sae_details(dataset_or_list, seed: int = 0, trim: Optional[Tuple[float, float]] = (0.02, 0.98),
                    max_samples: Optional[int] = None) -> SAEFit:
    """Fit SAE as documented in the module docstring; returns the values and fit statistics."""
    F, E, elements = _composition(dataset_or_list)
    if len(E) == 0:
        raise DataError("fit_sae: the dataset has no molecules")
    if max_samples is not None and len(E) > int(max_samples):
        pick = np.sort(np.random.default_rng(seed).choice(len(E), int(max_samples), replace=False))
        F, E = F[pick], E[pick]
        present = F.any(axis=0)
        elements = [z for z, p in zip(elements, present) if p]
        F = F[:, present]
    if not np.isfinite(E).all():
        raise DataError("fit_sae: non-finite energies")
    n, m = F.shape
    U, inv = np.unique(F, axis=0, return_inverse=True)
    U = U.astype(np.float64)
    inv = inv.reshape(-1)
    w_all = np.bincount(inv, minlength=len(U)).astype(np.float64)
    s_all = np.bincount(inv, weights=E, minlength=len(U))
    sol, rank = _lstsq(U, w_all, s_all)
    keep = np.ones(n, dtype=bool)
    kept_for: List[int] = []
    if trim is not None and n >= 3:
        lo_q, hi_q = float(trim[0]), float(trim[1])
        if not (0.0 <= lo_q < hi_q <= 1.0):
            raise ValueError(f"trim must be (low, high) fractions with 0 <= low < high <= 1, got {trim}")
        resid = E - (U @ sol)[inv]
        lo, hi = np.percentile(resid, [100.0 * lo_q, 100.0 * hi_q])
        keep = (resid >= lo) & (resid <= hi)
        for j, z in enumerate(elements):
            has = F[:, j] > 0
            if not (keep & has).any():
                keep |= has
                kept_for.append(z)
                log.warning("SAE fit: outlier trimming would remove every molecule containing %s (Z=%d); "
                            "keeping those %d molecule(s)", symbol(z), z, int(has.sum()))
        w_keep = np.bincount(inv, weights=keep.astype(np.float64), minlength=len(U))
        s_keep = np.bincount(inv, weights=np.where(keep, E, 0.0), minlength=len(U))
        sol_k, rank_k = _lstsq(U, w_keep, s_keep)
        if rank_k < rank:
            log.warning("SAE fit: outlier trimming would make the element energies less determined "
                        "(rank %d -> %d); using all %d molecules", rank, rank_k, n)
            keep[:] = True
        else:
            sol, rank = sol_k, rank_k
        log.info("SAE fit: %d of %d molecules kept after trimming residuals outside the [%g%%, %g%%] "
                 "percentiles", int(keep.sum()), n, 100 * lo_q, 100 * hi_q)
    rank_deficient = rank < m
    if rank_deficient:
        log.warning("SAE fit: the compositions do not determine every element separately (rank %d < %d "
                    "elements: %s); the minimum-norm least-squares solution is used", rank, m,
                    ", ".join(symbol(z) for z in elements))
    resid = (E - (U @ sol)[inv])[keep]
    rmse = float(np.sqrt(np.mean(resid ** 2))) if len(resid) else 0.0
    sae = {int(z): float(v) for z, v in zip(elements, sol)}
    return SAEFit(sae=sae, n_molecules=n, n_used=int(keep.sum()), rmse=rmse, rank_deficient=rank_deficient,
                  kept_for_elements=kept_for)


def fit_sae(dataset_or_list, seed: int = 0, trim: Optional[Tuple[float, float]] = (0.02, 0.98),
            max_samples: Optional[int] = None) -> Dict[int, float]:
    """SAE {Z: eV} fitted on a dataset (or a list of datasets/subsets); see the module docstring."""
    return fit_sae_details(dataset_or_list, seed=seed, trim=trim, max_samples=max_samples).sae


def format_sae(sae: Dict[int, float]) -> str:
    """The SAE file text: one ``Z: energy`` line per element, sorted by Z."""
    lines = []
    for z in sorted(int(k) for k in sae):
        v = float(sae[z])
        if not math.isfinite(v):
            raise ValueError(f"SAE of {symbol(z)} (Z={z}) is not finite: {v}")
        lines.append(f"{z}: {v:.6f}")
    return "\n".join(lines) + "\n"


def write_sae(sae: Dict[int, float], path: Union[str, Path]) -> Path:
    """Write an SAE file atomically (``1: -13.587234`` lines)."""
    return atomic_write_text(path, format_sae(sae))


def read_sae(path: Union[str, Path]) -> Dict[int, float]:
    """Read an SAE YAML file: keys are atomic numbers or element symbols, values energies in eV."""
    p = Path(path)
    if not p.exists():
        raise SAEError(f"{path}: SAE file not found")
    if not p.is_file():
        raise SAEError(f"{path}: SAE path is not a file")
    try:
        raw = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SAEError(f"{path}: SAE file is not valid YAML: {exc}") from None
    except OSError as exc:
        raise SAEError(f"{path}: cannot read the SAE file: {exc}") from None
    if raw is None:
        raise SAEError(f"{path}: SAE file is empty (expected lines 'Z: energy in eV', e.g. '1: -13.587234')")
    if not isinstance(raw, dict):
        raise SAEError(f"{path}: SAE file must be a mapping 'Z: energy in eV', got {type(raw).__name__}")
    out: Dict[int, float] = {}
    for key, value in raw.items():
        try:
            if isinstance(key, bool):
                raise ValueError
            z = atomic_number(key)
        except (TypeError, ValueError):
            raise SAEError(f"{path}: entry {key!r}: not an atomic number or element symbol") from None
        if not 1 <= z <= MAX_Z:
            raise SAEError(f"{path}: entry {key!r}: atomic number {z} outside 1..{MAX_Z}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SAEError(f"{path}: entry {key!r}: value {value!r} is not an energy in eV")
        if not math.isfinite(float(value)):
            raise SAEError(f"{path}: entry {key!r}: energy {value!r} is not finite")
        if z in out:
            raise SAEError(f"{path}: entry {key!r}: element {symbol(z)} (Z={z}) is given twice")
        out[z] = float(value)
    if not out:
        raise SAEError(f"{path}: SAE file has no entries")
    return dict(sorted(out.items()))


def sae_table(sae: Dict[int, float], size: int = MAX_Z + 1) -> np.ndarray:
    """Lookup array ``table[Z] = SAE`` (float64, NaN for elements without an entry)."""
    table = np.full(size, np.nan, dtype=np.float64)
    for z, v in sae.items():
        table[int(z)] = float(v)
    return table
