"""QM9 (B3LYP/6-31G(2df,p)) + GFN2-xTB at the same geometries: a resumable, cached builder.

Source: the CSV files of the PyPI package ``qm9pack`` (130,831 molecules of H, C, N, O, F with up
to 29 atoms; geometries in Å, energies in Hartree). The package itself is never imported (its
import pulls pandas and pkg_resources); its data folder is located with ``importlib``. Numbers
in the CSV are written as in the original QM9 files, e.g. ``1.2*^-6`` and ``0.``.

High fidelity (0): electronic energy ``U0 - ZPVE`` (Hartree -> eV, CODATA 2018), no forces (the
geometries are B3LYP minima). Low fidelity (1): GFN2-xTB energy, forces and Mulliken charges from
``tblite`` at the same geometries (one OpenMP thread per worker process).

Split (reproducible from ``seed`` alone): one random permutation of all molecules; the first
``n_test`` are the test set, the next ``n_val`` the validation set, the rest the training pool in
permutation order. The high-fidelity training set of size N is the first N molecules of the pool,
the low-fidelity set of size M the first M (so with N <= M the low set is a superset of the high
one). Test and validation molecules never enter a training file.

Work directory (every file written atomically; a restarted run skips what exists)::

    WORKDIR/config.json           settings (fixed at the first run)
    WORKDIR/molecules.npz         selected molecules: qm9 index, numbers, coordinates, energy
    WORKDIR/labels/gfn2/chunk_00000.npz   GFN2-xTB labels of ``chunk`` (256) selected molecules each
    WORKDIR/run.log

Output (``--output``): ``b3lyp_train_{N}.h5``, ``delta_train_{N}.h5`` (B3LYP - GFN2),
``gfn2_train_{M}.h5``, ``{b3lyp,gfn2,delta}_{val,test}.h5`` in the seed's HDF5 layout, each group
also holding ``qm9_index`` (n,) so that disjointness can be checked, and ``manifest.json``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import multiprocessing
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from aimnet2mult.units import HARTREE_IN_EV

from .qm import xtb_single
from .store import (
    Progress,
    RunLock,
    Workdir,
    atomic_write_json,
    atomic_write_npz,
    get_logger,
    read_json,
    read_npz,
    setup_logging,
)

QM9_CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
QM9_SYMBOLS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
MAX_ATOMS = 29

DEFAULTS = {
    "seed": 0,
    "n_test": 2000,
    "n_val": 500,
    "high": [250, 1000, 4000],
    "low": [20000, 50000],
    "chunk": 256,            # molecules per label file
}

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:(?:[eE]|\*\^)[-+]?\d+)?")


class QM9Error(ValueError):
    """Problem with the QM9 source data or the builder's settings."""


def parse_number(text: str) -> float:
    """A QM9 number: ``1.5``, ``0.``, ``-3.2*^-6`` (Mathematica exponent), ``1e-3``."""
    try:
        return float(text.strip().replace("*^", "e"))
    except ValueError:
        raise QM9Error(f"not a number: {text!r}") from None


def parse_coordinates(text: str, n_atoms: int) -> np.ndarray:
    """``[[x,y,z],...]`` (Å) -> (n_atoms, 3) float64."""
    values = [parse_number(t) for t in _NUMBER.findall(text)]
    if len(values) != 3 * n_atoms:
        raise QM9Error(f"expected {3 * n_atoms} coordinates for {n_atoms} atoms, found {len(values)}")
    return np.asarray(values, dtype=np.float64).reshape(n_atoms, 3)


def parse_elements(text: str) -> np.ndarray:
    """``['C','H',...]`` -> atomic numbers (int)."""
    syms = re.findall(r"[A-Za-z]+", text)
    try:
        return np.asarray([QM9_SYMBOLS[s] for s in syms], dtype=np.int64)
    except KeyError as exc:
        raise QM9Error(f"element {exc.args[0]!r} is not one of QM9's H, C, N, O, F") from None


def electronic_energy_ev(u0_hartree: float, zpve_hartree: float) -> float:
    """QM9 electronic energy ``U0 - ZPVE`` in eV (CODATA 2018 Hartree)."""
    return (u0_hartree - zpve_hartree) * HARTREE_IN_EV


