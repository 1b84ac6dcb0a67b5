"""Train a multi-fidelity AIMNet2 model (``aimnet2mult-train``, ``aimnet2mult train``,
``python -m aimnet2mult.train.cli``).

    aimnet2mult-train --config train.yaml --model model.yaml --save model.pt \\
        data.fidelity_datasets.0="fid0.h5" data.fidelity_datasets.1="fid1.h5" \\
        data.sae.energy.files.0="sae_fid0.yaml" data.sae.energy.files.1="sae_fid1.yaml"

Configuration: packaged defaults -> each --config (in order) -> key=value overrides. Relative
paths resolve against the current directory. --load starts from another checkpoint's weights
(transfer learning: more or fewer fidelities/elements; an official AIMNet2 .jpt loads as fidelity 0);
--resume continues a run exactly (model, optimizer, scheduler, epoch, RNG).
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from ..checkpoint import CheckpointError
from ..model_config import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[], help="training YAML (repeatable; later wins)")
    p.add_argument("--model", help="model architecture YAML (default: packaged AIMNet2 architecture)")
    p.add_argument("--save", required=True, help="final checkpoint path (.pt)")
    p.add_argument("--load", help="initialise weights from this checkpoint (or official AIMNet2 .jpt)")
    p.add_argument("--resume", help="resume a run exactly from a checkpoint with training state")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous run into the same --save (its model, last.pt, best_*.pt, logs)")
    p.add_argument("overrides", nargs="*", help="key=value configuration overrides (dotted keys)")


def training_outputs(save: str) -> List[str]:
    """Files next to ``--save`` that a run writes: the model and its configuration."""
    stem = Path(save)
    return [save, str(stem.with_name(f"{stem.stem}_config.yaml"))]


def training_inputs(args, cfg) -> List[str]:
    """Every file a run reads: configs, architecture, --load/--resume, data and SAE files."""
    data = cfg.get("data") or {}
    files = list(args.config) + [args.model, args.load, args.resume]
    for key in ("fidelity_datasets", "val_fidelity_datasets"):
        files += [str(v) for v in (data.get(key) or {}).values() if v]
    files += [str(v) for v in (((data.get("sae") or {}).get("energy") or {}).get("files") or {}).values() if v]
    return [f for f in files if f]


def run(args) -> int:
    from ..data.h5dataset import DataError
    from ..io_utils import refuse_to_overwrite_inputs
    from .config import load_train_config
    from .runner import run_training

    try:
        cfg = load_train_config(args.config, args.overrides)
        refuse_to_overwrite_inputs(training_outputs(args.save), training_inputs(args, cfg), "train --save")
        path = run_training(cfg, args.save, model_yaml=args.model, load=args.load, resume=args.resume,
                            progress=not args.no_progress, overwrite=args.overwrite)
    except (ConfigError, CheckpointError, DataError, OSError, FloatingPointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("interrupted: the last checkpoint was saved in the run directory", file=sys.stderr)
        return 128 + int(getattr(exc, "signum", 2))  # 130 for SIGINT, 143 for SIGTERM
    print(f"saved {path}")
    return 0


def parse(parser: argparse.ArgumentParser, argv: Optional[List[str]]):
    """Parse, allowing key=value overrides anywhere on the line (also between options)."""
    args, unknown = parser.parse_known_args(argv)
    stray = [u for u in unknown if "=" not in u or u.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + [u for u in unknown if u not in stray]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="aimnet2mult-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parse(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
