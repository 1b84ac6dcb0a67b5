"""Fit self-atomic energies (SAE) of one dataset and write them as YAML.

    python -m aimnet2mult.train.calc_sae DATA.h5 OUT.yaml [--seed N]

The fit is least squares of the energies on the composition matrix with outlier trimming
(residuals outside the 2nd..98th percentile dropped, then refitted; no element is ever dropped);
see :mod:`aimnet2mult.data.sae`. The output has one ``Z: energy`` line per element (eV) and is
written atomically. Exit status 2 with a one-line ``error: ...`` on bad input.
"""

import argparse
import logging
import sys
from typing import List, Optional

from ..elements import symbol


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m aimnet2mult.train.calc_sae",
                                description="Fit per-element self-atomic energies (eV) of an HDF5 dataset "
                                            "and write them as YAML (Z: energy).")
    p.add_argument("data", help="HDF5 dataset (size-grouped format)")
    p.add_argument("output", help="output SAE YAML file")
    p.add_argument("--seed", type=int, default=0, help="random seed (only used with --max-samples)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="fit on a random subset of this many molecules (very large datasets)")
    p.add_argument("--no-trim", action="store_true", help="no outlier trimming (plain least squares)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from ..data.h5dataset import DataError, SizeGroupedDataset
    from ..data.sae import fit_sae_details, write_sae
    from ..model_config import ConfigError

    logger = logging.getLogger("aimnet2mult.data")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        if args.max_samples is not None and args.max_samples < 1:
            raise ConfigError(f"--max-samples must be positive, got {args.max_samples}")
        from ..io_utils import refuse_to_overwrite_inputs

        refuse_to_overwrite_inputs([args.output], [args.data], "sae")
        ds = SizeGroupedDataset(args.data, in_memory=False)
        fit = fit_sae_details(ds, seed=args.seed, trim=None if args.no_trim else (0.02, 0.98),
                              max_samples=args.max_samples)
        write_sae(fit.sae, args.output)
    except (DataError, ConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    print(f"SAE of {args.data}: {fit.n_molecules} molecules, {fit.n_used} used after outlier trimming, "
          f"residual RMSE {fit.rmse:.4f} eV")
    print(f"{'Z':>4}  {'element':<7}  {'SAE / eV':>16}")
    for z, v in fit.sae.items():
        print(f"{z:>4}  {symbol(z):<7}  {v:>16.6f}")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
