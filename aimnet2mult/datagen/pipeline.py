"""The ``run`` / ``check`` / ``status`` logic: plan, conformers, xTB labels, self-checks, DFT."""

from __future__ import annotations

import json
import platform
import sys
import time
import zlib
from datetime import datetime, timezone

import numpy as np

from . import __version__
from .conformers import MDSettings, sample_md
from .molecules import build_molecules, safe_key
from .qm import DFTSettings, dft_auxbasis, dft_single, fd_forces, xtb_energy, xtb_single
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

#: Settings of a run. CLI flags are the keys with '-' for '_' (``--n-dft``).
DEFAULTS: dict = {
    "n_dft": 520,  # DFT-labelled conformers in total (incl. the held-out molecules)
    "n_xtb": 5200,  # xTB-labelled conformers in total (GFN2 and GFN1 on the same geometries)
    "seed": 0,
    "molecules": None,  # None: the default catalogue (50 G2 neutrals + 6 ions)
    "n_unseen": 6,  # whole neutral molecules held out from DFT training/validation
    "n_dft_unseen_per_mol": 10,  # DFT conformers per held-out molecule (-> b3lyp_test_unseen)
    "dft_xc": "b3lyp",
    "dft_basis": "6-31g*",
    "dft_grid_level": 3,
    "dft_conv_tol": 1e-9,
    "md_temps": [300.0, 450.0, 600.0],
    "md_timestep_fs": 0.5,
    "md_friction_per_fs": 0.01,
    "md_equil_steps": 400,
    "md_interval": 20,
    "xtb_val_frac": 0.1,
    "dft_val_frac": 0.1,
    "dft_test_frac": 0.1,
    "check_samples": 3,  # samples per level for the finite-difference force check
    "check_step": 1e-3,  # Å
    "check_dft_components": 6,  # random Cartesian components per DFT sample
    "check_tol_xtb": 1e-3,  # eV/Å
    "check_tol_dft": 5e-3,  # eV/Å
}

