"""Training throughput: molecules per second and the fraction of step time spent waiting for data.

    python bench/bench_train.py [--data FILE.h5 ...] [--iterations 60] [--batch-size 32]

Without --data it writes a synthetic dataset (small organics, 20k molecules). The default AIMNet2
architecture is trained for a fixed number of iterations with lazy HDF5 reading in 0 and 2 worker
processes and with the data in memory; it prints molecules/s for each and the data-wait fraction
(target < 10 %), and the ratio of each loader setup against the in-memory peer.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def measure(files, in_memory, workers, iterations, batch_size):
    from aimnet2mult.data.loaders import build_loaders
    from aimnet2mult.model_config import model_config
    from aimnet2mult.nn.model import MultiFidelityAIMNet2
    from aimnet2mult.train.config import default_train_config, normalize
    from aimnet2mult.train.engine import TrainStep, build_optimizer
    from aimnet2mult.train.loss import MaskedMultiTaskLoss

    cfg = default_train_config()
    cfg["data"]["fidelity_datasets"] = {k: str(f) for k, f in enumerate(files)}
    cfg["data"]["in_memory"] = in_memory
    cfg["data"]["val_fraction"] = 0.0
    cfg["data"]["samplers"]["train"]["kwargs"]["batch_size"] = batch_size
    cfg["data"]["loaders"]["train"]["num_workers"] = workers
    cfg = normalize(cfg)
    train_loader, _, _ = build_loaders(cfg["data"], 0, 200)
    model = MultiFidelityAIMNet2(model_config(None, num_fidelities=len(files)))
    opt = build_optimizer(model, cfg["optimizer"])
    step = TrainStep(model, opt, MaskedMultiTaskLoss(cfg["loss"]["kwargs"]["components"]), torch.device("cpu"), 0.4)

    class E:  # minimal stand-in for the ignite engine state used by TrainStep
        class state:
            iteration = 0

    wait = compute = 0.0
    n_mol = 0
    it = iter(train_loader)
    for i in range(iterations):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(train_loader)
            batch = next(it)
        t1 = time.perf_counter()
        step(E, batch)
        t2 = time.perf_counter()
        if i >= 3:  # warm-up
            wait += t1 - t0
            compute += t2 - t1
            n_mol += int(batch["energy"].shape[0])
    return n_mol / (wait + compute), wait / (wait + compute)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="*")
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.data:
        files = [Path(f) for f in args.data]
    else:
        import synthetic

        tmp = Path(tempfile.mkdtemp())
        files = [synthetic.write_h5(tmp / "bench.h5", synthetic.make_samples(20000, seed=0))]
    rows = []
    for label, in_memory, workers in (("in memory, 0 workers", True, 0), ("lazy HDF5, 0 workers", False, 0),
                                      ("lazy HDF5, 2 workers", False, 2)):
        rate, frac = measure(files, in_memory, workers, args.iterations, args.batch_size)
        rows.append((label, rate, frac))
    peer = rows[0][1]
    print(f"{'loader':<24}{'molecules/s':>14}{'data wait':>12}{'vs in-memory':>15}")
    for label, rate, frac in rows:
        print(f"{label:<24}{rate:>14.1f}{100 * frac:>11.1f}%{rate / peer:>14.2f}x")


if __name__ == "__main__":
    main()
