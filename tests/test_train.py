"""Training: the original Quick Start verbatim, learning, masking, resume, transfer, DDP, bad input."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import synthetic
import torch
import yaml

from aimnet2mult.checkpoint import build_model, load_checkpoint
from aimnet2mult.train.loss import MaskedMultiTaskLoss

SMALL_MODEL = {"passes": [[32, 32], [32, 32], [32, 32]], "aim_size": 32, "energy_head": [16]}


def small_train_yaml(path, epochs=2, **extra):
    cfg = {
        "seed": 7,
        "device": "cpu",
        "trainer": {"epochs": epochs},
        "optimizer": {"kwargs": {"lr": 2.0e-3}},
        "data": {"samplers": {"train": {"kwargs": {"batch_size": 16}}}},
        "log_frequency": {"train": 0},
    }
    for key, value in extra.items():
        cfg[key] = value
    Path(path).write_text(yaml.safe_dump(cfg))
    return path


def run(args, cwd, timeout=600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def three_datasets(tmp_path_factory):
    d = tmp_path_factory.mktemp("qs")
    synthetic.write_h5(d / "fid0_dataset.h5", synthetic.make_samples(100, seed=0))
    synthetic.write_h5(d / "fid1_dataset.h5", synthetic.make_samples(100, seed=1, scale=1.3), labels=())
    synthetic.write_h5(d / "fid2_dataset.h5", synthetic.make_samples(100, seed=2, scale=0.7), labels=("charges",))
    (d / "model.yaml").write_text(yaml.safe_dump(SMALL_MODEL))
    small_train_yaml(d / "train.yaml")
    return d


def test_original_quick_start_verbatim(three_datasets):
    d = three_datasets
    for k in range(3):
        res = run(["-m", "aimnet2mult.train.calc_sae", f"fid{k}_dataset.h5", f"sae_fid{k}.yaml"], d)
        assert res.returncode == 0, res.stderr
    res = run(["-m", "aimnet2mult.train.cli", "--config", "train.yaml", "--model", "model.yaml", "--save", "model.pt",
               'data.fidelity_datasets.0=fid0_dataset.h5', 'data.fidelity_datasets.1=fid1_dataset.h5',
               'data.fidelity_datasets.2=fid2_dataset.h5', 'data.sae.energy.files.0=sae_fid0.yaml',
               'data.sae.energy.files.1=sae_fid1.yaml', 'data.sae.energy.files.2=sae_fid2.yaml', "--no-progress"], d)
    assert res.returncode == 0, res.stderr
    ckpt = load_checkpoint(d / "model.pt")
    assert ckpt["model_config"]["num_fidelities"] == 3 and ckpt["train_config"]["data"]["fidelity_datasets"]
    assert (d / "model_config.yaml").is_file()
    run_dir = d / "model_run"
    for name in ("train.log", "last.pt", "history.json", "learning_curves.png", "parity_fid0.png", "parity_fid2.png"):
        assert (run_dir / name).is_file(), name
    res = run(["-m", "aimnet2mult.tools.compile_jit", "--weights", "model.pt", "--model", "model.yaml",
               "--output", "compiled_model", "--fidelity-level", "0", "--fidelity-offset", "200",
               "--num-fidelities", "3", "--use-fidelity-readouts", "true", "--sae", "sae_fid0.yaml",
               "--dispersion", "d3bj", "--dispersion-functional", "wb97m"], d)
    assert res.returncode == 0, res.stderr
    assert (d / "compiled_model_fid0.jpt").is_file()
    # Continue Training from Checkpoint
    res = run(["-m", "aimnet2mult.train.cli", "--config", "train.yaml", "--model", "model.yaml",
               "--load", "model.pt", "--save", "continued_model.pt",
               'data.fidelity_datasets.0=fid0_dataset.h5', 'data.fidelity_datasets.1=fid1_dataset.h5',
               'data.fidelity_datasets.2=fid2_dataset.h5', 'data.sae.energy.files.0=sae_fid0.yaml',
               'data.sae.energy.files.1=sae_fid1.yaml', 'data.sae.energy.files.2=sae_fid2.yaml', "--no-progress"], d)
    assert res.returncode == 0, res.stderr
    assert "copied from source fidelity 2" in (d / "continued_model_run" / "train.log").read_text()


def _train_api(tmp_path, files, epochs, save="m.pt", extra=None, load=None, resume=None, model=SMALL_MODEL):
    from aimnet2mult.train.config import load_train_config
    from aimnet2mult.train.runner import run_training

    overrides = [f"data.fidelity_datasets.{k}={v}" for k, v in files.items()] + list(extra or [])
    cfg_file = small_train_yaml(tmp_path / "train.yaml", epochs=epochs)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(model))
    cfg = load_train_config([str(cfg_file)], overrides)
    return run_training(cfg, str(tmp_path / save), model_yaml=str(tmp_path / "model.yaml"), load=load,
                        resume=resume, progress=False)


def test_learns_and_fits_a_tiny_set(tmp_path):
    samples = synthetic.make_samples(12, seed=3, bases=["H2O", "NH3", "CH4"], noise=0.05)
    f = synthetic.write_h5(tmp_path / "tiny.h5", samples)
    path = _train_api(tmp_path, {0: f}, epochs=60, extra=[
        "data.val_fraction=0.0", "data.samplers.train.kwargs.batch_size=12", "optimizer.kwargs.lr=1e-2",
        "loss.kwargs.components.forces.weight=0.05", "scheduler.kwargs.patience=1000"])
    ckpt = load_checkpoint(path)
    hist = ckpt["training_state"]["history"]
    assert hist[-1]["train_loss"] < 0.02 * hist[0]["train_loss"]
    # the fitted model reproduces the training energies closely
    from aimnet2mult.export import build_potential

    pot = build_potential(ckpt, 0, dispersion=None)
    errors, spread = [], np.std([s["energy"] for s in samples])
    for s in samples:
        out = pot({"coord": torch.tensor(s["coord"][None], dtype=torch.float32),
                   "numbers": torch.tensor(s["numbers"][None])})
        errors.append(out["energy"].item() - s["energy"])
    assert np.abs(errors).mean() < 0.02 * spread, (np.abs(errors).mean(), spread)


def test_metrics_per_fidelity_match_recomputation(tmp_path):
    f0 = synthetic.write_h5(tmp_path / "a.h5", synthetic.make_samples(40, seed=4))
    f1 = synthetic.write_h5(tmp_path / "b.h5", synthetic.make_samples(40, seed=5, scale=1.2), labels=())
    path = _train_api(tmp_path, {0: f0, 1: f1}, epochs=1, extra=["data.val_fraction=0.25"])
    ckpt = load_checkpoint(path)
    last = ckpt["training_state"]["history"][-1]
    from aimnet2mult.data.loaders import build_loaders

    cfg = ckpt["train_config"]
    _, val_loader, _ = build_loaders(cfg["data"], int(cfg["seed"]), int(cfg["fidelity_offset"]))
    model = build_model(ckpt)
    err = {0: [], 1: []}
    ferr = []
    for batch in val_loader:
        coord = batch["coord"].clone().requires_grad_(True)
        out = model(dict(batch, coord=coord))
        forces = -torch.autograd.grad(out["energy"].sum(), coord)[0]
        for b in range(len(batch["energy"])):
            k = int(batch["fidelity"][b])
            err[k].append(float(out["energy"][b] - batch["energy"][b]) * 23.060547830619026)
            if k == 0:
                n = int((batch["numbers"][b] > 0).sum())
                ferr.extend(((forces[b, :n] - batch["forces"][b, :n]) * 23.060547830619026).flatten().tolist())
    for k in (0, 1):
        rmse = float(np.sqrt(np.mean(np.square(err[k]))))
        assert abs(last[f"fid{k}/E_rmse"] - rmse) < 1e-4 * max(1.0, rmse)
    assert abs(last["fid0/F_mae"] - np.mean(np.abs(ferr))) < 1e-4
    assert "fid1/F_mae" not in last  # fidelity 1 has no forces


def test_missing_labels_give_exactly_zero_loss_and_finite_gradients():
    from helpers import small_model

    model, _ = small_model(2)
    samples = synthetic.make_samples(3, seed=1)
    from aimnet2mult.data.collate import collate

    items = []
    for s in samples:
        items.append({"coord": s["coord"].astype(np.float32), "numbers": s["numbers"].astype(np.int64),
                      "charge": np.float32(0), "mult": np.float32(1), "energy": np.float64(s["energy"] / 100),
                      "fidelity": 1})
    batch = collate(items)
    assert "forces" not in batch and "charges" not in batch
    loss_fn = MaskedMultiTaskLoss({"energy": {"weight": 1.0}, "forces": {"weight": 1.0}, "charges": {"weight": 1.0}})
    out = model(batch)
    loss, terms = loss_fn(out, batch)
    assert terms["forces"].item() == 0.0 and terms["charges"].item() == 0.0
    # a batch where the label exists but no molecule has it: masked to exactly zero with zero gradient
    items[0]["forces"] = samples[0]["forces"].astype(np.float32)
    batch = collate(items)
    batch["forces_mask"][:] = False
    coord = batch["coord"].clone().requires_grad_(True)
    out = model(dict(batch, coord=coord))
    out["forces"] = -torch.autograd.grad(out["energy"].sum(), coord, create_graph=True)[0]
    loss, terms = loss_fn(out, batch)
    assert terms["forces"].item() == 0.0
    grads = torch.autograd.grad(terms["forces"], [p for p in model.parameters()], allow_unused=True,
                                retain_graph=True)
    assert all(g is None or (torch.isfinite(g).all() and g.abs().max() == 0) for g in grads)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_force_error_falls_with_an_energy_only_fidelity(tmp_path):
    f0 = synthetic.write_h5(tmp_path / "a.h5", synthetic.make_samples(48, seed=6))
    f1 = synthetic.write_h5(tmp_path / "b.h5", synthetic.make_samples(48, seed=7, scale=1.2), labels=())
    path = _train_api(tmp_path, {0: f0, 1: f1}, epochs=6, extra=["data.val_fraction=0.25"])
    hist = load_checkpoint(path)["training_state"]["history"]
    assert hist[-1]["fid0/F_rmse"] < hist[0]["fid0/F_rmse"]
    assert all(np.isfinite(h["loss"]) for h in hist)


def test_resume_equals_uninterrupted(tmp_path):
    f0 = synthetic.write_h5(tmp_path / "a.h5", synthetic.make_samples(32, seed=8))
    f1 = synthetic.write_h5(tmp_path / "b.h5", synthetic.make_samples(32, seed=9, scale=1.2), labels=())
    files = {0: f0, 1: f1}
    extra = ["deterministic=true", "data.val_fraction=0.25"]
    full = load_checkpoint(_train_api(tmp_path, files, epochs=4, save="full.pt", extra=extra))
    half = _train_api(tmp_path, files, epochs=2, save="half.pt", extra=extra)
    resumed = load_checkpoint(_train_api(tmp_path, files, epochs=4, save="resumed.pt", extra=extra, resume=str(half)))
    for key, value in full["state_dict"].items():
        assert torch.allclose(value, resumed["state_dict"][key], atol=1e-6, rtol=0), key
    assert len(resumed["training_state"]["history"]) == 4
    assert resumed["training_state"]["history"][-1]["loss"] == pytest.approx(
        full["training_state"]["history"][-1]["loss"], abs=1e-6)


def test_transfer_one_to_two_fidelities_preserves_fidelity0(tmp_path):
    f0 = synthetic.write_h5(tmp_path / "a.h5", synthetic.make_samples(24, seed=10))
    f1 = synthetic.write_h5(tmp_path / "b.h5", synthetic.make_samples(24, seed=11, scale=1.2), labels=())
    src = load_checkpoint(_train_api(tmp_path, {0: f0}, epochs=1, save="src.pt"))
    from aimnet2mult.data.loaders import build_loaders
    from aimnet2mult.nn.model import MultiFidelityAIMNet2
    from aimnet2mult.train.config import load_train_config
    from aimnet2mult.train.runner import build_model_config
    from aimnet2mult.train.transfer import transfer_weights

    cfg = load_train_config([], [f"data.fidelity_datasets.0={f0}", f"data.fidelity_datasets.1={f1}"])
    _, _, info = build_loaders(cfg["data"], 0, 200)
    model_cfg = build_model_config(cfg, None, src)
    model = MultiFidelityAIMNet2(model_cfg)
    lines = transfer_weights(model, model_cfg, info["sae"], src)
    assert any("fidelity 1" in line and "new" in line for line in lines)
    source_model = build_model(src)
    for s in synthetic.make_samples(4, seed=12):
        inp = {"coord": torch.tensor(s["coord"][None], dtype=torch.float32),
               "numbers": torch.tensor(s["numbers"][None]),
               "fidelity": torch.tensor([0])}
        sae_src = sum(src["fidelities"][0]["sae"][int(z)] for z in s["numbers"])
        sae_new = sum(info["sae"][0][int(z)] for z in s["numbers"])
        e_src = source_model(dict(inp))["energy"].item() + sae_src
        e_new = model(dict(inp))["energy"].item() + sae_new
        assert abs(e_src - e_new) < 1e-6


def test_official_member_loads_as_fidelity0(tmp_path, wb97m_file):
    from aimnet2mult.nn.model import MultiFidelityAIMNet2
    from aimnet2mult.train.config import load_train_config
    from aimnet2mult.train.runner import build_model_config, load_source
    from aimnet2mult.train.transfer import transfer_weights

    f0 = synthetic.write_h5(tmp_path / "a.h5", synthetic.make_samples(8, seed=10))
    src = load_source(str(wb97m_file))
    cfg = load_train_config([], [f"data.fidelity_datasets.0={f0}", f"data.fidelity_datasets.1={f0}"])
    model_cfg = build_model_config(cfg, None, src)
    model = MultiFidelityAIMNet2(model_cfg)
    sae = {0: {1: -13.0, 6: -1030.0, 7: -1480.0, 8: -2040.0}, 1: {}}
    transfer_weights(model, model_cfg, sae, src)
    official = getattr(torch.jit.load(str(wb97m_file)).models, "0")
    from aimnet2mult.export import build_potential

    ref_model = build_potential(src, 0, dispersion=None).model
    s = synthetic.make_samples(1, seed=1, bases=["CH3OH"])[0]
    inp = {"coord": torch.tensor(s["coord"][None], dtype=torch.float32), "numbers": torch.tensor(s["numbers"][None]),
           "charge": torch.zeros(1)}
    e_new = model(dict(inp, fidelity=torch.tensor([0])))["energy"].item() + sum(sae[0][int(z)] for z in s["numbers"])
    e_ref = ref_model(dict(inp))["energy"].item()
    assert abs(e_new - e_ref) < 2e-3  # float32 -> float64 shift mode changes rounding only
    assert official is not None


def test_sae_missing_element_stops_before_training(tmp_path):
    f0 = synthetic.write_h5(tmp_path / "a.h5", synthetic.make_samples(10, seed=1))
    (tmp_path / "sae.yaml").write_text("1: -13.6\n6: -1029.5\n8: -2041.8\n")
    small_train_yaml(tmp_path / "train.yaml")
    res = run(["-m", "aimnet2mult.train.cli", "--config", "train.yaml", "--save", "m.pt",
               f"data.fidelity_datasets.0={f0}",
               "data.sae.energy.files.0=sae.yaml", "--no-progress"], tmp_path)
    assert res.returncode != 0
    assert "N" in res.stderr and "fidelity 0" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("override,pattern", [
    ("data.fidelity_datasets.2=b.h5", "gap"),
    ("data.fidelity_datasets.1=missing.h5", "missing.h5"),
    ("data.fidelity_weights.0=-1", "positive"),
    ("trainer.epochz=3", "unknown configuration key"),
])
def test_bad_configuration(tmp_path, override, pattern):
    synthetic.write_h5(tmp_path / "a.h5", synthetic.make_samples(10, seed=1))
    synthetic.write_h5(tmp_path / "b.h5", synthetic.make_samples(10, seed=2))
    small_train_yaml(tmp_path / "train.yaml")
    res = run(["-m", "aimnet2mult.train.cli", "--config", "train.yaml", "--save", "m.pt",
               "data.fidelity_datasets.0=a.h5",
               override, "--no-progress"], tmp_path)
    assert res.returncode == 2 and pattern in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_nan_energies_and_empty_file(tmp_path):
    import h5py

    samples = synthetic.make_samples(10, seed=1)
    samples[3]["energy"] = float("nan")
    synthetic.write_h5(tmp_path / "nan.h5", samples)
    h5py.File(tmp_path / "empty.h5", "w").close()
    small_train_yaml(tmp_path / "train.yaml")
    for name in ("nan.h5", "empty.h5"):
        res = run(["-m", "aimnet2mult.train.cli", "--config", "train.yaml", "--save", "m.pt",
                   f"data.fidelity_datasets.0={name}", "--no-progress"], tmp_path)
        assert res.returncode == 2 and name in res.stderr and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_leaves_loadable_last_checkpoint(tmp_path, signum, code):
    synthetic.write_h5(tmp_path / "a.h5", synthetic.make_samples(64, seed=1))
    small_train_yaml(tmp_path / "train.yaml", epochs=1000)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(SMALL_MODEL))
    proc = subprocess.Popen([sys.executable, "-m", "aimnet2mult.train.cli", "--config", "train.yaml", "--save", "m.pt",
                             "--model", "model.yaml", "data.fidelity_datasets.0=a.h5", "--no-progress",
                             "data.samplers.train.kwargs.batch_size=8"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "m_run" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert last.exists(), "no epoch finished in time"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert signal.Signals(signum).name + ": stopping after the current iteration" in \
        (tmp_path / "m_run" / "train.log").read_text()
    ckpt = load_checkpoint(last)
    build_model(ckpt)
    assert ckpt["training_state"]["epoch"] >= 1


def test_torchrun_two_ranks_identical_weights(tmp_path):
    synthetic.write_h5(tmp_path / "a.h5", synthetic.make_samples(32, seed=1))
    synthetic.write_h5(tmp_path / "b.h5", synthetic.make_samples(32, seed=2, scale=1.2), labels=())
    small_train_yaml(tmp_path / "train.yaml", epochs=2)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(SMALL_MODEL))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "aimnet2mult.train.cli",
                          "--config", "train.yaml", "--model", "model.yaml", "--save", "m.pt",
                          "data.fidelity_datasets.0=a.h5", "data.fidelity_datasets.1=b.h5", "--no-progress"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    log_text = (tmp_path / "m_run" / "train.log").read_text()
    assert "2 ranks hold identical weights" in log_text
    load_checkpoint(tmp_path / "m.pt")


def test_override_replaces_int_keyed_entry_of_config_file(tmp_path):
    """YAML `0:` keys are ints, dotted overrides give '0': both must address the same entry."""
    from aimnet2mult.train.config import load_train_config

    cfg_file = tmp_path / "t.yaml"
    cfg_file.write_text("data:\n  fidelity_datasets:\n    0: from_file0.h5\n    1: from_file1.h5\n"
                        "  fidelity_weights:\n    0: 1.0\n    1: 0.5\n")
    cfg = load_train_config([str(cfg_file)], ["data.fidelity_datasets.0=override0.h5", "data.fidelity_weights.1=2.0"])
    assert sorted(cfg["data"]["fidelity_datasets"]) == [0, 1]
    assert Path(cfg["data"]["fidelity_datasets"][0]).name == "override0.h5"
    assert Path(cfg["data"]["fidelity_datasets"][1]).name == "from_file1.h5"
    assert cfg["data"]["fidelity_weights"] == {0: 1.0, 1: 2.0}
