"""``assemble``: turn a finished workdir into the package's HDF5 files + manifest + data card.

One HDF5 file per (level, split); inside, one group per atom count with the datasets
``coord`` (n,N,3) f4 Å, ``numbers`` (n,N) i4, ``charge`` (n,) f4, ``mult`` (n,) f4,
``energy`` (n,) f8 eV, ``forces`` (n,N,3) f4 eV/Å (levels with forces) and ``charges`` (n,N) f4 e
(GFN2 only). Datasets are gzip-compressed.
"""

from __future__ import annotations

import hashlib
import os
import string
from collections import defaultdict
from pathlib import Path

import numpy as np

from aimnet2mult.units import BOHR_IN_ANGSTROM, HARTREE_IN_EV

from . import __version__
from .pipeline import (
    SPLIT_CODES,
    XTB_TAG,
    dft_level_name,
    dft_prefix,
    dft_queue,
    now_iso,
    regenerate_command,
    software_versions,
    status_dict,
)
from .store import Workdir, atomic_write_bytes, atomic_write_json, get_logger, read_json, read_npz, tmp_path_for

SPLIT_ORDER = ("train", "val", "test", "test_unseen")


class Bucket:
    """Conformers of one (level, split), collected per atom count."""

    def __init__(self):
        self.groups: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        self.molecules: dict[str, int] = defaultdict(int)

    def add(self, name, numbers, coord, charge, mult, energy, forces=None, charges=None, qm9_index=None):
        g = self.groups[len(numbers)]
        g["coord"].append(np.asarray(coord, dtype=np.float32))
        g["numbers"].append(np.asarray(numbers, dtype=np.int32))
        g["charge"].append(np.float32(charge))
        g["mult"].append(np.float32(mult))
        g["energy"].append(np.float64(energy))
        if forces is not None:
            g["forces"].append(np.asarray(forces, dtype=np.float32))
        if charges is not None:
            g["charges"].append(np.asarray(charges, dtype=np.float32))
        if qm9_index is not None:
            g["qm9_index"].append(np.int64(qm9_index))
        self.molecules[name] += 1

    @property
    def n(self) -> int:
        return sum(self.molecules.values())

    def elements(self) -> set:
        """Atomic numbers present in any conformer."""
        return {int(z) for g in self.groups.values() for nums in g["numbers"] for z in np.unique(nums)}


DTYPES = {"coord": np.float32, "numbers": np.int32, "charge": np.float32, "mult": np.float32,
          "energy": np.float64, "forces": np.float32, "charges": np.float32, "qm9_index": np.int64}
KEY_ORDER = ("coord", "numbers", "charge", "mult", "energy", "forces", "charges", "qm9_index")


def write_h5(path: Path, bucket: Bucket) -> dict:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    by_n = {}
    try:
        with h5py.File(tmp, "w") as f:
            for na in sorted(bucket.groups):
                g = bucket.groups[na]
                grp = f.create_group(str(na))
                for k in KEY_ORDER:
                    if k not in g:
                        continue
                    arr = np.stack(g[k]).astype(DTYPES[k]) if g[k][0].ndim else np.asarray(g[k], dtype=DTYPES[k])
                    grp.create_dataset(k, data=arr, compression="gzip", compression_opts=4,
                                       shuffle=arr.ndim > 1 or arr.size > 16)
                by_n[str(na)] = len(g["energy"])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    h = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"by_n_atoms": by_n, "size_bytes": path.stat().st_size, "sha256": h}


