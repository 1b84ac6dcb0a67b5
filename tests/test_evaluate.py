"""`aimnet2mult evaluate`: errors against dataset labels, dispersion handled as the labels define it."""

import json
import subprocess
import sys

import numpy as np
import pytest
import synthetic
import torch
from helpers import small_checkpoint

from aimnet2mult.checkpoint import save_checkpoint
from aimnet2mult.evaluate import evaluate_files
from aimnet2mult.export import build_potential, export_potential
from aimnet2mult.units import EV_TO_KCAL_PER_MOL


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    ckpt, _ = small_checkpoint(2, seed=3, dispersion=["b3lyp", None])
    ck_path = tmp / "m.pt"
    save_checkpoint(ckpt, ck_path)
    samples = synthetic.make_samples(10, seed=5, bases=["H2O", "CH3OH", "NH3"])
    data = synthetic.write_h5(tmp / "d.h5", samples)
    return tmp, ckpt, ck_path, samples, data


def test_metrics_equal_a_hand_computation(setup):
    tmp, ckpt, ck_path, samples, data = setup
    row = evaluate_files([data], str(ck_path), 0)[0]
    pot = build_potential(ckpt, 0, dispersion=None)  # labels of fidelity 0 exclude dispersion
    de, df = [], []
    for s in samples:
        out = pot({"coord": torch.tensor(s["coord"][None], dtype=torch.float32),
                   "numbers": torch.tensor(s["numbers"][None])})
        de.append(out["energy"].item() - s["energy"])
        df.append((out["forces"][0].double().numpy() - s["forces"]).ravel())
    de = np.array(de) * EV_TO_KCAL_PER_MOL
    df = np.concatenate(df) * EV_TO_KCAL_PER_MOL
    assert row["n_molecules"] == len(samples) and row["n_forces"] == len(samples)
    assert row["E_mae"] == pytest.approx(np.abs(de).mean(), rel=1e-6)
    assert row["E_rmse"] == pytest.approx(np.sqrt((de ** 2).mean()), rel=1e-6)
    assert row["F_mae"] == pytest.approx(np.abs(df).mean(), rel=1e-4)


def test_compiled_file_with_d3_gives_the_same_errors(setup):
    """The .jpt adds D3(BJ) for B3LYP; evaluate removes it with the reference dftd3 package, so the
    errors equal those of the checkpoint evaluated without dispersion."""
    tmp, ckpt, ck_path, samples, data = setup
    jpt = export_potential(ckpt, 0, tmp / "m")
    a = evaluate_files([data], str(ck_path), 0)[0]
    b = evaluate_files([data], str(jpt), None)[0]
    assert b["E_mae"] == pytest.approx(a["E_mae"], abs=1e-4)
    assert b["F_mae"] == pytest.approx(a["F_mae"], abs=1e-3)
    # and the D3 energy really was removed (it is far from negligible for these molecules)
    assert abs(np.array(b["energy_pred_eV"]) - np.array(a["energy_pred_eV"])).max() < 1e-5


def test_cli_writes_json_and_requires_a_fidelity(setup):
    tmp, ckpt, ck_path, samples, data = setup
    out = tmp / "e.json"
    res = subprocess.run([sys.executable, "-m", "aimnet2mult", "evaluate", str(data), "--model", str(ck_path),
                          "--fidelity", "1", "--json", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())
    assert rows[0]["fidelity"] == 1 and "E MAE" in res.stdout
    res = subprocess.run([sys.executable, "-m", "aimnet2mult", "evaluate", str(data), "--model", str(ck_path)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "level0" in res.stderr and "level1" in res.stderr
