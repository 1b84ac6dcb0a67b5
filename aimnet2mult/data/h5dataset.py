"""Size-grouped HDF5 molecular datasets (the seed data format), lazy or in memory.

File layout: one group per atom count, named by that count (``"3"``, ``"9"``, ...). In each group
(``n`` molecules of ``N`` atoms):

==============  ============  ========  ==========================================
key             shape         unit      notes
==============  ============  ========  ==========================================
coord           (n, N, 3)     Å         required, float
numbers         (n, N)        --        required, any integer dtype, 1..118 (no padding)
charge          (n,)          e         required, total molecular charge
energy          (n,)          eV        required
forces          (n, N, 3)     eV/Å      optional label
charges         (n, N)        e         optional label (partial charges)
spin_charges    (n, N)        e         optional label (spin densities)
mult            (n,)          --        optional input, spin multiplicity (default 1)
==============  ============  ========  ==========================================

Other keys in a group are ignored. A label may be present in some groups and absent in others:
availability is recorded per molecule (:meth:`SizeGroupedDataset.label_mask`) and a molecule's item
contains exactly the labels it has.

Everything is validated when the file is opened; every problem raises :class:`DataError` naming
the file, the group and the key. Global sample order: groups by ascending atom count, rows in file
order.

Lazy mode (default) keeps only small per-molecule arrays in memory (atom count, energy, charge,
multiplicity, element composition) and reads coordinates, atomic numbers and labels per item. The
HDF5 handle is opened on first access in each process and reopened when ``os.getpid()`` changed, so
the dataset can be used by ``DataLoader`` worker processes (fork or spawn).
"""

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import h5py
import numpy as np

from ..units import MIN_ATOM_DISTANCE

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("coord", "numbers", "charge", "energy")
LABEL_KEYS = ("forces", "charges", "spin_charges")
OPTIONAL_KEYS = LABEL_KEYS + ("mult",)
#: per-atom arrays: key -> trailing shape after (n, N)
PER_ATOM = {"coord": (3,), "numbers": (), "forces": (3,), "charges": (), "spin_charges": ()}
PER_MOLECULE = ("charge", "energy", "mult")
ITEM_DTYPES = {"coord": np.float32, "numbers": np.int64, "charge": np.float32, "mult": np.float32,
               "energy": np.float64, "forces": np.float32, "charges": np.float32, "spin_charges": np.float32}
MAX_Z = 118
#: values read at once while validating (bounds memory for large groups)
_CHUNK_VALUES = 4_000_000


def _close_key(key: str) -> Optional[str]:
    """The known key an unknown one probably meant (case or a small typo), else None."""
    import difflib

    known = REQUIRED_KEYS + OPTIONAL_KEYS
    for k in known:
        if key.lower() == k.lower():
            return k
    match = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.8)
    return match[0] if match else None


