"""Command line: ``python -m aimnet2mult.datagen {run,status,check,assemble} ...``."""

from __future__ import annotations

import argparse
import json
import sys

from .pipeline import DEFAULTS

_HELP = {
    "n_dft": "DFT-labelled conformers in total, incl. the held-out molecules",
    "n_xtb": "xTB-labelled conformers in total (GFN2 and GFN1 on the same geometries)",
    "seed": "seed for molecule hold-out, MD and splits",
    "molecules": "comma-separated G2 names / ion names (default: built-in catalogue)",
    "n_unseen": "neutral molecules held out from DFT train/val (-> b3lyp_test_unseen)",
    "n_dft_unseen_per_mol": "DFT conformers per held-out molecule",
    "dft_basis": "DFT basis set (tests use a minimal one)",
    "md_temps": "comma-separated MD temperatures in K",
}


def _list_str(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _list_int(s: str) -> list[int]:
    return [int(x) for x in _list_str(s)]


def _list_float(s: str) -> list[float]:
    return [float(x) for x in _list_str(s)]


def _add_settings(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("settings (fixed at the first run of a workdir; default in brackets)")
    for k, v in DEFAULTS.items():
        if k == "molecules":
            typ = _list_str
        elif k == "md_temps":
            typ = _list_float
        elif isinstance(v, bool):  # pragma: no cover - none yet
            typ = lambda s: s.lower() in ("1", "true", "yes")  # noqa: E731
        elif isinstance(v, int):
            typ = int
        elif isinstance(v, float):
            typ = float
        else:
            typ = str
        g.add_argument("--" + k.replace("_", "-"), dest=k, type=typ, default=None,
                       help=f"{_HELP.get(k, '')} [{v}]".strip())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m aimnet2mult.datagen",
                                 description="Generate B3LYP / GFN2-xTB / GFN1-xTB labels for "
                                             "aimnet2mult (resumable).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run or resume all stages (xTB first, DFT last)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--retry-failed", action="store_true", help="retry DFT labels that failed")
    p.add_argument("--quiet", action="store_true", help="log to WORKDIR/run.log only")
    _add_settings(p)
    p = sub.add_parser("status", help="show progress of a workdir")
    p.add_argument("--workdir", required=True)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("check", help="(re)compute finite-difference force checks")
    p.add_argument("--workdir", required=True)
    p.add_argument("--levels", type=_list_str, default=None,
                   help="comma-separated subset of gfn2-xtb,gfn1-xtb,dft")
    p = sub.add_parser("assemble", help="write HDF5 files, manifest.json and DATA_CARD.md")
    p.add_argument("--workdir", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--allow-partial", action="store_true",
                   help="assemble whatever is finished (e.g. while DFT is still running)")
    _add_qm9(sub)
    return ap


def _add_qm9(sub) -> None:
    from .qm9 import DEFAULTS as QM9

    p = sub.add_parser("qm9", help="QM9 B3LYP energies + GFN2-xTB labels at the same geometries "
                                   "(resumable; needs qm9pack and tblite)")
    p.add_argument("--workdir", required=True, help="cache of parsed molecules and xTB labels")
    p.add_argument("--output", required=True, help="folder for the HDF5 files and manifest.json")
    p.add_argument("--seed", type=int, default=None, help=f"split seed [{QM9['seed']}]")
    p.add_argument("--n-test", type=int, default=None, help=f"held-out test molecules [{QM9['n_test']}]")
    p.add_argument("--n-val", type=int, default=None, help=f"validation molecules [{QM9['n_val']}]")
    p.add_argument("--high", type=_list_int, default=None,
                   help=f"sizes of the B3LYP training sets [{','.join(map(str, QM9['high']))}]")
    p.add_argument("--low", type=_list_int, default=None,
                   help=f"sizes of the GFN2-xTB training sets [{','.join(map(str, QM9['low']))}]")
    p.add_argument("--csv", type=_list_str, default=None,
                   help="comma-separated QM9 CSV files in qm9pack's format (default: qm9pack's own)")
    p.add_argument("--workers", type=int, default=1, help="xTB worker processes (one thread each) [1]")
    p.add_argument("--quiet", action="store_true", help="log to WORKDIR/run.log only")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args, argv)
    except (ValueError, RuntimeError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args, argv) -> int:
    if args.cmd == "run":
        from .pipeline import run

        settings = {k: getattr(args, k) for k in DEFAULTS}
        new = run(args.workdir, settings, argv=["python", "-m", "aimnet2mult.datagen"] + argv,
                  retry_failed=args.retry_failed, verbose=not args.quiet)
        print(json.dumps({"new_work": new}))
        return 0
    if args.cmd == "status":
        from .pipeline import print_status, status

        st = status(args.workdir)
        if args.json:
            print(json.dumps(st, indent=1))
        else:
            print_status(st)
        return 0
    if args.cmd == "check":
        from .pipeline import check

        res = check(args.workdir, args.levels)
        ok = all(r["passed"] for r in res.values())
        for lev, r in res.items():
            print(f"{lev}: max |F - F_fd| = {r['max_abs_dev_eV_per_A']:.2e} eV/A "
                  f"(tol {r['tolerance_eV_per_A']:.0e}) {'PASS' if r['passed'] else 'FAIL'}")
        return 0 if ok else 1
    if args.cmd == "qm9":
        from .qm9 import main_args

        return main_args(args)
    if args.cmd == "assemble":
        from .assemble import assemble
        from .store import setup_logging

        setup_logging(None)
        man = assemble(args.workdir, args.output, allow_partial=args.allow_partial)
        for f, v in man["files"].items():
            print(f"{f}: {v['n_conformers']} conformers, {v['n_molecules']} molecules")
        return 0
    return 2  # pragma: no cover