def assemble(workdir, outdir, allow_partial: bool = False) -> dict:
    log = get_logger()
    wd = Workdir(workdir)
    out = Path(outdir).expanduser().resolve()
    conf = read_json(wd.config)
    cfg = conf["settings"]
    plan = read_json(wd.plan)
    st = status_dict(wd)
    c = st["counts"]
    complete = (c["conformer_files"] == c["molecules"]
                and all(c[f"{lev}_molecules"] == c["molecules"] for lev in XTB_TAG)
                and c["dft_done"] + c["dft_failed"] == c["dft_planned"])
    if not complete and not allow_partial:
        raise RuntimeError(f"workdir {wd.root} is not complete ({c}); finish `run` first or pass "
                           "--allow-partial")
    if st["running"] and not allow_partial:
        raise RuntimeError("a `run` is still active on this workdir")

    dlev, dpre = dft_level_name(cfg), dft_prefix(cfg)
    buckets: dict[tuple[str, str], Bucket] = defaultdict(Bucket)
    mols = plan["molecules"]
    n_xtb_dropped = 0
    for m in mols:
        cpath = wd.conformers(m["key"])
        if not cpath.exists():
            continue
        conf_npz = read_npz(cpath)
        xc = conf_npz["xtb_coords"]
        codes = plan["split_codes"]["xtb"][m["key"]]
        for lev, tag in XTB_TAG.items():
            lp = wd.xtb_label(tag, m["key"])
            if not lp.exists():
                continue
            lab = read_npz(lp)
            for j in range(xc.shape[0]):
                if not lab["ok"][j]:
                    n_xtb_dropped += 1
                    continue
                buckets[(tag, SPLIT_CODES[codes[j]])].add(
                    m["name"], m["numbers"], xc[j], m["charge"], m["mult"], lab["energy"][j],
                    forces=lab["forces"][j] if "forces" in lab else None,
                    charges=lab["charges"][j] if "charges" in lab else None)
    dft_codes = plan["split_codes"]["dft"]
    coords_cache: dict[str, np.ndarray] = {}
    failures = []
    missing = 0
    for m, j in sorted(dft_queue(plan), key=lambda t: (t[0]["key"], t[1])):
        p = wd.dft_label(m["key"], j)
        if not p.exists():
            if wd.dft_failed(m["key"], j).exists():
                failures.append({"molecule": m["name"], "conformer": j,
                                 **read_json(wd.dft_failed(m["key"], j))})
            else:
                missing += 1
            continue
        if m["key"] not in coords_cache:
            coords_cache = {m["key"]: read_npz(wd.conformers(m["key"]))["dft_coords"]}
        lab = read_npz(p)
        buckets[(dpre, SPLIT_CODES[dft_codes[m["key"]][j]])].add(
            m["name"], m["numbers"], coords_cache[m["key"]][j], m["charge"], m["mult"],
            float(lab["energy"]), forces=lab["forces"])

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    split_molecules = {}
    level_of = {dpre: dlev, "gfn2": "gfn2-xtb", "gfn1": "gfn1-xtb"}
    for pre in (dpre, "gfn2", "gfn1"):
        for split in SPLIT_ORDER:
            b = buckets.get((pre, split))
            if b is None or b.n == 0:
                continue
            fname = f"{pre}_{split}.h5"
            info = write_h5(out / fname, b)
            files[fname] = {"level": level_of[pre], "split": split, "n_conformers": b.n,
                            "n_molecules": len(b.molecules), **info}
            split_molecules[f"{pre}_{split}"] = sorted(b.molecules)
            log.info("wrote %s: %d conformers of %d molecules", fname, b.n, len(b.molecules))

    selfcheck = {}
    for tag in ("gfn2", "gfn1", "dft"):
        if wd.selfcheck(tag).exists():
            r = read_json(wd.selfcheck(tag))
            selfcheck[r["level"]] = r
    aux = next((s.get("auxbasis") for s in selfcheck.get(dlev, {}).get("samples", [])), None)

    def files_of(pre):
        return {f: v["n_conformers"] for f, v in files.items() if f.startswith(pre + "_")}

    levels = {
        dlev: {
            "prefix": dpre, "program": f"PySCF {software_versions()['pyscf']}",
            "method": (f"RKS (UKS if mult > 1) {cfg['dft_xc'].upper()}; PySCF's B3LYP is libxc "
                       "HYB_GGA_XC_B3LYP, the VWN-RPA (Gaussian-style) variant"),
            "basis": cfg["dft_basis"], "density_fitting": True, "auxbasis": aux or "PySCF default",
            "grid_level": cfg["dft_grid_level"], "grid_response_in_forces": True,
            "scf_conv_tol_hartree": cfg["dft_conv_tol"],
            "dispersion": False,
            "dispersion_note": "no dispersion correction (no D3/D4) in energies or forces",
            "labels": ["energy", "forces"], "files": files_of(dpre),
        },
        "gfn2-xtb": {
            "prefix": "gfn2", "program": f"tblite {software_versions()['tblite']}",
            "method": "GFN2-xTB", "dispersion": True,
            "dispersion_note": "D4 dispersion is part of the GFN2-xTB Hamiltonian and energy",
            "labels": ["energy", "forces", "charges"],
            "charges_note": "Mulliken partial charges from tblite",
            "files": files_of("gfn2"),
        },
        "gfn1-xtb": {
            "prefix": "gfn1", "program": f"tblite {software_versions()['tblite']}",
            "method": "GFN1-xTB", "dispersion": True,
            "dispersion_note": "D3(BJ) dispersion is part of the GFN1-xTB energy",
            "labels": ["energy"],
            "labels_note": "energies only, on purpose (no forces, no charges)",
            "files": files_of("gfn1"),
        },
    }
    manifest = {
        "format": ("aimnet2mult HDF5: one group per atom count with coord (n,N,3) f4, numbers "
                   "(n,N) i4, charge (n,) f4, mult (n,) f4, energy (n,) f8, [forces (n,N,3) f4], "
                   "[charges (n,N) f4]"),
        "tool": "aimnet2mult.datagen", "tool_version": __version__, "created": now_iso(),
        "seed": cfg["seed"], "settings": cfg, "partial": not complete,
        "units": {"coord": "angstrom", "energy": "eV (total energy)", "forces": "eV/angstrom",
                  "charge": "e (total molecular charge)", "charges": "e (atomic partial charges)",
                  "mult": "spin multiplicity 2S+1"},
        "constants": {"bohr_in_angstrom": BOHR_IN_ANGSTROM, "hartree_in_ev": HARTREE_IN_EV,
                      "source": "CODATA 2018"},
        "levels": levels,
        "files": files,
        "split_counts": {f"{v['level']}:{v['split']}": v["n_conformers"] for v in files.values()},
        "molecules_per_split": split_molecules,
        "unseen_molecules": plan["unseen"],
        "molecules": [{k: m[k] for k in ("name", "formula", "charge", "mult", "source", "n_xtb",
                                         "n_dft", "unseen")} | {"n_atoms": len(m["numbers"])}
                      for m in mols],
        "self_check": selfcheck,
        "dft_failures": failures, "dft_missing": missing, "xtb_dropped": n_xtb_dropped,
        "software": conf.get("software", {}), "software_assemble": software_versions(),
        "regenerate": {
            "run": regenerate_command(cfg),
            "assemble": "python -m aimnet2mult.datagen assemble --workdir WORKDIR --output OUTDIR",
        },
    }
    atomic_write_json(out / "manifest.json", manifest)
    atomic_write_bytes(out / "DATA_CARD.md", render_data_card(manifest).encode())
    log.info("assembled %d files into %s", len(files), out)
    return manifest


