"""QM9 builder (aimnet2mult.datagen.qm9) on a small subset of qm9pack's real CSV."""

import csv
import sys

import h5py
import numpy as np
import pytest

from aimnet2mult.datagen import qm9
from aimnet2mult.datagen.store import Workdir

pytest.importorskip("tblite")

# methane, QM9 molecule 1: U0 = -40.47893 Ha, ZPVE = 0.044749 Ha (the CSV's values)
METHANE_E_EV = (-40.47893 - 0.044749) * 27.211386245988


def _small_csv(tmp_path, n_rows=60):
    """The first n_rows molecules of qm9pack's part 1, plus one row rewritten with QM9's
    Mathematica-style exponents (``*^``) and bare ``0.`` to exercise the number parser."""
    src = qm9.qm9pack_csv_files()[0]
    csv.field_size_limit(sys.maxsize)
    out = tmp_path / "qm9_small.csv"
    with open(src, newline="") as fh, open(out, "w", newline="") as oh:
        reader = csv.reader(fh)
        writer = csv.writer(oh, quoting=csv.QUOTE_NONNUMERIC)
        header = next(reader)
        writer.writerow(header)
        col = header.index("XYZ_Ang")
        for i, row in zip(range(n_rows), reader):
            if i == 2:  # water: 0.0647664923 -> 6.47664923*^-2
                row[col] = row[col].replace("0.0647664923", "6.47664923*^-2")
            writer.writerow(row)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qm9")
    src = _small_csv(tmp)
    settings = {"seed": 3, "n_test": 10, "n_val": 5, "high": [8, 16], "low": [20, 30], "chunk": 16,
                "csv": [str(src)]}
    man = qm9.build(tmp / "work", tmp / "data", settings, workers=1, verbose=False)
    return tmp, src, settings, man


def test_numbers_in_qm9_notation():
    assert qm9.parse_number("1.2*^-6") == pytest.approx(1.2e-6, rel=1e-15)
    assert qm9.parse_number("0.") == 0.0
    assert qm9.parse_number("-3.") == -3.0
    xyz = qm9.parse_coordinates("[[0.5995394918,0.,1.],[-1.5*^-3,2,3e1]]", 2)
    np.testing.assert_array_equal(xyz, [[0.5995394918, 0.0, 1.0], [-1.5e-3, 2.0, 30.0]])
    with pytest.raises(qm9.QM9Error, match="expected 6 coordinates"):
        qm9.parse_coordinates("[[1,2,3]]", 2)
    with pytest.raises(qm9.QM9Error, match="not one of QM9"):
        qm9.parse_elements("['C','Si']")


def test_energy_conversion_hand_checked(tmp_path):
    table = qm9.read_qm9([_small_csv(tmp_path, 5)])
    assert table["qm9_index"][0] == 1
    assert list(table["numbers"][0, :5]) == [6, 1, 1, 1, 1]
    assert table["energy"][0] == pytest.approx(METHANE_E_EV, abs=1e-9)
    assert table["energy"][0] == pytest.approx(-1102.7054809, abs=1e-6)  # by hand
    # the rewritten water coordinate parses to the original value
    assert table["coord"][2, 1, 0] == pytest.approx(0.0647664923, abs=1e-12)


def test_split_reproducible_and_disjoint(built, tmp_path):
    tmp, src, settings, man = built
    data = tmp / "data"

    def indices(name):
        with h5py.File(data / name, "r") as f:
            return np.concatenate([f[g]["qm9_index"][()] for g in f])

    test = set(indices("b3lyp_test.h5"))
    val = set(indices("b3lyp_val.h5"))
    assert len(test) == 10 and len(val) == 5 and not test & val
    train_files = [n for n in man["files"] if "_train_" in n]
    assert sorted(train_files) == sorted(["b3lyp_train_8.h5", "b3lyp_train_16.h5", "delta_train_8.h5",
                                          "delta_train_16.h5", "gfn2_train_20.h5", "gfn2_train_30.h5"])
    for name in train_files:
        idx = set(indices(name))
        assert not idx & test, name
        assert not idx & val, name
    # nested sets: high <= low, small <= large
    assert set(indices("b3lyp_train_16.h5")) <= set(indices("gfn2_train_20.h5"))
    assert set(indices("b3lyp_train_8.h5")) <= set(indices("b3lyp_train_16.h5"))
    assert set(indices("gfn2_train_20.h5")) <= set(indices("gfn2_train_30.h5"))
    assert set(indices("gfn2_test.h5")) == test
    # same seed, fresh workdir: the same split
    again = qm9.build(tmp_path / "w2", tmp_path / "d2", settings, workers=1, verbose=False)
    for name in ("b3lyp_test.h5", "gfn2_train_20.h5", "b3lyp_train_8.h5"):
        with h5py.File(tmp_path / "d2" / name, "r") as f:
            other = np.sort(np.concatenate([f[g]["qm9_index"][()] for g in f]))
        np.testing.assert_array_equal(other, np.sort(indices(name)))
    assert again["files"]["b3lyp_test.h5"]["sha256"] == man["files"]["b3lyp_test.h5"]["sha256"]