def closest_pairs(coord: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """coord (n, N, 3) -> (shortest distance (n,), index pair (n, 2)) of each molecule; inf for N < 2."""
    n, natoms = coord.shape[:2]
    dmin = np.full(n, np.inf)
    pair = np.zeros((n, 2), dtype=np.int64)
    if natoms < 2:
        return dmin, pair
    iu, ju = np.triu_indices(natoms, 1)
    step = max(1, 2_000_000 // len(iu))
    for a in range(0, n, step):
        c = coord[a:a + step].astype(np.float64)
        d = np.linalg.norm(c[:, iu] - c[:, ju], axis=-1)
        k = d.argmin(axis=1)
        dmin[a:a + step] = d[np.arange(len(d)), k]
        pair[a:a + step] = np.stack([iu[k], ju[k]], axis=1)
    return dmin, pair


class DataError(ValueError):
    """Invalid or inconsistent training data (the message names the file, group and key)."""


def _where(path, group: Optional[str] = None, key: Optional[str] = None) -> str:
    out = f"{path}"
    if group is not None:
        out += f": group '{group}'"
    if key is not None:
        out += f": key '{key}'"
    return out


def split_indices(n: int, fraction: float, seed=0) -> Tuple[np.ndarray, np.ndarray]:
    """Deterministic random split of ``range(n)`` into (train, validation) index arrays (sorted).

    The validation share is ``round(n * fraction)``, but at least 1 when ``fraction > 0`` and
    ``n >= 2``, and at most ``n - 1`` (the training share is never empty when ``n >= 1``).
    ``fraction == 0`` gives no validation indices. ``seed`` is anything ``numpy.random.default_rng``
    accepts (an int or a sequence of ints).
    """
    n = int(n)
    fraction = float(fraction)
    if not (0.0 <= fraction < 1.0) or not np.isfinite(fraction):
        raise ValueError(f"validation fraction must lie in [0, 1), got {fraction}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n_val = 0
    if fraction > 0 and n >= 2:
        n_val = min(max(1, int(round(n * fraction))), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]).astype(np.int64), np.sort(perm[:n_val]).astype(np.int64)


class _View:
    """Common interface of a dataset and its subsets; subclasses define ``_root`` and ``_idx``."""

    _root: "SizeGroupedDataset"
    _idx: Optional[np.ndarray]  # indices into the root, None = all

    # -- per-sample arrays -------------------------------------------------------------------
    def _take(self, arr: np.ndarray) -> np.ndarray:
        return arr if self._idx is None else arr[self._idx]

    @property
    def path(self) -> str:
        return self._root._path

    @property
    def in_memory(self) -> bool:
        return self._root._in_memory

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per sample, int64 (n_samples,)."""
        return self._take(self._root._n_atoms_all)

    def mults(self) -> np.ndarray:
        """Spin multiplicity per sample, float32 (n_samples,) (1 where the file has no 'mult')."""
        return self._take(self._root._mult_all)

    def energies(self) -> np.ndarray:
        """Reference energies (eV, float64) of all samples, without reading coordinates."""
        return self._take(self._root._energy_all)

    def label_mask(self, key: str) -> np.ndarray:
        """Bool (n_samples,): which samples have the optional label ``key``."""
        mask = self._root._label_avail.get(key)
        if mask is None:
            return np.zeros(len(self), dtype=bool)
        return self._take(mask)

    @property
    def label_keys(self) -> Set[str]:
        """Optional labels (forces, charges, spin_charges) that at least one sample has."""
        return {k for k in self._root._label_avail if bool(self.label_mask(k).any())}

    def element_counts(self) -> np.ndarray:
        """Composition matrix (n_samples, len(self.elements)), integer: column j counts the atoms
        of element ``self.elements[j]`` in each sample. Built when the file is opened (no I/O)."""
        counts = self._take(self._root._counts_all)
        cols = [self._root._elements_all.index(z) for z in self.elements]
        if cols == list(range(counts.shape[1])):
            return counts
        return counts[:, cols]

    @property
    def elements(self) -> List[int]:
        """Sorted atomic numbers present in these samples."""
        if self._idx is None:
            return list(self._root._elements_all)
        counts = self._root._counts_all[self._idx]
        present = counts.any(axis=0) if len(counts) else np.zeros(counts.shape[1], dtype=bool)
        return [z for z, p in zip(self._root._elements_all, present) if p]

    def subset(self, indices) -> "Subset":
        """A view on some samples (indices into this dataset), with the same interface."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean subset mask has shape {idx.shape}, expected ({len(self)},)")
            idx = np.nonzero(idx)[0]
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset indices out of range for a dataset of {len(self)} samples")
        idx = np.where(idx < 0, idx + len(self), idx)
        root_idx = idx if self._idx is None else self._idx[idx]
        return Subset(self._root, root_idx)

    def __getitem__(self, i) -> Dict[str, np.ndarray]:
        i = int(i)
        n = len(self)
        if i < -n or i >= n:
            raise IndexError(f"sample index {i} out of range for {n} samples ({self.path})")
        if i < 0:
            i += n
        return self._root._item(i if self._idx is None else int(self._idx[i]))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class SizeGroupedDataset(_View):
    """One HDF5 file in the size-grouped format (see the module docstring).

    ``in_memory=True`` loads every array at open; otherwise items are read lazily.
    ``check_finite=False`` skips the NaN/inf scan of coordinates and labels (only for large,
    trusted files; everything else is still validated).
    """

    def __init__(self, path: Union[str, os.PathLike], in_memory: bool = False, check_finite: bool = True):
        self._path = str(path)
        self._in_memory = bool(in_memory)
        self._root = self
        self._idx = None
        self._fh = None
        self._fh_pid = None
        self._dsets: Dict[Tuple[str, str], h5py.Dataset] = {}
        self._open_and_validate(check_finite)

    # -- opening and validation ----------------------------------------------------------------
    def _open_and_validate(self, check_finite: bool) -> None:
        p = Path(self._path)
        if not p.exists():
            raise DataError(f"{self._path}: no such file")
        if p.is_dir():
            raise DataError(f"{self._path}: is a directory, not an HDF5 file")
        try:
            is_h5 = h5py.is_hdf5(self._path)
        except OSError as exc:
            raise DataError(f"{self._path}: cannot be read: {exc}") from None
        if not is_h5:
            raise DataError(f"{self._path}: not an HDF5 file")
        try:
            fh = h5py.File(self._path, "r")
        except OSError as exc:
            raise DataError(f"{self._path}: cannot open the HDF5 file: {exc}") from None
        with fh:
            self._scan(fh, check_finite)

    def _scan(self, fh: h5py.File, check_finite: bool) -> None:
        path = self._path
        names = list(fh.keys())
        if not names:
            raise DataError(f"{path}: empty file: no groups (expected one group per atom count, e.g. '3', '9')")
        groups = []
        for name in names:
            obj = fh[name]
            if not isinstance(obj, h5py.Group):
                raise DataError(f"{path}: top-level object '{name}' is not a group; the file must contain "
                                "only groups named by atom count")
            if not (name.isascii() and name.isdigit()) or int(name) < 1:
                raise DataError(f"{_where(path, name)}: group name is not a positive integer atom count")
            if name != str(int(name)):
                raise DataError(f"{_where(path, name)}: group name has leading zeros; name it '{int(name)}' (two "
                                f"groups such as '{int(name)}' and '{name}' would both mean {int(name)} atoms)")
            groups.append((int(name), name))
        groups.sort()

        self._groups: List[str] = []          # group names, in global order
        self._group_keys: List[Tuple[str, ...]] = []  # optional keys present per group
        self._group_start: List[int] = []
        n_atoms, energy, charge, mult = [], [], [], []
        group_of, row_of = [], []
        label_avail_parts: Dict[str, List[np.ndarray]] = {k: [] for k in LABEL_KEYS}
        comp_parts = []  # (start, zs, counts) per chunk
        self._mem: Dict[str, Dict[str, np.ndarray]] = {}
        total = 0
        shortest: List[float] = []  # median shortest H-X distance per chunk, for the unit check
        for natoms, name in groups:
            grp = fh[name]
            n = self._check_group(grp, name, natoms)
            if n == 0:
                log.info("%s: group '%s' has no molecules; skipped", path, name)
                continue
            present = tuple(k for k in OPTIONAL_KEYS if k in grp)
            g_index = len(self._groups)
            self._groups.append(name)
            self._group_keys.append(present)
            self._group_start.append(total)
            n_atoms.append(np.full(n, natoms, dtype=np.int64))
            group_of.append(np.full(n, g_index, dtype=np.int32))
            row_of.append(np.arange(n, dtype=np.int64))
            for k in LABEL_KEYS:
                label_avail_parts[k].append(np.full(n, k in present, dtype=bool))

            e = self._read_checked(grp, name, "energy", 0, n, check=True)
            energy.append(e.astype(np.float64))
            charge.append(self._read_checked(grp, name, "charge", 0, n, check=True).astype(np.float32))
            if "mult" in present:
                m = self._read_checked(grp, name, "mult", 0, n, check=True).astype(np.float32)
                bad = np.nonzero(m < 1)[0]
                if len(bad):
                    raise DataError(f"{_where(path, name, 'mult')}: multiplicity must be >= 1; {len(bad)} "
                                    f"value(s) below 1, first at row {bad[0]} ({m[bad[0]]})")
                mult.append(m)
            else:
                mult.append(np.ones(n, dtype=np.float32))

            mem = {} if self._in_memory else None
            rows_per_chunk = max(1, _CHUNK_VALUES // (natoms * 3))
            for a in range(0, n, rows_per_chunk):
                b = min(n, a + rows_per_chunk)
                num = grp["numbers"][a:b]
                bad = (num < 1) | (num > MAX_Z)
                if bad.any():
                    r, c = np.argwhere(bad)[0]
                    raise DataError(f"{_where(path, name, 'numbers')}: atomic numbers must lie in 1..{MAX_Z} "
                                    f"(padding zeros are not allowed in this format); {int(bad.sum())} invalid "
                                    f"value(s), first {int(num[r, c])} at row {a + r}, atom {c}")
                num = num.astype(np.int64)
                zs = np.unique(num)
                # per-molecule counts of each present element
                pos = np.searchsorted(zs, num) + len(zs) * np.arange(b - a)[:, None]
                cnt = np.bincount(pos.ravel(), minlength=(b - a) * len(zs)).reshape(b - a, len(zs))
                comp_parts.append((total + a, zs, cnt))
                if mem is not None:
                    mem.setdefault("numbers", []).append(num)
                if mem is None and not check_finite:
                    continue
                for key in ("coord",) + tuple(k for k in LABEL_KEYS if k in present):
                    arr = self._read_checked(grp, name, key, a, b, check=check_finite)
                    if key == "coord":
                        self._check_geometry(name, a, arr, num, shortest)
                    if mem is not None:
                        mem.setdefault(key, []).append(arr.astype(ITEM_DTYPES[key]))
            if mem is not None:
                self._mem[name] = {k: np.concatenate(v) for k, v in mem.items()}
            total += n

        if total == 0:
            raise DataError(f"{path}: empty file: no molecules in any group")
        self._check_electrons(charge, mult, comp_parts)
        if shortest:
            med = float(np.median(shortest))
            if med > 1.6:
                log.warning("%s: the median shortest distance from a hydrogen atom is %.2f (typical X-H bonds are "
                            "0.95-1.1 Å): are the coordinates in Bohr? This format needs Å", path, med)
        self._n_atoms_all = np.concatenate(n_atoms)
        self._energy_all = np.concatenate(energy)
        self._charge_all = np.concatenate(charge)
        self._mult_all = np.concatenate(mult)
        self._group_of = np.concatenate(group_of)
        self._row_of = np.concatenate(row_of)
        self._label_avail = {k: np.concatenate(v) for k, v in label_avail_parts.items()
                             if any(part.any() for part in v)}
        elements = sorted(set(int(z) for _, zs, _ in comp_parts for z in zs))
        col = {z: j for j, z in enumerate(elements)}
        dtype = np.uint16 if int(self._n_atoms_all.max()) <= np.iinfo(np.uint16).max else np.int32
        counts = np.zeros((total, len(elements)), dtype=dtype)
        for start, zs, cnt in comp_parts:
            counts[start:start + len(cnt), [col[int(z)] for z in zs]] = cnt
        self._counts_all = counts
        self._elements_all = elements
        partial = [k for k, m in self._label_avail.items() if not m.all()]
        if partial:
            log.info("%s: label(s) %s present for only part of the molecules (masked per molecule)",
                     path, ", ".join(partial))

    def _check_geometry(self, name: str, start: int, coord: np.ndarray, numbers: np.ndarray,
                        shortest: List[float]) -> None:
        """Coincident or too-close atoms are errors (the exported potential would refuse them)."""
        dmin, pair = closest_pairs(coord)
        bad = np.nonzero(dmin < MIN_ATOM_DISTANCE)[0]
        if len(bad):
            r = int(bad[0])
            raise DataError(f"{_where(self._path, name, 'coord')}: atoms {pair[r, 0]} and {pair[r, 1]} of row "
                            f"{start + r} are {dmin[r]:.3g} Å apart (closer than {MIN_ATOM_DISTANCE} Å: coincident "
                            f"atoms); {len(bad)} such molecule(s) in rows {start}..{start + len(coord) - 1}")
        has_h = (numbers == 1).any(axis=1)
        if has_h.any() and coord.shape[1] >= 2:
            rows = np.nonzero(has_h)[0][:64]
            c = coord[rows].astype(np.float64)
            d = np.linalg.norm(c[:, :, None] - c[:, None], axis=-1)
            d[:, np.arange(c.shape[1]), np.arange(c.shape[1])] = np.inf
            d = np.where((numbers[rows] == 1)[:, :, None], d, np.inf).min(axis=(1, 2))
            shortest.append(float(np.median(d)))

    def _check_electrons(self, charge, mult, comp_parts) -> None:
        """Integer charges, a non-negative electron count and a multiplicity of matching parity."""
        q = np.concatenate(charge).astype(np.float64)
        m = np.concatenate(mult).astype(np.float64)
        zsum = np.zeros(len(q), dtype=np.int64)
        for start, zs, cnt in comp_parts:
            zsum[start:start + len(cnt)] += cnt @ zs
        def where(i: int) -> str:
            g = self._group_start_name(i)
            return f"{_where(self._path, g[0], 'charge')}: row {g[1]}"

        bad = np.nonzero(np.abs(q - np.round(q)) > 1e-6)[0]
        if len(bad):
            raise DataError(f"{where(bad[0])}: total charge {q[bad[0]]} is not an integer")
        bad = np.nonzero(np.abs(m - np.round(m)) > 1e-6)[0]
        if len(bad):
            raise DataError(f"{where(bad[0])}: multiplicity {m[bad[0]]} is not an integer (2S+1)")
        electrons = zsum - np.round(q).astype(np.int64)
        bad = np.nonzero(electrons < 0)[0]
        if len(bad):
            raise DataError(f"{where(bad[0])}: total charge {q[bad[0]]:g} leaves {electrons[bad[0]]} electrons")
        unpaired = np.round(m).astype(np.int64) - 1
        bad = np.nonzero(((electrons - unpaired) % 2 != 0) | (unpaired > electrons))[0]
        if len(bad):  # a warning: the data may use another convention, but usually this is a mistake
            i = int(bad[0])
            log.warning("%s: %d electrons (charge %g) cannot have multiplicity %g; %d molecule(s) have an "
                        "impossible charge/multiplicity pair", where(i), electrons[i], q[i], m[i], len(bad))

    def _group_start_name(self, i: int) -> Tuple[str, int]:
        g = int(np.searchsorted(self._group_start, i, side="right") - 1)
        return self._groups[g], i - self._group_start[g]

    def _check_group(self, grp: h5py.Group, name: str, natoms: int) -> int:
        path = self._path
        for key in grp:
            if key not in REQUIRED_KEYS + OPTIONAL_KEYS:
                close = _close_key(key)
                if close is not None:
                    raise DataError(f"{_where(path, name, key)}: unknown key; did you mean '{close}'? (keys are "
                                    "case-sensitive, and an unknown key is ignored, so this label would not be "
                                    "trained)")
        missing = [k for k in REQUIRED_KEYS if k not in grp]
        if missing:
            raise DataError(f"{_where(path, name)}: missing required key(s) {', '.join(missing)} "
                            f"(required: {', '.join(REQUIRED_KEYS)})")
        n = None
        for key in REQUIRED_KEYS + OPTIONAL_KEYS:
            if key not in grp:
                continue
            ds = grp[key]
            if not isinstance(ds, h5py.Dataset):
                raise DataError(f"{_where(path, name, key)}: is a group, expected a dataset")
            if key == "numbers":
                if not np.issubdtype(ds.dtype, np.integer):
                    raise DataError(f"{_where(path, name, key)}: dtype {ds.dtype}; atomic numbers must be "
                                    "stored as integers")
            elif not (np.issubdtype(ds.dtype, np.floating) or np.issubdtype(ds.dtype, np.integer)):
                raise DataError(f"{_where(path, name, key)}: dtype {ds.dtype} is not a real number type")
            if key in PER_ATOM:
                tail = PER_ATOM[key]
                expected = "(n, " + ", ".join(str(s) for s in (natoms,) + tail) + ")"
                if ds.ndim == 2 + len(tail) and tuple(ds.shape[2:]) == tail and ds.shape[1] != natoms:
                    raise DataError(f"{_where(path, name, key)}: shape {ds.shape} has {ds.shape[1]} atoms per "
                                    f"molecule, but the group name says {natoms}")
                ok = ds.ndim == 2 + len(tail) and tuple(ds.shape[1:]) == (natoms,) + tail
            else:
                expected = "(n,)"
                ok = ds.ndim == 1
            if not ok:
                raise DataError(f"{_where(path, name, key)}: shape {ds.shape}, expected {expected}")
            if n is None:
                n, first = ds.shape[0], key
            elif ds.shape[0] != n:
                raise DataError(f"{_where(path, name, key)}: {ds.shape[0]} molecules, but '{first}' has {n} "
                                "(all arrays of a group must have the same length)")
        return int(n)

    def _read_checked(self, grp: h5py.Group, name: str, key: str, a: int, b: int, check: bool) -> np.ndarray:
        try:
            arr = grp[key][a:b]
        except (OSError, RuntimeError) as exc:  # e.g. a corrupted or truncated chunk
            raise DataError(f"{_where(self._path, name, key)}: rows {a}..{b - 1} cannot be read: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if check and np.issubdtype(arr.dtype, np.floating):
            finite = np.isfinite(arr)
            if not finite.all():
                bad_mol = ~finite.reshape(len(arr), -1).all(axis=1)
                rows = np.nonzero(bad_mol)[0]
                raise DataError(f"{_where(self._path, name, key)}: {int((~finite).sum())} non-finite value(s) "
                                f"(NaN/inf) in {len(rows)} molecule(s); first at row {a + int(rows[0])}")
        return arr

    # -- item access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._n_atoms_all)

    def _dataset(self, name: str, key: str) -> h5py.Dataset:
        pid = os.getpid()
        if self._fh is None or self._fh_pid != pid:
            # never reuse a handle opened in another process (e.g. before a DataLoader fork)
            self._fh = h5py.File(self._path, "r")
            self._fh_pid = pid
            self._dsets = {}
        ds = self._dsets.get((name, key))
        if ds is None:
            ds = self._dsets[(name, key)] = self._fh[name][key]
        return ds

    def _item(self, i: int) -> Dict[str, np.ndarray]:
        g = int(self._group_of[i])
        row = int(self._row_of[i])
        name = self._groups[g]
        out: Dict[str, np.ndarray] = {}
        keys = ("coord", "numbers") + tuple(k for k in LABEL_KEYS if k in self._group_keys[g])
        mem = self._mem.get(name) if self._in_memory else None
        for key in keys:
            if mem is not None:
                out[key] = mem[key][row].copy()
            else:
                try:
                    out[key] = np.asarray(self._dataset(name, key)[row], dtype=ITEM_DTYPES[key])
                except (OSError, KeyError, RuntimeError) as exc:  # e.g. a corrupted chunk, a file changed on disk
                    raise DataError(f"{_where(self._path, name, key)}: row {row} cannot be read: "
                                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        out["charge"] = np.asarray(self._charge_all[i], dtype=np.float32)
        out["mult"] = np.asarray(self._mult_all[i], dtype=np.float32)
        out["energy"] = np.asarray(self._energy_all[i], dtype=np.float64)
        return out

    def close(self) -> None:
        """Close the HDF5 handle of this process (reopened on the next access)."""
        if self._fh is not None and self._fh_pid == os.getpid():
            try:
                self._fh.close()
            except Exception:  # pragma: no cover - closing must never fail loudly
                pass
        self._fh = None
        self._fh_pid = None
        self._dsets = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fh"] = None
        state["_fh_pid"] = None
        state["_dsets"] = {}
        return state

    def __repr__(self) -> str:
        mode = "in memory" if self._in_memory else "lazy"
        return (f"SizeGroupedDataset({self._path!r}, {len(self)} molecules, {mode}, "
                f"elements={self._elements_all}, labels={sorted(self._label_avail)})")


class Subset(_View):
    """Some samples of a :class:`SizeGroupedDataset` (same interface; see ``dataset.subset``)."""

    def __init__(self, root: SizeGroupedDataset, indices: Sequence[int]):
        self._root = root
        self._idx = np.asarray(indices, dtype=np.int64)

    @property
    def indices(self) -> np.ndarray:
        """Indices of these samples in the underlying file's dataset."""
        return self._idx

    def __len__(self) -> int:
        return len(self._idx)

    def __repr__(self) -> str:
        return f"Subset({self._root._path!r}, {len(self)} of {len(self._root)} molecules)"