def _table(files: dict) -> str:
    rows = ["| file | level | split | conformers | molecules |", "|---|---|---|---:|---:|"]
    for f, v in files.items():
        rows.append(f"| `{f}` | {v['level']} | {v['split']} | {v['n_conformers']} | "
                    f"{v['n_molecules']} |")
    return "\n".join(rows)


def _checks(sc: dict) -> str:
    if not sc:
        return "(none recorded)"
    rows = ["| level | samples | max abs deviation (eV/Å) | tolerance | result |",
            "|---|---:|---:|---:|---|"]
    for lev, r in sc.items():
        rows.append(f"| {lev} | {len(r['samples'])} | {r['max_abs_dev_eV_per_A']:.2e} | "
                    f"{r['tolerance_eV_per_A']:.0e} | {'pass' if r['passed'] else 'FAIL'} |")
    return "\n".join(rows)


_FALLBACK_CARD = """# aimnet2mult multi-fidelity data set: data card

Generated by `aimnet2mult.datagen` $tool_version on $created (seed $seed). Status: $partial.

$table

Units: Å, eV (total energies), eV/Å (forces = -dE/dR), e. Dispersion: $dft_level has none;
GFN2-xTB (D4) and GFN1-xTB (D3(BJ)) include it. GFN1 files hold energies only.
Held-out molecules (DFT only in test_unseen): $unseen.

## Self-check (forces vs central finite differences)

$checks

## Regeneration

```
$run_cmd
$assemble_cmd
```
"""


def render_data_card(man: dict) -> str:
    tpl_path = Path(__file__).with_name("DATA_CARD_TEMPLATE.md")
    # the template is a package file; fall back to a short card if an install left it out
    tpl = tpl_path.read_text() if tpl_path.exists() else _FALLBACK_CARD
    cfg = man["settings"]
    mols = man["molecules"]
    dlev = next(k for k in man["levels"] if k not in ("gfn2-xtb", "gfn1-xtb"))
    dl = man["levels"][dlev]
    ions = [m["name"] for m in mols if m["charge"] != 0]
    return string.Template(tpl).safe_substitute(
        tool_version=man["tool_version"], created=man["created"], seed=man["seed"],
        n_molecules=len(mols), n_ions=len(ions), ions=", ".join(ions) or "none",
        molecule_names=", ".join(m["name"] for m in mols),
        unseen=", ".join(man["unseen_molecules"]) or "none",
        dft_level=dlev, dft_basis=dl["basis"], dft_aux=dl["auxbasis"],
        dft_grid=dl["grid_level"], dft_conv=dl["scf_conv_tol_hartree"], dft_prog=dl["program"],
        xtb_prog=man["levels"]["gfn2-xtb"]["program"],
        md_temps=", ".join(f"{t:g}" for t in cfg["md_temps"]), md_dt=cfg["md_timestep_fs"],
        md_friction=cfg["md_friction_per_fs"], md_equil=cfg["md_equil_steps"],
        md_interval=cfg["md_interval"],
        table=_table(man["files"]), checks=_checks(man["self_check"]),
        partial=("**PARTIAL** (assembled with --allow-partial before the run finished)"
                 if man["partial"] else "complete"),
        n_failures=len(man["dft_failures"]),
        run_cmd=man["regenerate"]["run"], assemble_cmd=man["regenerate"]["assemble"],
        software=", ".join(f"{k} {v}" for k, v in man["software"].items()),
    )