def test_labels_match_direct_tblite_and_qm9(built):
    from tblite.interface import Calculator

    tmp, src, settings, man = built
    table = qm9.read_qm9([src])
    by_index = {int(i): k for k, i in enumerate(table["qm9_index"])}
    with h5py.File(tmp / "data" / "gfn2_train_30.h5", "r") as f, \
            h5py.File(tmp / "data" / "b3lyp_train_16.h5", "r") as fb, \
            h5py.File(tmp / "data" / "delta_train_16.h5", "r") as fd:
        group = sorted(f, key=int)[-1]
        g = f[group]
        row = 0
        numbers, coord = g["numbers"][row], g["coord"][row].astype(np.float64)
        qidx = int(g["qm9_index"][row])
        # an independent GFN2-xTB call in atomic units (Bohr, Hartree), CODATA 2018
        bohr, hartree = 0.529177210903, 27.211386245988
        k = by_index[qidx]
        na = int(table["n_atoms"][k])
        calc = Calculator("GFN2-xTB", numbers.astype(int), table["coord"][k, :na] / bohr)
        calc.set("verbosity", 0)
        res = calc.singlepoint()
        assert g["energy"][row] == pytest.approx(res.get("energy") * hartree, abs=1e-7)
        np.testing.assert_allclose(g["forces"][row], -res.get("gradient") * hartree / bohr, atol=2e-5)
        np.testing.assert_allclose(g["charges"][row], res.get("charges"), atol=1e-6)
        np.testing.assert_allclose(coord, table["coord"][k, :na], atol=1e-6)
        # B3LYP energy and delta of the same molecules
        for gb in fb:
            for j, q in enumerate(fb[gb]["qm9_index"][()]):
                assert fb[gb]["energy"][j] == pytest.approx(table["energy"][by_index[int(q)]], abs=1e-9)
        e_b = {int(q): e for gb in fb for q, e in zip(fb[gb]["qm9_index"][()], fb[gb]["energy"][()])}
        e_x = {int(q): e for gx in f for q, e in zip(f[gx]["qm9_index"][()], f[gx]["energy"][()])}
        for gd in fd:
            for q, e in zip(fd[gd]["qm9_index"][()], fd[gd]["energy"][()]):
                assert e == pytest.approx(e_b[int(q)] - e_x[int(q)], abs=1e-9)
        assert "forces" not in fb[sorted(fb)[0]]


def test_files_load_as_training_data(built):
    from aimnet2mult.data.h5dataset import SizeGroupedDataset

    tmp, *_ = built
    ds = SizeGroupedDataset(tmp / "data" / "gfn2_train_30.h5")
    assert len(ds) == 30
    assert set(ds.label_keys) == {"forces", "charges"}
    assert set(ds.elements) <= {1, 6, 7, 8, 9}


