"""Does multi-fidelity training pay off? Single-fidelity (DFT only) against multi-fidelity (DFT + xTB).

    python bench/bench_multifidelity.py --out bench_out/multifidelity
    python bench/bench_multifidelity.py --multi-model default_model.pt   # reuse a trained multi arm
    python bench/bench_multifidelity.py ... --extra "per-fidelity readouts=model.pt"  # more arms

Both arms use the recipe of ``examples/config/bundled_multifidelity.yaml`` (architecture, optimizer,
learning-rate schedule, batch size, batches per epoch, epochs, seed): the multi-fidelity arm trains
on B3LYP/6-31G* + GFN2-xTB + GFN1-xTB, the single-fidelity arm on the B3LYP files only (the same
config with fidelities 1 and 2 removed). Same number of optimizer steps and molecules per batch.

Fidelity-0 errors of both on
* ``b3lyp_test.h5``: held-out conformers of molecules that have DFT training data;
* ``b3lyp_test_unseen.h5``: molecules with NO DFT training data (only xTB data in the multi arm).
Energies are compared without dispersion, as the labels are (D3(BJ) is added only at export).

Prints a table and the ratio multi / single (target on unseen molecules: <= 0.7), writes
``results.json`` and ``multifidelity.png`` to ``--out``.
"""

import argparse
import copy
import json
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "examples" / "config" / "bundled_multifidelity.yaml"
TEST_FILES = ("b3lyp_test.h5", "b3lyp_test_unseen.h5")


def data_dir() -> Path:
    return Path(str(resources.files("aimnet2mult.resources.data")))


def absolute_config(cfg: dict) -> dict:
    """Dataset paths of the example config are relative to the repository root: make them absolute."""
    cfg = copy.deepcopy(cfg)
    for key in ("fidelity_datasets", "val_fidelity_datasets"):
        for k, path in cfg["data"][key].items():
            cfg["data"][key][k] = str(data_dir() / Path(path).name)
    return cfg


def single_fidelity_config(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    for key, value in cfg["data"].items():
        if isinstance(value, dict) and 0 in value and set(value) <= {0, 1, 2}:
            cfg["data"][key] = {0: value[0]}
    cfg["fidelity_names"] = {0: cfg["fidelity_names"][0]}
    cfg["run_name"] = "single_fidelity"
    return cfg


def train(cfg: dict, out: Path, name: str, overrides) -> Path:
    cfg_path = out / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    model = out / f"{name}.pt"
    cmd = [sys.executable, "-m", "aimnet2mult.train.cli", "--config", str(cfg_path), "--save", str(model),
           "--overwrite", "--no-progress"] + list(overrides)
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    print(f"{name}: trained in {time.time() - t0:.0f} s", flush=True)
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_out/multifidelity")
    parser.add_argument("--multi-model", help="reuse this multi-fidelity checkpoint (trained with the same recipe)")
    parser.add_argument("--single-model", help="reuse this single-fidelity checkpoint")
    parser.add_argument("--extra", action="append", default=[], metavar="LABEL=PATH",
                        help="another trained multi-fidelity checkpoint to compare (e.g. a recipe variant)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for BOTH arms (e.g. trainer.epochs=2)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = absolute_config(yaml.safe_load(CONFIG.read_text()))
    models = {}
    models["multi"] = Path(args.multi_model) if args.multi_model else train(base, out, "multi_fidelity",
                                                                             args.overrides)
    models["single"] = Path(args.single_model) if args.single_model else train(
        single_fidelity_config(base), out, "single_fidelity", args.overrides)

    labels = {"single": "single-fidelity (DFT only)", "multi": "multi-fidelity (DFT + xTB)"}
    for item in args.extra:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"--extra {item!r}: expected LABEL=PATH of an existing checkpoint")
        models[label] = Path(path)
        labels[label] = f"multi-fidelity, {label}"

    from aimnet2mult.evaluate import evaluate_files

    results = {}
    for arm, path in models.items():
        rows = evaluate_files([data_dir() / f for f in TEST_FILES], str(path), 0)
        results[arm] = {Path(r["file"]).name: {k: r.get(k)
                                               for k in ("n_molecules", "E_mae", "E_rmse", "F_mae", "F_rmse")}
                        for r in rows}
        results[arm]["model"] = str(path)
    arms = [a for a in models if a != "single"]
    print("\nfidelity-0 (B3LYP/6-31G*) errors; E in kcal/mol, F in kcal/mol/Å; ratio = arm / single-fidelity")
    print(f"{'test set':<24}{'metric':<8}{'single':>10}" + "".join(f"{a[:18]:>20}{'ratio':>8}" for a in arms))
    ratios = {}
    for f in TEST_FILES:
        for m in ("E_mae", "F_mae"):
            s = results["single"][f][m]
            line = f"{f:<24}{m:<8}{s:>10.3f}"
            for a in arms:
                mu = results[a][f][m]
                ratios[f"{a}:{f}:{m}" if a != "multi" else f"{f}:{m}"] = mu / s
                line += f"{mu:>20.3f}{mu / s:>8.3f}"
            print(line)
    target = ratios["b3lyp_test_unseen.h5:E_mae"]
    print(f"\nunseen molecules, energy MAE ratio multi/single = {target:.3f} (target <= 0.7: "
          f"{'met' if target <= 0.7 else 'NOT met'})")
    results["ratios"] = ratios
    results["labels"] = labels
    from aimnet2mult.io_utils import atomic_write_text

    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    plot(results, out / "multifidelity.png")
    print(f"wrote {out / 'results.json'} and {out / 'multifidelity.png'}")
    return 0


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    x = np.arange(len(TEST_FILES))
    labels = ["held-out conformers", "molecules without\nDFT training data"]
    for ax, (metric, unit) in zip(axes, (("E_mae", "kcal/mol"), ("F_mae", "kcal/mol/Å"))):
        arms = ["single"] + [a for a in results["labels"] if a != "single"]
        width = 0.8 / len(arms)
        for i, arm in enumerate(arms):
            vals = [results[arm][f][metric] for f in TEST_FILES]
            ax.bar(x + (i - (len(arms) - 1) / 2) * width, vals, width=width, label=results["labels"][arm])
        ax.set_xticks(x, labels)
        ax.set_ylabel(f"{metric.split('_')[0]} MAE ({unit})")
        ax.set_title(f"fidelity 0 (B3LYP) {metric.split('_')[0]} MAE")
        ax.set_ylim(0, 1.45 * max(results[a][f][metric] for a in arms for f in TEST_FILES))
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