def qm9pack_csv_files() -> list[Path]:
    """The CSV files shipped by the installed ``qm9pack`` (without importing the package)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise QM9Error("the QM9 source needs the PyPI package qm9pack: pip install qm9pack "
                       "(or pip install -e '.[datagen]')")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = [data / name for name in QM9_CSV_FILES]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise QM9Error(f"qm9pack is installed but lacks {', '.join(missing)}")
    return files


def read_qm9(files: Sequence[str | os.PathLike]) -> dict[str, np.ndarray]:
    """All molecules of the CSV files, padded to ``MAX_ATOMS``.

    Returns ``qm9_index`` (n,) int64 (QM9's 1-based molecule index), ``n_atoms`` (n,),
    ``numbers`` (n, 29) int8 (0 = padding), ``coord`` (n, 29, 3) float64 Å, ``energy`` (n,)
    float64 eV (U0 - ZPVE). Rows are sorted by ``qm9_index``. Errors name file and line.
    """
    csv.field_size_limit(sys.maxsize)
    rows: list[tuple] = []
    for path in files:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            need = ("Index", "N_atoms", "Elements", "XYZ_Ang", "ZPVE_au", "InternalEnergy_0K_au")
            absent = [k for k in need if k not in (reader.fieldnames or [])]
            if absent:
                raise QM9Error(f"{path}: columns {absent} missing (have {reader.fieldnames})")
            for row in reader:
                try:
                    n = int(row["N_atoms"])
                    z = parse_elements(row["Elements"])
                    if len(z) != n:
                        raise QM9Error(f"{len(z)} elements for N_atoms={n}")
                    if n > MAX_ATOMS:
                        raise QM9Error(f"{n} atoms, more than QM9's {MAX_ATOMS}")
                    xyz = parse_coordinates(row["XYZ_Ang"], n)
                    e = electronic_energy_ev(parse_number(row["InternalEnergy_0K_au"]),
                                             parse_number(row["ZPVE_au"]))
                    rows.append((int(row["Index"]), z, xyz, e))
                except QM9Error as exc:
                    raise QM9Error(f"{path}, line {reader.line_num}: {exc}") from None
    rows.sort(key=lambda r: r[0])
    n = len(rows)
    out = {"qm9_index": np.array([r[0] for r in rows], dtype=np.int64),
           "n_atoms": np.array([len(r[1]) for r in rows], dtype=np.int64),
           "numbers": np.zeros((n, MAX_ATOMS), dtype=np.int8),
           "coord": np.zeros((n, MAX_ATOMS, 3), dtype=np.float64),
           "energy": np.array([r[3] for r in rows], dtype=np.float64)}
    for i, (_, z, xyz, _) in enumerate(rows):
        out["numbers"][i, :len(z)] = z
        out["coord"][i, :len(z)] = xyz
    if len(np.unique(out["qm9_index"])) != n:
        raise QM9Error("duplicate QM9 indices in the source files")
    return out


def make_split(n_molecules: int, seed: int, n_test: int, n_val: int, n_pool: int) -> dict[str, np.ndarray]:
    """Positions (into the sorted molecule table) of test, val and the ordered training pool."""
    if n_test < 1 or n_val < 0 or n_pool < 1:
        raise QM9Error(f"need n_test >= 1, n_val >= 0 and a training pool, got {n_test}, {n_val}, {n_pool}")
    if n_test + n_val + n_pool > n_molecules:
        raise QM9Error(f"test {n_test} + val {n_val} + training {n_pool} molecules exceed the "
                       f"{n_molecules} molecules of the source")
    perm = np.random.default_rng(seed).permutation(n_molecules)
    return {"test": perm[:n_test], "val": perm[n_test:n_test + n_val],
            "pool": perm[n_test + n_val:n_test + n_val + n_pool]}


def _settings(given: dict) -> dict:
    cfg = dict(DEFAULTS)
    for k, v in given.items():
        if v is not None:
            cfg[k] = v
    cfg["high"] = sorted(int(x) for x in cfg["high"])
    cfg["low"] = sorted(int(x) for x in cfg["low"])
    if max(cfg["high"]) > max(cfg["low"]):
        raise QM9Error(f"the largest high-fidelity set ({max(cfg['high'])}) must not exceed the largest "
                       f"low-fidelity set ({max(cfg['low'])}): the low set is a superset of the high one")
    return cfg


def _resolve_config(wd: Workdir, cfg: dict) -> dict:
    if wd.config.exists():
        old = read_json(wd.config)["settings"]
        # the set sizes may change (they are prefixes of one pool) as long as the pool stays
        fixed = [k for k in cfg if k not in ("csv", "high", "low")]
        diff = {k: (old.get(k), cfg[k]) for k in fixed if old.get(k) != cfg[k]}
        if max(old["low"]) != max(cfg["low"]):
            diff["largest low set"] = (max(old["low"]), max(cfg["low"]))
        if diff:
            raise QM9Error(f"{wd.root} was started with other settings: "
                           + ", ".join(f"{k}: {a} (workdir) vs {b} (now)" for k, (a, b) in diff.items())
                           + "; use a new --workdir")
        if (old["high"], old["low"]) != (cfg["high"], cfg["low"]):
            atomic_write_json(wd.config, {"settings": dict(old, high=cfg["high"], low=cfg["low"])})
        return dict(old, high=cfg["high"], low=cfg["low"])
    atomic_write_json(wd.config, {"settings": cfg})
    return cfg


def _select(wd: Workdir, cfg: dict) -> dict[str, np.ndarray]:
    """molecules.npz: the selected molecules in label order (test, val, pool)."""
    path = wd.root / "molecules.npz"
    if path.exists():
        return read_npz(path)
    log = get_logger()
    files = cfg.get("csv") or [str(f) for f in qm9pack_csv_files()]
    log.info("reading QM9 from %s", ", ".join(files))
    table = read_qm9(files)
    split = make_split(len(table["qm9_index"]), cfg["seed"], cfg["n_test"], cfg["n_val"], max(cfg["low"]))
    order = np.concatenate([split["test"], split["val"], split["pool"]])
    role = np.concatenate([np.zeros(len(split["test"])), np.ones(len(split["val"])),
                           np.full(len(split["pool"]), 2)]).astype(np.int8)
    sel = {k: v[order] for k, v in table.items()}
    sel["role"] = role  # 0 test, 1 val, 2 training pool (in pool order)
    atomic_write_npz(path, **sel)
    log.info("selected %d test, %d val, %d training-pool molecules of %d", len(split["test"]),
             len(split["val"]), len(split["pool"]), len(table["qm9_index"]))
    return sel


def _chunk_path(wd: Workdir, k: int) -> Path:
    return wd.root / "labels" / "gfn2" / f"chunk_{k:05d}.npz"


def _label_chunk(args) -> dict:
    numbers, coord, n_atoms = args
    n = len(n_atoms)
    out = {"energy": np.full(n, np.nan), "forces": np.zeros((n, MAX_ATOMS, 3)),
           "charges": np.zeros((n, MAX_ATOMS)), "ok": np.zeros(n, dtype=bool)}
    for i in range(n):
        na = int(n_atoms[i])
        try:
            r = xtb_single("gfn2-xtb", numbers[i, :na], coord[i, :na])
        except Exception:  # tblite raises RuntimeError on SCF failure; the molecule is dropped
            continue
        out["energy"][i] = r["energy"]
        out["forces"][i, :na] = r["forces"]
        out["charges"][i, :na] = r["charges"]
        out["ok"][i] = bool(np.isfinite(r["energy"]))
    return out


def label_chunks(wd: Workdir, sel: dict[str, np.ndarray], workers: int, chunk: int) -> int:
    """GFN2-xTB labels of every selected molecule, chunk by chunk; returns new chunks done."""
    n = len(sel["qm9_index"])
    n_chunks = (n + chunk - 1) // chunk
    todo = [k for k in range(n_chunks) if not _chunk_path(wd, k).exists()]
    prog = Progress("gfn2-xtb", n_chunks, n_chunks - len(todo), unit="chunk")

    def jobs() -> Iterable:
        for k in todo:
            s = slice(k * chunk, min(n, (k + 1) * chunk))
            yield sel["numbers"][s].astype(np.int64), sel["coord"][s], sel["n_atoms"][s]

    def store(k: int, res: dict) -> None:
        atomic_write_npz(_chunk_path(wd, k), **res)
        prog.update(1, extra=f"{int((~res['ok']).sum())} failed in chunk {k}" if not res["ok"].all() else "")

    if workers <= 1:
        for k, job in zip(todo, jobs()):
            store(k, _label_chunk(job))
    else:
        # spawn + OMP_NUM_THREADS=1 in the children's environment: one OpenMP thread per worker
        previous = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for k, res in zip(todo, pool.imap(_label_chunk, jobs())):
                    store(k, res)
        finally:
            if previous is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = previous
    prog.close()
    return len(todo)


def load_labels(wd: Workdir, n: int, chunk: int) -> dict[str, np.ndarray]:
    parts = [read_npz(_chunk_path(wd, k)) for k in range((n + chunk - 1) // chunk)]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _write_set(path: Path, sel: dict, rows: np.ndarray, energy: np.ndarray, forces=None, charges=None) -> dict:
    from .assemble import Bucket, write_h5

    bucket = Bucket()
    for i in rows:
        na = int(sel["n_atoms"][i])
        bucket.add(str(int(sel["qm9_index"][i])), sel["numbers"][i, :na], sel["coord"][i, :na], 0.0, 1.0,
                   float(energy[i]), forces=None if forces is None else forces[i, :na],
                   charges=None if charges is None else charges[i, :na],
                   qm9_index=int(sel["qm9_index"][i]))
    info = write_h5(path, bucket)
    return {"n_molecules": bucket.n, **info}


def assemble_qm9(wd: Workdir, out: Path, cfg: dict, sel: dict) -> dict:
    """Write the HDF5 files and manifest.json (molecules whose xTB failed are left out everywhere)."""
    log = get_logger()
    n = len(sel["qm9_index"])
    lab = load_labels(wd, n, cfg["chunk"])
    ok = lab["ok"]
    role = sel["role"]
    pos = np.arange(n)
    test, val = pos[(role == 0) & ok], pos[(role == 1) & ok]
    pool = pos[(role == 2) & ok]
    delta = sel["energy"] - lab["energy"]
    files: dict[str, dict] = {}
    out.mkdir(parents=True, exist_ok=True)

    def put(name: str, rows: np.ndarray, kind: str) -> None:
        if kind == "b3lyp":
            info = _write_set(out / name, sel, rows, sel["energy"])
        elif kind == "delta":
            info = _write_set(out / name, sel, rows, delta)
        else:
            info = _write_set(out / name, sel, rows, lab["energy"], lab["forces"], lab["charges"])
        files[name] = {"kind": kind, **info}
        log.info("wrote %s: %d molecules", name, len(rows))

    for split, rows in (("test", test), ("val", val)):
        for kind in ("b3lyp", "gfn2", "delta"):
            put(f"{kind}_{split}.h5", rows, kind)
    for nh in cfg["high"]:
        put(f"b3lyp_train_{nh}.h5", pool[:nh], "b3lyp")
        put(f"delta_train_{nh}.h5", pool[:nh], "delta")
    for nl in cfg["low"]:
        put(f"gfn2_train_{nl}.h5", pool[:nl], "gfn2")
    manifest = {
        "source": "QM9 (Ramakrishnan et al. 2014) from the PyPI package qm9pack",
        "levels": {"b3lyp": "B3LYP/6-31G(2df,p) electronic energy U0 - ZPVE (QM9), eV",
                   "gfn2": "GFN2-xTB (tblite) energy, forces, Mulliken charges at the QM9 geometries",
                   "delta": "B3LYP - GFN2-xTB energy (eV), for Delta-learning"},
        "constants": {"hartree_in_ev": HARTREE_IN_EV, "source": "CODATA 2018"},
        "settings": cfg, "xtb_failed_qm9_index": [int(i) for i in sel["qm9_index"][~ok]],
        "files": files,
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def build(workdir, output, settings: dict | None = None, workers: int = 1, verbose: bool = True) -> dict:
    """Run (or resume) every stage and write the files; returns the manifest."""
    wd = Workdir(workdir)
    wd.root.mkdir(parents=True, exist_ok=True)
    setup_logging(wd, verbose)
    with RunLock(wd):
        cfg = _resolve_config(wd, _settings(settings or {}))
        sel = _select(wd, cfg)
        label_chunks(wd, sel, workers, cfg["chunk"])
        return assemble_qm9(wd, Path(output).expanduser().resolve(), cfg, sel)


def main_args(args) -> int:
    settings = {"seed": args.seed, "n_test": args.n_test, "n_val": args.n_val, "high": args.high,
                "low": args.low, "csv": args.csv}
    man = build(args.workdir, args.output, settings, workers=args.workers, verbose=not args.quiet)
    print(json.dumps({name: v["n_molecules"] for name, v in man["files"].items()}))
    return 0