def test_resume_after_interrupted_labelling(tmp_path, monkeypatch):
    src = _small_csv(tmp_path, 40)
    settings = {"seed": 1, "n_test": 4, "n_val": 2, "high": [4], "low": [20], "chunk": 8, "csv": [str(src)]}
    calls = []
    real = qm9._label_chunk

    def flaky(job):
        calls.append(len(job[2]))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is stopped while the second chunk is being labelled
        return real(job)

    monkeypatch.setattr(qm9, "_label_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        qm9.build(tmp_path / "w", tmp_path / "d", settings, workers=1, verbose=False)
    wd = Workdir(tmp_path / "w")
    done = sorted((wd.root / "labels" / "gfn2").glob("chunk_*.npz"))
    assert [p.name for p in done] == ["chunk_00000.npz"]
    assert not list((wd.root / "labels" / "gfn2").glob("*.tmp"))
    assert not (tmp_path / "d").exists()
    first = done[0].stat().st_mtime_ns
    counted = []
    monkeypatch.setattr(qm9, "_label_chunk", lambda job: counted.append(1) or real(job))
    man = qm9.build(tmp_path / "w", tmp_path / "d", settings, workers=1, verbose=False)
    assert len(counted) == 3  # 26 molecules in chunks of 8: chunks 1, 2 and 3 were still to do
    assert done[0].stat().st_mtime_ns == first  # the finished chunk was not recomputed
    assert man["files"]["gfn2_train_20.h5"]["n_molecules"] == 20


def test_changed_settings_refused(tmp_path):
    src = _small_csv(tmp_path, 30)
    base = {"seed": 1, "n_test": 4, "n_val": 2, "high": [4], "low": [10], "chunk": 8, "csv": [str(src)]}
    qm9.build(tmp_path / "w", tmp_path / "d", base, workers=1, verbose=False)
    with pytest.raises(qm9.QM9Error, match="seed: 1 \\(workdir\\) vs 2"):
        qm9.build(tmp_path / "w", tmp_path / "d", dict(base, seed=2), workers=1, verbose=False)
    with pytest.raises(qm9.QM9Error, match="must not exceed"):
        qm9.build(tmp_path / "w2", tmp_path / "d2", dict(base, high=[20]), workers=1, verbose=False)
    # another high-fidelity size within the same pool is fine
    man = qm9.build(tmp_path / "w", tmp_path / "d", dict(base, high=[2, 4]), workers=1, verbose=False)
    assert man["files"]["b3lyp_train_2.h5"]["n_molecules"] == 2


def test_benchmark_runs_resumes_and_scores_delta(built, tmp_path):
    """bench/bench_qm9.py end to end on the tiny set (4 steps, small network): every arm writes a
    result, a second call trains nothing, and the Delta arm's MAE equals |GFN2 + network - B3LYP|."""
    import json
    import subprocess
    from pathlib import Path

    import yaml
    from helpers import SMALL

    from aimnet2mult.calculators.runtime import load_model

    tmp, *_ = built
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(SMALL))
    cmd = [sys.executable, str(root / "bench" / "bench_qm9.py"), "--data", str(tmp / "data"), "--out",
           str(tmp_path / "out"), "--arms", "single,delta,multi_shared_pt", "--high", "8", "--low", "20",
           "--steps", "4", "--batches-per-epoch", "2", "--jobs", "1", "--threads", "1",
           "--model", str(tmp_path / "model.yaml"), "data.samplers.val.kwargs.batch_size=8"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = {r["arm"]: r for r in json.loads((tmp_path / "out" / "results.json").read_text())}
    assert set(rows) == {"single", "delta", "multi_shared_pt"}
    assert all(np.isfinite(r["E_mae"]) and r["n_test"] == 10 for r in rows.values())
    assert "fidelity_schedule.pretrain_epochs=1" in rows["multi_shared_pt"]["overrides"]
    assert (tmp_path / "out" / "qm9_learning_curves.png").stat().st_size > 0
    assert "/ single" in (tmp_path / "out" / "summary.md").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "started" not in again.stdout
    # Delta arm: GFN2 energy + the network's prediction against B3LYP, recomputed here
    pot = load_model(tmp_path / "out" / "runs" / "delta_h8_s4" / "model.pt", 0)
    errs = []
    with h5py.File(tmp / "data" / "gfn2_test.h5", "r") as fx, h5py.File(tmp / "data" / "b3lyp_test.h5", "r") as fb:
        ref = {int(q): e for g in fb for q, e in zip(fb[g]["qm9_index"][()], fb[g]["energy"][()])}
        for g in fx:
            for j, q in enumerate(fx[g]["qm9_index"][()]):
                pred = pot(fx[g]["coord"][j], fx[g]["numbers"][j])["energy"]
                errs.append(abs(fx[g]["energy"][j] + pred - ref[int(q)]))
    assert rows["delta"]["E_mae"] == pytest.approx(np.mean(errs) * 23.060547830619026, rel=1e-5)
