"""Do cheap labels improve the expensive fidelity? QM9 B3LYP + GFN2-xTB learning curves.

    python -m aimnet2mult.datagen qm9 --workdir qm9_work --output qm9_data --workers 2   # once
    python bench/bench_qm9.py --data qm9_data --out bench_out/qm9 --jobs 2

Fidelity 0: B3LYP/6-31G(2df,p) energies of N_high QM9 molecules (``b3lyp_train_{N}.h5``);
fidelity 1: GFN2-xTB energies, forces and charges of N_low QM9 molecules (``gfn2_train_{M}.h5``,
a superset of the B3LYP set). Metric: fidelity-0 energy MAE (kcal/mol) on the 2,000 held-out test
molecules (``b3lyp_test.h5``) of the final model (no selection by validation loss).

Arms (``--arms``; every arm has the same architecture, optimizer, cosine schedule, batch size and
number of optimizer steps, ``bench/configs/qm9.yaml``):

* ``single``       B3LYP only;
* ``delta``        Delta-learning: a single-fidelity network on B3LYP - GFN2 energies, evaluated as
                   GFN2 + network (needs xTB at inference; the anchor to approach);
* ``multi_perfid`` / ``multi_shared``   B3LYP + GFN2 jointly from the start, per-fidelity readouts /
                   one shared readout (the seed's recipe);
* ``multi_perfid_pt`` / ``multi_shared_pt``   the same with the fidelity schedule: the first
                   ``--pretrain-fraction`` of the steps train GFN2 only, then fidelity 0 starts from
                   fidelity 1's embeddings and readout and both train jointly
                   (``aimnet2mult/train/fidelity_init.py``).

Each run lives in ``OUT/runs/<arm>_h<N>[_l<M>]_s<steps>/`` and is resumable: a finished run
(``result.json``) is skipped, an interrupted one continues from its ``last.pt``. ``--jobs 2`` runs two
trainings at once with one thread each. Writes ``OUT/results.json``, ``OUT/summary.md`` (table with
ratios to the single-fidelity arm) and ``OUT/qm9_learning_curves.png``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO / "bench" / "configs" / "qm9.yaml"

ARMS = {
    "single": {"label": "single-fidelity (B3LYP only)", "multi": False},
    "delta": {"label": "Delta-learning (GFN2 + NN(B3LYP - GFN2))", "multi": False},
    "multi_perfid": {"label": "multi-fidelity, per-fidelity readouts", "multi": True,
                     "overrides": ["use_fidelity_readouts=true"]},
    "multi_shared": {"label": "multi-fidelity, shared readout", "multi": True,
                     "overrides": ["use_fidelity_readouts=false"]},
    "multi_perfid_pt": {"label": "multi-fidelity, per-fidelity readouts, GFN2 pretraining + init",
                        "multi": True, "overrides": ["use_fidelity_readouts=true"], "pretrain": True},
    "multi_shared_pt": {"label": "multi-fidelity, shared readout, GFN2 pretraining + init",
                        "multi": True, "overrides": ["use_fidelity_readouts=false"], "pretrain": True},
}


def run_name(arm: str, n_high: int, n_low: int, steps: int, tag: str = "") -> str:
    low = f"_l{n_low}" if ARMS[arm]["multi"] else ""
    return f"{arm}_h{n_high}{low}_s{steps}{tag}"


def run_spec(args, arm: str, n_high: int, n_low: int) -> dict:
    data = Path(args.data).resolve()
    bpe = args.batches_per_epoch or \
        int(yaml.safe_load(BASE_CONFIG.read_text())["data"]["samplers"]["train"]["kwargs"]["batches_per_epoch"])
    if args.steps % bpe:
        raise SystemExit(f"--steps must be a multiple of batches_per_epoch ({bpe})")
    epochs = args.steps // bpe
    kind = "delta" if arm == "delta" else "b3lyp"
    ov = [f"data.fidelity_datasets.0={data / f'{kind}_train_{n_high}.h5'}",
          f"data.val_fidelity_datasets.0={data / f'{kind}_val.h5'}",
          f"trainer.epochs={epochs}", f"scheduler.kwargs.cycle_size={args.steps}",
          f"seed={args.seed}", f"data.samplers.train.kwargs.batches_per_epoch={bpe}"]
    if ARMS[arm]["multi"]:
        ov += [f"data.fidelity_datasets.1={data / f'gfn2_train_{n_low}.h5'}",
               f"data.val_fidelity_datasets.1={data / 'gfn2_val.h5'}", "fidelity_names.1=gfn2-xtb"]
    ov += ["fidelity_names.0=" + ("delta-b3lyp-minus-gfn2" if arm == "delta" else "b3lyp/6-31g(2df,p)")]
    ov += ARMS[arm].get("overrides", [])
    if ARMS[arm].get("pretrain"):
        pre = max(1, round(args.pretrain_fraction * epochs))
        ov += [f"fidelity_schedule.pretrain_epochs={pre}", "fidelity_schedule.init_from.0=1"]
    ov += list(args.overrides)
    name = run_name(arm, n_high, n_low, args.steps, args.tag)
    return {"arm": arm, "n_high": n_high, "n_low": n_low if ARMS[arm]["multi"] else 0, "steps": args.steps,
            "name": name, "dir": str(Path(args.out).resolve() / "runs" / name), "overrides": ov,
            "test": str(data / f"{kind}_test.h5"), "threads": args.threads, "tag": args.tag,
            "test_low": str(data / "gfn2_test.h5") if ARMS[arm]["multi"] else None,
            "model_yaml": str(Path(args.model).resolve()) if args.model else None}


def run_one(spec: dict) -> dict:
    """Train (or resume) one arm and evaluate fidelity 0 on the test set; writes result.json."""
    import torch

    torch.set_num_threads(int(spec["threads"]))
    from aimnet2mult.evaluate import evaluate_files
    from aimnet2mult.io_utils import atomic_write_text
    from aimnet2mult.train.cli import main as train_main

    run_dir = Path(spec["dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    model = run_dir / "model.pt"
    t0 = time.time()
    if not model.exists():
        argv = ["--config", str(BASE_CONFIG), "--save", str(model), "--no-progress"]
        if spec.get("model_yaml"):
            argv += ["--model", spec["model_yaml"]]
        last = run_dir / "model_run" / "last.pt"
        # continue an interrupted run, or replace the remains of one that never finished an epoch
        argv += ["--resume", str(last)] if last.exists() else ["--overwrite"]
        rc = train_main(argv + spec["overrides"])
        if rc:
            raise SystemExit(f"{spec['name']}: training failed with exit code {rc}")
    train_s = time.time() - t0
    row = evaluate_files([spec["test"]], str(model), 0)[0]
    history = json.loads((run_dir / "model_run" / "history.json").read_text())
    result = {k: spec[k] for k in ("arm", "n_high", "n_low", "steps", "name")}
    result["tag"] = spec.get("tag", "")
    if spec.get("test_low") and Path(spec["test_low"]).exists():
        # how well the cheap level itself was learned: what the expensive one can transfer from
        low = evaluate_files([spec["test_low"]], str(model), 1)[0]
        result.update({"E_mae_fid1": low["E_mae"], "F_mae_fid1": low.get("F_mae")})
    result.update({"E_mae": row["E_mae"], "E_rmse": row["E_rmse"], "n_test": row["n_molecules"],
                   "test_file": spec["test"], "train_seconds_this_call": train_s,
                   "overrides": spec["overrides"], "final_lr": history[-1].get("lr") if history else None,
                   "threads": spec["threads"]})
    atomic_write_text(run_dir / "result.json", json.dumps(result, indent=1))
    return result


def launch(specs: list, jobs: int, out: Path) -> None:
    """Run the specs not yet finished, ``jobs`` at a time (each a child process)."""
    todo = [s for s in specs if not (Path(s["dir"]) / "result.json").exists()]
    running = []
    env = dict(os.environ)
    while todo or running:
        while todo and len(running) < jobs:
            spec = todo.pop(0)
            Path(spec["dir"]).mkdir(parents=True, exist_ok=True)
            spec_path = Path(spec["dir"]) / "spec.json"
            spec_path.write_text(json.dumps(spec, indent=1))
            env["OMP_NUM_THREADS"] = str(spec["threads"])
            log = open(Path(spec["dir"]) / "bench.log", "a")
            p = subprocess.Popen([sys.executable, __file__, "--run-one", str(spec_path)], stdout=log,
                                 stderr=subprocess.STDOUT, env=env)
            running.append((p, spec, log, time.time()))
            print(f"started {spec['name']} (pid {p.pid})", flush=True)
        time.sleep(5)
        for item in list(running):
            p, spec, log, t0 = item
            if p.poll() is None:
                continue
            running.remove(item)
            log.close()
            status = "done" if p.returncode == 0 else f"FAILED (exit {p.returncode}; see {spec['dir']}/bench.log)"
            print(f"{spec['name']}: {status} after {time.time() - t0:.0f} s", flush=True)


def collect(specs: list) -> list:
    rows = []
    for s in specs:
        path = Path(s["dir"]) / "result.json"
        if path.exists():
            rows.append(json.loads(path.read_text()))
    return rows


def summary(rows: list, arms: list) -> str:
    single = {(r["n_high"], r["steps"]): r["E_mae"] for r in rows if r["arm"] == "single" and not r.get("tag")}
    delta = {(r["n_high"], r["steps"]): r["E_mae"] for r in rows if r["arm"] == "delta" and not r.get("tag")}
    lines = ["| N_high | N_low | steps | arm | recipe | E MAE (kcal/mol) | / single | / Delta | GFN2 MAE (fid 1) |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = {a: i for i, a in enumerate(arms)}
    for r in sorted(rows, key=lambda r: (r["steps"], r["n_high"], r["n_low"], order.get(r["arm"], 99))):
        s, d = single.get((r["n_high"], r["steps"])), delta.get((r["n_high"], r["steps"]))
        head = (f"| {r['n_high']} | {r['n_low'] or '-'} | {r['steps']} | {ARMS[r['arm']]['label']} | "
                f"{r.get('tag') or '-'} | {r['E_mae']:.3f} |")
        head += f" {r['E_mae'] / s:.3f} |" if s else " - |"
        head += f" {r['E_mae'] / d:.3f} |" if d else " - |"
        head += f" {r['E_mae_fid1']:.3f} |" if r.get("E_mae_fid1") is not None else " - |"
        lines.append(head)
    return "\n".join(lines) + "\n"


def plot(rows: list, path: Path, steps: int, n_low: int, tag: str = "") -> None:
    """Learning curves at ``steps`` and ``n_low``: the single-fidelity and Delta arms untagged, the
    multi-fidelity arms of recipe ``tag``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for arm, meta in ARMS.items():
        want = "" if not meta["multi"] else tag
        pts = sorted((r["n_high"], r["E_mae"]) for r in rows
                     if r["arm"] == arm and r["steps"] == steps and r["n_low"] in (0, n_low)
                     and (r.get("tag") or "") == want)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=meta["label"], ls="--" if arm in ("single", "delta") else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("B3LYP training molecules N_high")
    ax.set_ylabel("fidelity-0 energy MAE on 2,000 test molecules (kcal/mol)")
    ax.set_title(f"QM9: B3LYP + {n_low} GFN2-xTB molecules, {steps} steps of 32"
                 + (f" (recipe {tag})" if tag else ""), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-one", help=argparse.SUPPRESS)
    ap.add_argument("--data", help="output folder of `aimnet2mult datagen qm9`")
    ap.add_argument("--out", default="bench_out/qm9")
    ap.add_argument("--arms", default="single,delta,multi_perfid,multi_shared,multi_perfid_pt,multi_shared_pt")
    ap.add_argument("--high", default="250,1000,4000", help="N_high values (B3LYP training molecules)")
    ap.add_argument("--low", default="20000", help="N_low values (GFN2-xTB training molecules)")
    ap.add_argument("--steps", type=int, default=3000, help="optimizer steps of every arm (batch 32)")
    ap.add_argument("--pretrain-fraction", type=float, default=0.5,
                    help="fraction of the steps the *_pt arms train GFN2 only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="trainings at once")
    ap.add_argument("--threads", type=int, default=0, help="threads per training (default: 2 / jobs, >= 1)")
    ap.add_argument("--batches-per-epoch", type=int, default=0, help="default: the base config's (250)")
    ap.add_argument("--model", help="architecture YAML (default: the packaged AIMNet2 architecture)")
    ap.add_argument("--tag", default="", help="suffix of the run names (variants of the recipe)")
    ap.add_argument("--report-only", action="store_true", help="only collect finished runs")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every arm")
    args = ap.parse_args()
    if args.run_one:
        run_one(json.loads(Path(args.run_one).read_text()))
        return 0
    if not args.data:
        ap.error("--data is required")
    args.threads = args.threads or max(1, (os.cpu_count() or 2) // args.jobs)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; have {list(ARMS)}")
    specs, seen = [], set()
    for n_high in [int(x) for x in args.high.split(",")]:
        for n_low in [int(x) for x in args.low.split(",")]:
            for arm in arms:
                spec = run_spec(args, arm, n_high, n_low)
                if spec["name"] not in seen:
                    seen.add(spec["name"])
                    specs.append(spec)
    if not args.report_only:
        launch(specs, args.jobs, out)
    rows = collect(specs)
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else []
    merged = {r["name"]: r for r in previous}
    merged.update({r["name"]: r for r in rows})
    all_rows = list(merged.values())
    from aimnet2mult.io_utils import atomic_write_text

    atomic_write_text(out / "results.json", json.dumps(all_rows, indent=1))
    table = summary(all_rows, list(ARMS))
    atomic_write_text(out / "summary.md", table)
    print(table)
    n_low0 = int(args.low.split(",")[0])
    plot(all_rows, out / "qm9_learning_curves.png", args.steps, n_low0, args.tag)
    print(f"wrote {out / 'results.json'}, {out / 'summary.md'}, {out / 'qm9_learning_curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
