"""The main job on the bundled data: SAE -> training -> compile -> MD -> summary.

Run with ``make demo`` (or ``python examples/demo.py --out demo_out``); ``--quick`` runs a reduced
version (the test suite uses it). Every step is one of the package's own commands, printed before
it runs, so the demo doubles as a recipe:

1. ``aimnet2mult sae``: self-atomic energies of each fidelity's training file;
2. ``aimnet2mult-train``: a short multi-fidelity training (B3LYP/6-31G*, GFN2-xTB, GFN1-xTB) with
   ``examples/config/bundled_multifidelity.yaml`` and those SAE files;
3. ``aimnet2mult compile``: every fidelity as a TorchScript potential (fidelity 0 with D3(BJ) for
   B3LYP baked in, the xTB fidelities without: their labels contain dispersion already);
4. ``aimnet2mult evaluate``: errors of every fidelity on its held-out data (and of the bundled
   default model, when the package ships one);
5. ``aimnet2mult md``: Langevin MD of a molecule that has no DFT training data, with ASE and with
   OpenMM (``TorchForce``), using the new fidelity-0 potential;
6. a summary table (``summary.md``, ``summary.json``) next to the learning curves, parity plots
   and MD energy plots.
"""

import argparse
import json
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "examples" / "config" / "bundled_multifidelity.yaml"
FIDELITIES = {0: ("b3lyp", "b3lyp/6-31g*"), 1: ("gfn2", "gfn2-xtb"), 2: ("gfn1", "gfn1-xtb")}


def data_dir() -> Path:
    return Path(str(resources.files("aimnet2mult.resources.data")))


def step(title: str, cmd) -> None:
    print(f"\n=== {title}\n$ {' '.join(str(c) for c in cmd)}", flush=True)
    t0 = time.time()
    subprocess.run([str(c) for c in cmd], check=True)
    print(f"--- {title}: {time.time() - t0:.1f} s", flush=True)