#: Levels of theory: tag (used in workdir paths and self-check names) -> description
XTB_LEVELS = ("gfn2-xtb", "gfn1-xtb")
XTB_TAG = {"gfn2-xtb": "gfn2", "gfn1-xtb": "gfn1"}
SPLIT_CODES = {"t": "train", "v": "val", "s": "test", "u": "test_unseen"}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def software_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in ("numpy", "ase", "tblite", "pyscf", "h5py"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def dft_level_name(cfg: dict) -> str:
    return f"{cfg['dft_xc'].lower()}/{cfg['dft_basis'].lower()}"


def dft_prefix(cfg: dict) -> str:
    return "".join(c for c in cfg["dft_xc"].lower() if c.isalnum())


def dft_settings(cfg: dict) -> DFTSettings:
    return DFTSettings(xc=cfg["dft_xc"], basis=cfg["dft_basis"], grid_level=int(cfg["dft_grid_level"]),
                       conv_tol=float(cfg["dft_conv_tol"]))


def md_settings(cfg: dict) -> MDSettings:
    return MDSettings(temps=tuple(float(t) for t in cfg["md_temps"]),
                      timestep_fs=float(cfg["md_timestep_fs"]),
                      friction_per_fs=float(cfg["md_friction_per_fs"]),
                      equil_steps=int(cfg["md_equil_steps"]), interval=int(cfg["md_interval"]))


# --------------------------------------------------------------------------- config
def regenerate_command(cfg: dict, workdir: str = "WORKDIR") -> str:
    parts = [f"python -m aimnet2mult.datagen run --workdir {workdir}",
             f"--n-dft {cfg['n_dft']}", f"--n-xtb {cfg['n_xtb']}", f"--seed {cfg['seed']}"]
    for k, default in DEFAULTS.items():
        if k in ("n_dft", "n_xtb", "seed") or cfg.get(k) == default:
            continue
        v = cfg[k]
        if isinstance(v, (list, tuple)):
            v = ",".join(str(x) for x in v)
        parts.append(f"--{k.replace('_', '-')} '{v}'" if k == "molecules" else f"--{k.replace('_', '-')} {v}")
    return " ".join(parts)


def _norm(v):
    return json.loads(json.dumps(v))


def resolve_config(wd: Workdir, given: dict, argv: list[str] | None = None) -> dict:
    """First run: defaults updated with ``given`` and stored; later runs: the stored config, and
    every explicitly given setting must agree with it."""
    given = {k: v for k, v in given.items() if v is not None}
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")
    if wd.config.exists():
        stored = read_json(wd.config)
        cfg = stored["settings"]
        for k, v in given.items():
            if _norm(v) != cfg.get(k):
                raise ValueError(
                    f"setting {k}={v!r} differs from the one stored in {wd.config} "
                    f"({cfg.get(k)!r}); use a fresh --workdir to change settings")
        return cfg
    cfg = _norm({**DEFAULTS, **given})
    atomic_write_json(wd.config, {
        "tool": "aimnet2mult.datagen", "tool_version": __version__, "created": now_iso(),
        "argv": list(argv) if argv is not None else None, "settings": cfg,
        "software": software_versions(),
    })
    return cfg


# --------------------------------------------------------------------------- plan
def _distribute(total: int, n: int, rng: np.random.Generator) -> list[int]:
    if n == 0:
        return []
    base, rem = divmod(int(total), n)
    counts = [base] * n
    for i in rng.permutation(n)[:rem]:
        counts[i] += 1
    return counts


def _split_codes(ids: list[tuple[str, int]], fracs: list[tuple[str, float]], rng, rest: str):
    order = rng.permutation(len(ids))
    codes: dict[tuple[str, int], str] = {}
    start = 0
    for code, frac in fracs:
        n = int(round(frac * len(ids)))
        for j in order[start:start + n]:
            codes[ids[j]] = code
        start += n
    for j in order[start:]:
        codes[ids[j]] = rest
    return codes


def make_plan(cfg: dict) -> dict:
    log = get_logger()
    seed = int(cfg["seed"])
    log.info("building molecule list (ions are relaxed with GFN2-xTB)")
    mols = build_molecules(cfg["molecules"], seed=seed)
    keys = [safe_key(i, m.name) for i, m in enumerate(mols)]
    n = len(mols)
    neutral = [i for i, m in enumerate(mols) if m.charge == 0]
    n_unseen = int(cfg["n_unseen"])
    if n_unseen > len(neutral):
        raise ValueError(f"n_unseen={n_unseen} > number of neutral molecules ({len(neutral)})")
    rng = np.random.default_rng([seed, 11])
    unseen = sorted(int(i) for i in rng.choice(neutral, size=n_unseen, replace=False)) if n_unseen else []
    n_xtb = _distribute(cfg["n_xtb"], n, np.random.default_rng([seed, 12]))
    per_unseen = int(cfg["n_dft_unseen_per_mol"])
    n_dft_rest = int(cfg["n_dft"]) - per_unseen * len(unseen)
    if n_dft_rest < 0:
        raise ValueError("n_dft is smaller than n_unseen * n_dft_unseen_per_mol")
    seen = [i for i in range(n) if i not in unseen]
    rest_counts = _distribute(n_dft_rest, len(seen), np.random.default_rng([seed, 13]))
    n_dft = [0] * n
    for i in unseen:
        n_dft[i] = per_unseen
    for i, c in zip(seen, rest_counts):
        n_dft[i] = c
    # splits (by conformer), deterministic from the seed
    dft_ids = [(keys[i], j) for i in seen for j in range(n_dft[i])]
    dft_codes = _split_codes(dft_ids, [("v", cfg["dft_val_frac"]), ("s", cfg["dft_test_frac"])],
                             np.random.default_rng([seed, 14]), rest="t")
    xtb_ids = [(keys[i], j) for i in range(n) for j in range(n_xtb[i])]
    xtb_codes = _split_codes(xtb_ids, [("v", cfg["xtb_val_frac"])],
                             np.random.default_rng([seed, 15]), rest="t")
    split_codes = {"dft": {}, "xtb": {}}
    for i, k in enumerate(keys):
        split_codes["xtb"][k] = "".join(xtb_codes[(k, j)] for j in range(n_xtb[i]))
        split_codes["dft"][k] = ("u" * n_dft[i] if i in unseen
                                 else "".join(dft_codes[(k, j)] for j in range(n_dft[i])))
    plan = {
        "created": now_iso(), "tool_version": __version__, "seed": seed,
        "molecules": [{**m.to_dict(), "key": k, "n_xtb": n_xtb[i], "n_dft": n_dft[i],
                       "unseen": i in unseen} for i, (m, k) in enumerate(zip(mols, keys))],
        "unseen": [mols[i].name for i in unseen],
        "split_codes": split_codes,
    }
    return plan


def load_or_make_plan(wd: Workdir, cfg: dict) -> dict:
    if wd.plan.exists():
        return read_json(wd.plan)
    plan = make_plan(cfg)
    atomic_write_json(wd.plan, plan)
    log = get_logger()
    log.info("plan: %d molecules (%d ions), held out from DFT training: %s",
             len(plan["molecules"]), sum(m["charge"] != 0 for m in plan["molecules"]),
             ", ".join(plan["unseen"]))
    return plan


def _md_seed(seed: int, name: str, pool: str) -> np.random.SeedSequence:
    return np.random.SeedSequence(int(seed), spawn_key=(zlib.crc32(name.encode()),
                                                         {"xtb": 0, "dft": 1}[pool]))


# --------------------------------------------------------------------------- stages
def stage_conformers(wd: Workdir, cfg: dict, plan: dict) -> int:
    s = md_settings(cfg)
    todo = [m for m in plan["molecules"] if not wd.conformers(m["key"]).exists()]
    prog = Progress("conformers", len(plan["molecules"]), len(plan["molecules"]) - len(todo),
                    unit="molecule")
    for m in todo:
        out = {"numbers": np.asarray(m["numbers"], dtype=np.int32),
               "charge": np.float64(m["charge"]), "mult": np.int32(m["mult"])}
        rej = 0
        for pool in ("xtb", "dft"):
            n = int(m[f"n_{pool}"])
            coords, info = sample_md(m["numbers"], m["positions"], m["charge"], m["mult"], n,
                                     _md_seed(cfg["seed"], m["name"], pool), s, label=m["name"])
            out[f"{pool}_coords"] = coords
            out[f"{pool}_temps"] = info["temps"]
            rej += info["n_rejected"]
        out["n_rejected"] = np.int32(rej)
        atomic_write_npz(wd.conformers(m["key"]), **out)
        prog.update(1, extra=f"{m['name']}: {m['n_xtb']}+{m['n_dft']} frames, {rej} rejected")
    prog.close()
    return len(todo)


def stage_xtb(wd: Workdir, cfg: dict, plan: dict, level: str) -> int:
    tag = XTB_TAG[level]
    log = get_logger()
    mols = plan["molecules"]
    todo = [m for m in mols if not wd.xtb_label(tag, m["key"]).exists()]
    prog = Progress(level, len(mols), len(mols) - len(todo), unit="molecule")
    for m in todo:
        c = read_npz(wd.conformers(m["key"]))
        coords = c["xtb_coords"]
        n, na = coords.shape[0], coords.shape[1]
        e = np.full(n, np.nan)
        f = np.full((n, na, 3), np.nan)
        q = np.full((n, na), np.nan)
        ok = np.zeros(n, dtype=bool)
        for j in range(n):
            try:
                r = xtb_single(level, m["numbers"], coords[j], m["charge"], m["mult"])
            except Exception as exc:
                log.warning("%s %s conformer %d failed: %s", level, m["name"], j, exc)
                continue
            e[j], f[j], q[j], ok[j] = r["energy"], r["forces"], r["charges"], True
        if level == "gfn2-xtb":
            atomic_write_npz(wd.xtb_label(tag, m["key"]), energy=e, forces=f, charges=q, ok=ok)
        else:  # GFN1: energies only (by design)
            atomic_write_npz(wd.xtb_label(tag, m["key"]), energy=e, ok=ok)
        prog.update(1, extra=f"{m['name']}: {int(ok.sum())}/{n} ok")
    prog.close()
    return len(todo)


def dft_queue(plan: dict) -> list[tuple[dict, int]]:
    """All planned DFT labels, round-robin over molecules (so partial runs cover all)."""
    mols = plan["molecules"]
    q = []
    for j in range(max((m["n_dft"] for m in mols), default=0)):
        for m in mols:
            if j < m["n_dft"]:
                q.append((m, j))
    return q


def stage_dft(wd: Workdir, cfg: dict, plan: dict, retry_failed: bool = False) -> int:
    log = get_logger()
    s = dft_settings(cfg)
    q = dft_queue(plan)

    def done(m, j):
        return wd.dft_label(m["key"], j).exists() or (
            wd.dft_failed(m["key"], j).exists() and not retry_failed)

    todo = [(m, j) for m, j in q if not done(m, j)]
    prog = Progress(dft_level_name(cfg), len(q), len(q) - len(todo), unit="label")
    coords_cache: dict[str, np.ndarray] = {}
    for m, j in todo:
        if m["key"] not in coords_cache:
            coords_cache = {m["key"]: read_npz(wd.conformers(m["key"]))["dft_coords"]}
        x = coords_cache[m["key"]][j]
        try:
            r = dft_single(m["numbers"], x, m["charge"], m["mult"], s, forces=True)
            ok = r["converged"] and "forces" in r
        except Exception as exc:  # pragma: no cover - depends on PySCF failures
            r, ok = {"error": repr(exc)}, False
        if ok:
            atomic_write_npz(wd.dft_label(m["key"], j), energy=np.float64(r["energy"]),
                             forces=r["forces"], wall_s=np.float64(r["wall_s"]),
                             scf_cycles=np.int32(r["scf_cycles"]),
                             scf_method=np.str_(r["scf_method"]))
            wd.dft_failed(m["key"], j).unlink(missing_ok=True)
            extra = f"{m['name']}#{j} {r['wall_s']:.1f} s"
        else:
            log.warning("DFT failed for %s conformer %d: %s", m["name"], j,
                        r.get("error", "SCF not converged"))
            atomic_write_json(wd.dft_failed(m["key"], j), {
                "molecule": m["name"], "conformer": j, "time": now_iso(),
                "error": r.get("error", "SCF not converged")})
            extra = f"{m['name']}#{j} FAILED"
        prog.update(1, extra=extra)
    prog.close()
    return len(todo)


# --------------------------------------------------------------------------- self-check
def _max_dev(fd, f):
    mask = ~np.isnan(fd)
    return float(np.abs(fd[mask] - f[mask]).max())


def selfcheck_xtb(wd: Workdir, cfg: dict, plan: dict, level: str) -> dict:
    tag = XTB_TAG[level]
    rng = np.random.default_rng([int(cfg["seed"]), 21, 4])  # same samples for GFN2 and GFN1
    mols = [m for m in plan["molecules"] if m["n_xtb"] > 0 and len(m["numbers"]) >= 2]
    pick = rng.choice(len(mols), size=min(int(cfg["check_samples"]), len(mols)), replace=False)
    h = float(cfg["check_step"])
    samples = []
    for i in sorted(int(p) for p in pick):
        m = mols[i]
        coords = read_npz(wd.conformers(m["key"]))["xtb_coords"]
        j = int(rng.integers(coords.shape[0]))
        x = coords[j]
        r = xtb_single(level, m["numbers"], x, m["charge"], m["mult"])
        fd = fd_forces(lambda y: xtb_energy(level, m["numbers"], y, m["charge"], m["mult"]), x, h)
        rec = {"molecule": m["name"], "conformer": j, "n_atoms": len(m["numbers"]),
               "n_components": int(fd.size), "max_abs_dev_eV_per_A": _max_dev(fd, r["forces"]),
               "max_abs_force_eV_per_A": float(np.abs(r["forces"]).max())}
        lab = wd.xtb_label(tag, m["key"])
        if lab.exists():
            st = read_npz(lab)
            rec["stored_energy_abs_diff_eV"] = float(abs(st["energy"][j] - r["energy"]))
            if "forces" in st:
                rec["stored_forces_max_abs_diff_eV_per_A"] = float(np.abs(st["forces"][j] - r["forces"]).max())
        samples.append(rec)
    return _finish_check(wd, level, XTB_TAG[level], cfg["check_tol_xtb"], h, samples,
                         note=("GFN1 forces are not stored in the data set; the check validates "
                               "tblite's analytic gradient of the stored energies")
                         if level == "gfn1-xtb" else "")


def selfcheck_dft(wd: Workdir, cfg: dict, plan: dict) -> dict:
    s = dft_settings(cfg)
    rng = np.random.default_rng([int(cfg["seed"]), 22])
    mols = sorted([m for m in plan["molecules"] if m["n_dft"] > 0 and len(m["numbers"]) >= 2],
                  key=lambda m: (len(m["numbers"]), m["key"]))
    small = [m for m in mols if len(m["numbers"]) <= 6] or mols[:3]
    pick = rng.choice(len(small), size=min(int(cfg["check_samples"]), len(small)), replace=False)
    h = float(cfg["check_step"])
    samples = []
    for i in sorted(int(p) for p in pick):
        m = small[i]
        coords = read_npz(wd.conformers(m["key"]))["dft_coords"]
        j = int(rng.integers(coords.shape[0]))
        x = coords[j]
        r = dft_single(m["numbers"], x, m["charge"], m["mult"], s, forces=True, return_mf=True)
        dm0 = r["mf"].make_rdm1()
        na = len(m["numbers"])
        ncomp = min(int(cfg["check_dft_components"]), 3 * na)
        flat = rng.choice(3 * na, size=ncomp, replace=False)
        comps = [(int(c) // 3, int(c) % 3) for c in sorted(flat)]
        t0 = time.perf_counter()
        fd = fd_forces(lambda y: dft_single(m["numbers"], y, m["charge"], m["mult"], s,
                                            forces=False, dm0=dm0)["energy"], x, h, comps)
        samples.append({"molecule": m["name"], "conformer": j, "n_atoms": na,
                        "n_components": ncomp, "max_abs_dev_eV_per_A": _max_dev(fd, r["forces"]),
                        "max_abs_force_eV_per_A": float(np.abs(r["forces"]).max()),
                        "label_wall_s": r["wall_s"], "fd_wall_s": time.perf_counter() - t0,
                        "auxbasis": dft_auxbasis(r["mf"])})
    return _finish_check(wd, dft_level_name(cfg), "dft", cfg["check_tol_dft"], h, samples,
                         note="random Cartesian components per sample (each costs two SCFs)")


def _finish_check(wd, level, tag, tol, h, samples, note=""):
    dev = max((s["max_abs_dev_eV_per_A"] for s in samples), default=float("nan"))
    rec = {"level": level, "step_A": h, "tolerance_eV_per_A": float(tol),
           "max_abs_dev_eV_per_A": dev, "passed": bool(dev < tol), "samples": samples,
           "time": now_iso()}
    if note:
        rec["note"] = note
    atomic_write_json(wd.selfcheck(tag), rec)
    log = get_logger()
    log.info("self-check %s: max |F_analytic - F_fd| = %.2e eV/A over %d samples (tol %.0e) -> %s",
             level, dev, len(samples), tol, "PASS" if rec["passed"] else "FAIL")
    return rec


def _ensure_check(wd, fn, tag, *args) -> int:
    p = wd.selfcheck(tag)
    if p.exists() and read_json(p).get("passed"):
        return 0
    rec = fn(wd, *args)
    if not rec["passed"]:
        raise RuntimeError(f"self-check failed for {rec['level']}: {rec['max_abs_dev_eV_per_A']:.3e} "
                           f"eV/A > {rec['tolerance_eV_per_A']:.0e} (see {p})")
    return 1


# --------------------------------------------------------------------------- commands
def run(workdir, settings: dict | None = None, argv=None, retry_failed: bool = False,
        verbose: bool = True) -> dict:
    """Run (or resume) all stages; returns the number of newly computed items per stage."""
    wd = Workdir(workdir)
    wd.root.mkdir(parents=True, exist_ok=True)
    log = setup_logging(wd, verbose)
    with RunLock(wd):
        for stale in wd.root.rglob(".*.tmp"):  # left by an interrupted write
            stale.unlink(missing_ok=True)
        cfg = resolve_config(wd, settings or {}, argv)
        log.info("aimnet2mult.datagen %s run in %s (seed %s, %s DFT, %s xTB conformers)",
                 __version__, wd.root, cfg["seed"], cfg["n_dft"], cfg["n_xtb"])
        t0 = time.perf_counter()
        new = {"plan": 0 if wd.plan.exists() else 1}
        plan = load_or_make_plan(wd, cfg)
        new["conformers"] = stage_conformers(wd, cfg, plan)
        new["gfn2-xtb"] = stage_xtb(wd, cfg, plan, "gfn2-xtb")
        new["gfn1-xtb"] = stage_xtb(wd, cfg, plan, "gfn1-xtb")
        new["selfcheck"] = _ensure_check(wd, selfcheck_xtb, "gfn2", cfg, plan, "gfn2-xtb")
        new["selfcheck"] += _ensure_check(wd, selfcheck_xtb, "gfn1", cfg, plan, "gfn1-xtb")
        if any(m["n_dft"] for m in plan["molecules"]):
            new["selfcheck"] += _ensure_check(wd, selfcheck_dft, "dft", cfg, plan)
        new["dft"] = stage_dft(wd, cfg, plan, retry_failed)
        st = status_dict(wd)
        atomic_write_json(wd.done, {"time": now_iso(), "counts": st["counts"]})
        log.info("run finished in %.1f s; new work: %s", time.perf_counter() - t0, new)
        log.info("next: python -m aimnet2mult.datagen assemble --workdir %s --output OUTDIR", wd.root)
    return new


def check(workdir, levels=None, verbose: bool = True) -> dict:
    """(Re)compute the finite-difference self-checks and store them in the workdir."""
    wd = Workdir(workdir)
    setup_logging(wd, verbose)
    cfg = read_json(wd.config)["settings"]
    plan = read_json(wd.plan)
    levels = levels or ["gfn2-xtb", "gfn1-xtb", "dft"]
    out = {}
    for lev in levels:
        if lev in XTB_TAG:
            out[lev] = selfcheck_xtb(wd, cfg, plan, lev)
        else:
            out[dft_level_name(cfg)] = selfcheck_dft(wd, cfg, plan)
    return out


def status_dict(wd: Workdir) -> dict:
    st: dict = {"workdir": str(wd.root), "running": RunLock.is_held(wd), "done": wd.done.exists()}
    if not wd.config.exists():
        st["state"] = "empty"
        return st
    cfg = read_json(wd.config)["settings"]
    st["settings"] = cfg
    if not wd.plan.exists():
        st["state"] = "planning"
        return st
    plan = read_json(wd.plan)
    mols = plan["molecules"]
    counts = {"molecules": len(mols),
              "conformer_files": sum(wd.conformers(m["key"]).exists() for m in mols)}
    for lev, tag in XTB_TAG.items():
        counts[f"{lev}_molecules"] = sum(wd.xtb_label(tag, m["key"]).exists() for m in mols)
        counts[f"{lev}_conformers_planned"] = sum(m["n_xtb"] for m in mols)
    q = dft_queue(plan)
    walls = []
    n_done = n_fail = 0
    for m, j in q:
        p = wd.dft_label(m["key"], j)
        if p.exists():
            n_done += 1
            try:
                walls.append(float(read_npz(p)["wall_s"]))
            except Exception:  # pragma: no cover
                pass
        elif wd.dft_failed(m["key"], j).exists():
            n_fail += 1
    counts.update({"dft_planned": len(q), "dft_done": n_done, "dft_failed": n_fail})
    st["counts"] = counts
    if walls:
        mean = float(np.mean(walls))
        st["dft_wall_s"] = {"mean": mean, "median": float(np.median(walls)),
                            "max": float(np.max(walls)), "total": float(np.sum(walls))}
        st["dft_eta_s"] = mean * (len(q) - n_done - n_fail)
    st["selfcheck"] = {}
    for tag in ("gfn2", "gfn1", "dft"):
        if wd.selfcheck(tag).exists():
            r = read_json(wd.selfcheck(tag))
            st["selfcheck"][r["level"]] = {"max_abs_dev_eV_per_A": r["max_abs_dev_eV_per_A"],
                                           "tolerance_eV_per_A": r["tolerance_eV_per_A"],
                                           "passed": r["passed"]}
    st["unseen"] = plan["unseen"]
    st["state"] = "done" if wd.done.exists() and n_done + n_fail == len(q) else (
        "running" if st["running"] else "incomplete")
    return st


def status(workdir) -> dict:
    return status_dict(Workdir(workdir))


def print_status(st: dict, file=sys.stdout) -> None:
    print(f"workdir: {st['workdir']}  state: {st.get('state')}  running: {st['running']}", file=file)
    c = st.get("counts")
    if not c:
        return
    print(f"molecules: {c['molecules']} (held out: {', '.join(st['unseen'])})", file=file)
    print(f"conformer files: {c['conformer_files']}/{c['molecules']}", file=file)
    for lev in XTB_LEVELS:
        print(f"{lev}: {c[f'{lev}_molecules']}/{c['molecules']} molecules "
              f"({c[f'{lev}_conformers_planned']} conformers planned)", file=file)
    line = f"dft: {c['dft_done']}/{c['dft_planned']} done, {c['dft_failed']} failed"
    if "dft_wall_s" in st:
        w = st["dft_wall_s"]
        line += (f"; {w['mean']:.1f} s/label mean ({w['median']:.1f} median, {w['max']:.1f} max), "
                 f"ETA {st['dft_eta_s'] / 60:.1f} min")
    print(line, file=file)
    for lev, r in st.get("selfcheck", {}).items():
        print(f"self-check {lev}: max dev {r['max_abs_dev_eV_per_A']:.2e} eV/A "
              f"(tol {r['tolerance_eV_per_A']:.0e}) {'PASS' if r['passed'] else 'FAIL'}", file=file)
