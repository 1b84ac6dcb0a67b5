"""Several fidelities' datasets as one indexable dataset with SAE-subtracted (residual) energies.

Global index order: all molecules of fidelity 0, then fidelity 1, ... Each item is the molecule's
dict (see :mod:`aimnet2mult.data.h5dataset`) plus ``fidelity`` (int), with ``energy`` replaced by
the residual ``energy - sum_atoms SAE_f[Z]`` (float64). Atomic numbers stay standard: the model
shifts them by ``fidelity * fidelity_offset`` itself.
"""

from typing import Dict, List, Mapping, Optional

import numpy as np

from ..elements import symbol
from .h5dataset import MAX_Z, DataError
from .sae import sae_table


def check_fidelity_indices(fids, what: str = "fidelities") -> List[int]:
    """Sorted fidelity indices; raises :class:`DataError` unless they are exactly 0..K-1."""
    try:
        out = sorted(int(f) for f in fids)
    except (TypeError, ValueError):
        raise DataError(f"{what}: fidelity indices must be integers, got {list(fids)}") from None
    if not out:
        raise DataError(f"{what}: no fidelities given")
    if len(set(out)) != len(out):
        raise DataError(f"{what}: duplicate fidelity indices {out}")
    if out[0] < 0:
        raise DataError(f"{what}: negative fidelity index {out[0]}")
    missing = sorted(set(range(out[-1] + 1)) - set(out))
    if missing:
        raise DataError(f"{what}: fidelity indices must be contiguous 0..{len(out) - 1}; got {out}, "
                        f"missing fidelity {', '.join(str(m) for m in missing)}")
    return out


class MixedFidelityDataset:
    """Concatenation of per-fidelity datasets ``{f: dataset}`` with SAE ``{f: {Z: eV}}``.

    ``sae_sources`` ({f: file path or description}) only improves error messages. Every element
    present in a fidelity's data must have an SAE entry for that fidelity (else :class:`DataError`
    naming element, fidelity, data file and SAE source).
    """

    def __init__(self, datasets: Mapping[int, object], sae: Mapping[int, Mapping[int, float]],
                 sae_sources: Optional[Mapping[int, str]] = None):
        fids = check_fidelity_indices(datasets.keys(), "MixedFidelityDataset")
        datasets = {int(f): ds for f, ds in datasets.items()}
        sae = {int(f): {int(z): float(v) for z, v in s.items()} for f, s in sae.items()}
        sources = {int(f): str(s) for f, s in (sae_sources or {}).items()}
        self.datasets: Dict[int, object] = {f: datasets[f] for f in fids}
        self.sae: Dict[int, Dict[int, float]] = {}
        self._tables: Dict[int, np.ndarray] = {}
        for f in fids:
            ds = self.datasets[f]
            src = sources.get(f)
            if f not in sae:
                raise DataError(f"fidelity {f} ({ds.path}): no SAE given" + (f" (source: {src})" if src else ""))
            missing = [z for z in ds.elements if z not in sae[f]]
            if missing:
                names = ", ".join(f"{symbol(z)} (Z={z})" for z in missing)
                raise DataError(f"fidelity {f}: element(s) {names} occur in {ds.path} but have no SAE entry "
                                f"for fidelity {f}" + (f" ({src})" if src else ""))
            self.sae[f] = dict(sae[f])
            self._tables[f] = sae_table(sae[f], MAX_Z + 1)
        lengths = [len(self.datasets[f]) for f in fids]
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.fidelity_of = np.concatenate([np.full(n, f, dtype=np.int64) for f, n in zip(fids, lengths)])
        self.n_atoms = np.concatenate([np.asarray(self.datasets[f].n_atoms, dtype=np.int64) for f in fids])
        self.num_fidelities = len(fids)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def indices_of(self, f: int) -> np.ndarray:
        """Global indices of fidelity ``f``'s molecules."""
        f = int(f)
        if f not in self.datasets:
            raise KeyError(f"no fidelity {f}; have {sorted(self.datasets)}")
        return np.arange(self._offsets[f], self._offsets[f + 1], dtype=np.int64)

    def locate(self, i: int):
        """(fidelity, index within that fidelity's dataset) of global index ``i``."""
        i = int(i)
        n = len(self)
        if i < -n or i >= n:
            raise IndexError(f"index {i} out of range for {n} molecules")
        if i < 0:
            i += n
        f = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return f, i - int(self._offsets[f])

    def __getitem__(self, i) -> Dict[str, np.ndarray]:
        f, j = self.locate(i)
        item = self.datasets[f][j]
        e_sae = float(self._tables[f][item["numbers"]].sum())
        item["energy"] = np.asarray(float(item["energy"]) - e_sae, dtype=np.float64)
        item["fidelity"] = f
        return item

    def residual_energies(self, f: int) -> np.ndarray:
        """Residual energies (eV) of fidelity ``f`` from the composition matrix (no coordinate reads)."""
        ds = self.datasets[int(f)]
        shift = ds.element_counts().astype(np.float64) @ np.array([self.sae[int(f)][z] for z in ds.elements])
        return ds.energies() - shift

    def label_keys(self, f: int) -> List[str]:
        return sorted(self.datasets[int(f)].label_keys)

    def __repr__(self) -> str:
        parts = ", ".join(f"{f}: {len(ds)}" for f, ds in self.datasets.items())
        return f"MixedFidelityDataset({{{parts}}} molecules)"