def md_molecule(out: Path) -> Path:
    """First conformer of the largest molecule of the held-out set (no DFT training data)."""
    from ase import Atoms
    from ase.io import write

    from aimnet2mult.data.h5dataset import SizeGroupedDataset

    ds = SizeGroupedDataset(data_dir() / "b3lyp_test_unseen.h5", in_memory=True)
    s = ds[int(max(range(len(ds.n_atoms)), key=lambda i: (int(ds.n_atoms[i]), -i)))]
    ds.close()
    atoms = Atoms(numbers=s["numbers"], positions=s["coord"].astype(float))
    atoms.info["charge"] = int(round(float(s["charge"])))
    path = out / "md_molecule.xyz"
    write(str(path), atoms)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    parser.add_argument("--quick", action="store_true", help="reduced run (tests): tiny training, few MD steps")
    parser.add_argument("--epochs", type=int, help="training epochs (default 6; --quick: 1)")
    parser.add_argument("--batches", type=int, help="batches per epoch (default 100; --quick: 8)")
    parser.add_argument("--md-steps", type=int, help="MD steps per engine (default 400; --quick: 10)")
    args = parser.parse_args()
    epochs = args.epochs or (1 if args.quick else 6)
    batches = args.batches or (8 if args.quick else 100)
    md_steps = args.md_steps or (10 if args.quick else 400)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    cli = [py, "-m", "aimnet2mult"]
    data = data_dir()
    t_start = time.time()

    # 1. SAE of every fidelity
    overrides = []
    for k, (stem, _) in FIDELITIES.items():
        sae = out / f"sae_fid{k}.yaml"
        step(f"SAE of fidelity {k}", cli + ["sae", data / f"{stem}_train.h5", sae])
        overrides += [f"data.fidelity_datasets.{k}={data / f'{stem}_train.h5'}",
                      f"data.val_fidelity_datasets.{k}={data / f'{stem}_val.h5'}",
                      f"data.sae.energy.files.{k}={sae}"]

    # 2. training
    model = out / "model.pt"
    step("multi-fidelity training", [py, "-m", "aimnet2mult.train.cli", "--config", CONFIG, "--save", model,
                                     "--overwrite",
                                     f"trainer.epochs={epochs}",
                                     f"data.samplers.train.kwargs.batches_per_epoch={batches}",
                                     f"scheduler.kwargs.cycle_size={max(epochs * batches, 2)}"] + overrides)
    run_dir = out / "model_run"

    # 3. compile every fidelity with its recorded dispersion
    for k in FIDELITIES:
        step(f"compile fidelity {k}", cli + ["compile", "--weights", model, "--output", out / "model",
                                             "--fidelity-level", str(k)])

    # 4. errors on held-out data
    eval_sets = {0: ["b3lyp_test.h5", "b3lyp_test_unseen.h5"], 1: ["gfn2_val.h5"], 2: ["gfn1_val.h5"]}
    results = []
    for k, files in eval_sets.items():
        js = out / f"eval_fid{k}.json"
        step(f"evaluate fidelity {k}", cli + ["evaluate", *[data / f for f in files], "--model",
                                              out / f"model_fid{k}.jpt", "--json", js])
        results += [dict(r, model="demo") for r in json.loads(js.read_text())]
    from aimnet2mult.calculators.runtime import default_model_path

    try:
        default = default_model_path()
    except ValueError:  # no bundled default model in this checkout
        default = None
    if default is not None and not args.quick:
        js = out / "eval_default_fid0.json"
        step("evaluate the bundled default model (fidelity 0)",
             cli + ["evaluate", data / "b3lyp_test.h5", data / "b3lyp_test_unseen.h5", "--model", default,
                    "--fidelity", "0", "--json", js])
        results += [dict(r, model="bundled default") for r in json.loads(js.read_text())]

    # 5. MD with the new fidelity-0 potential
    mol = md_molecule(out)
    md_rows = {}
    for engine in ("ase", "openmm"):
        prefix = out / f"md_{engine}"
        step(f"{engine} MD", cli + ["md", mol, "--model", out / "model_fid0.jpt", "--engine", engine,
                                    "--steps", str(md_steps), "--timestep", "0.5", "--temperature", "300",
                                    "--friction", "10",
                                    "--output", prefix, "--no-progress"])
        md_rows[engine] = prefix.with_name(prefix.name + "_energy.csv")

    # 6. summary
    lines = ["# aimnet2mult demo summary", "",
             f"Training: {epochs} epochs x {batches} batches on the bundled data ({out / 'model.pt'}).", "",
             "| model | data | fidelity | molecules | E MAE (kcal/mol) | E RMSE (kcal/mol) | F MAE (kcal/mol/Å) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        f_mae = f"{r['F_mae']:.2f}" if "F_mae" in r else "-"
        lines.append(f"| {r['model']} | {Path(r['file']).name} | {r['fidelity']} '{r['fidelity_name']}' | "
                     f"{r['n_molecules']} | {r['E_mae']:.2f} | {r['E_rmse']:.2f} | {f_mae} |")
    lines += ["", "| MD engine | steps | mean T (K) | E_pot range (eV) |", "|---|---|---|---|"]
    import csv

    for engine, path in md_rows.items():
        rows = list(csv.DictReader(path.open()))
        temps = [float(r["temperature_K"]) for r in rows]
        epot = [float(r["epot_eV"]) for r in rows]
        lines.append(f"| {engine} | {md_steps} | {sum(temps) / len(temps):.0f} | {max(epot) - min(epot):.3f} |")
    plots = sorted(p.name for p in run_dir.glob("*.png")) + sorted(p.name for p in out.glob("md_*.png"))
    lines += ["", "Plots: " + ", ".join(plots), f"Total time: {time.time() - t_start:.0f} s"]
    text = "\n".join(lines) + "\n"
    from aimnet2mult.io_utils import atomic_write_text

    atomic_write_text(out / "summary.md", text)
    atomic_write_text(out / "summary.json",
                      json.dumps({"evaluation": results, "md": {k: str(v) for k, v in md_rows.items()}},
                                 indent=1))
    print("\n" + text)
    print(f"learning curves and parity plots: {run_dir}; MD energy plots: {out}/md_*_energy.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
