"""Fast tests of the data-generation tool (aimnet2mult.datagen), tiny settings (< 60 s)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py  # noqa: E402  (the datagen extra, installed by make test, brings pyscf and tblite)
import numpy as np
import pytest

from aimnet2mult.datagen import pipeline  # noqa: E402
from aimnet2mult.datagen.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TINY = ["--molecules", "H2O,OH-", "--n-xtb", "6", "--n-dft", "2", "--n-unseen", "1",
        "--n-dft-unseen-per-mol", "1", "--dft-basis", "sto-3g", "--md-equil-steps", "20",
        "--md-interval", "5", "--check-samples", "2", "--check-dft-components", "3"]

EXPECTED = {
    "b3lyp_train.h5": ("b3lyp/sto-3g", {"forces"}),
    "b3lyp_test_unseen.h5": ("b3lyp/sto-3g", {"forces"}),
    "gfn2_train.h5": ("gfn2-xtb", {"forces", "charges"}),
    "gfn2_val.h5": ("gfn2-xtb", {"forces", "charges"}),
    "gfn1_train.h5": ("gfn1-xtb", set()),
    "gfn1_val.h5": ("gfn1-xtb", set()),
}
DTYPES = {"coord": np.float32, "numbers": np.int32, "charge": np.float32, "mult": np.float32,
          "energy": np.float64, "forces": np.float32, "charges": np.float32}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("datagen")
    wd, out = root / "work", root / "out"
    assert main(["run", "--workdir", str(wd), "--quiet", *TINY]) == 0
    assert main(["assemble", "--workdir", str(wd), "--output", str(out)]) == 0
    return wd, out


def _read_h5(path):
    data = {}
    with h5py.File(path, "r") as f:
        for g in f:
            data[g] = {k: f[g][k][()] for k in f[g]}
            assert all(f[g][k].compression == "gzip" for k in f[g])
    return data


def test_layout_dtypes_shapes(tiny):
    _, out = tiny
    assert {p.name for p in out.glob("*.h5")} == set(EXPECTED)
    for fname, (_, extra) in EXPECTED.items():
        data = _read_h5(out / fname)
        assert data, fname
        for g, ds in data.items():
            na = int(g)
            assert set(ds) == {"coord", "numbers", "charge", "mult", "energy"} | extra, fname
            n = ds["energy"].shape[0]
            assert ds["coord"].shape == (n, na, 3)
            assert ds["numbers"].shape == (n, na)
            assert ds["charge"].shape == ds["mult"].shape == (n,)
            if "forces" in ds:
                assert ds["forces"].shape == (n, na, 3)
            if "charges" in ds:
                assert ds["charges"].shape == (n, na)
                # GFN2 partial charges add up to the total charge
                np.testing.assert_allclose(ds["charges"].sum(1), ds["charge"], atol=1e-4)
            for k, v in ds.items():
                assert v.dtype == DTYPES[k], (fname, g, k, v.dtype)
                assert np.all(np.isfinite(v))
            assert np.all(ds["mult"] == 1)
            # H2O (3 atoms) is neutral, OH- (2 atoms) is an anion
            assert np.all(ds["charge"] == {3: 0.0, 2: -1.0}[na])
            assert np.all(ds["energy"] < 0)  # total energies in eV


def test_manifest_matches_files(tiny):
    wd, out = tiny
    man = json.loads((out / "manifest.json").read_text())
    assert set(man["files"]) == set(EXPECTED)
    total = {}
    for fname, info in man["files"].items():
        data = _read_h5(out / fname)
        by_n = {g: len(ds["energy"]) for g, ds in data.items()}
        assert info["by_n_atoms"] == by_n
        assert info["n_conformers"] == sum(by_n.values())
        assert info["level"] == EXPECTED[fname][0]
        total[info["level"]] = total.get(info["level"], 0) + info["n_conformers"]
    assert total == {"b3lyp/sto-3g": 2, "gfn2-xtb": 6, "gfn1-xtb": 6}
    assert man["unseen_molecules"] == ["H2O"]
    assert man["molecules_per_split"]["b3lyp_test_unseen"] == ["H2O"]
    assert "H2O" not in man["molecules_per_split"]["b3lyp_train"]
    assert "H2O" in man["molecules_per_split"]["gfn2_train"]  # xTB data of unseen stays in train
    lv = man["levels"]
    assert lv["b3lyp/sto-3g"]["dispersion"] is False
    assert lv["gfn2-xtb"]["dispersion"] is True and lv["gfn1-xtb"]["dispersion"] is True
    assert lv["gfn1-xtb"]["labels"] == ["energy"]
    assert man["units"]["energy"].startswith("eV") and man["units"]["coord"] == "angstrom"
    assert man["seed"] == 0 and man["tool_version"] and not man["partial"]
    assert all(r["passed"] for r in man["self_check"].values()) and len(man["self_check"]) == 3
    card = (out / "DATA_CARD.md").read_text()
    assert "python -m aimnet2mult.datagen run --workdir" in card and "--dft-basis sto-3g" in card
    assert "$" not in card.replace("$ ", "")  # every template field filled


def test_resume_does_no_new_work(tiny):
    wd, _ = tiny
    files = sorted(p for p in wd.rglob("*") if p.is_file() and p.name not in ("run.log", ".lock",
                                                                               "DONE.json"))
    before = {p: p.stat().st_mtime_ns for p in files}
    new = pipeline.run(wd, {}, verbose=False)
    assert sum(new.values()) == 0, new
    assert {p: p.stat().st_mtime_ns for p in files} == before
    # the same explicit settings are accepted, different ones are refused
    assert sum(pipeline.run(wd, {"seed": 0, "n_xtb": 6}, verbose=False).values()) == 0
    with pytest.raises(ValueError, match="seed"):
        pipeline.run(wd, {"seed": 1}, verbose=False)


def test_partial_workdir_resumes_only_missing(tiny, tmp_path):
    wd, _ = tiny
    wd2 = tmp_path / "work"
    shutil.copytree(wd, wd2)
    label = next((wd2 / "labels" / "dft").rglob("*.npz"))
    ref = np.load(label)["energy"]
    label.unlink()
    from aimnet2mult.datagen.assemble import assemble

    with pytest.raises(RuntimeError, match="not complete"):
        assemble(wd2, tmp_path / "out")
    man = assemble(wd2, tmp_path / "out", allow_partial=True)
    assert man["partial"] and sum(v["n_conformers"] for v in man["files"].values()) == 13
    new = pipeline.run(wd2, {}, verbose=False)
    assert new["dft"] == 1 and new["conformers"] == 0 and new["gfn2-xtb"] == 0
    np.testing.assert_allclose(np.load(label)["energy"], ref, rtol=0, atol=1e-6)


def test_selfcheck_recorded(tiny):
    wd, _ = tiny
    for tag, tol in (("gfn2", 1e-3), ("gfn1", 1e-3), ("dft", 5e-3)):
        rec = json.loads((wd / "selfcheck" / f"{tag}.json").read_text())
        assert rec["passed"] and rec["max_abs_dev_eV_per_A"] < tol and rec["samples"]
        if tag == "gfn2":  # the check recomputes stored labels
            assert all(s["stored_forces_max_abs_diff_eV_per_A"] < 1e-4 for s in rec["samples"])


def test_gfn2_forces_equal_finite_differences():
    from ase.build import molecule

    from aimnet2mult.datagen.qm import fd_forces, xtb_energy, xtb_single

    a = molecule("CH3OH")
    x = a.positions + np.random.default_rng(0).normal(0, 0.05, a.positions.shape)
    r = xtb_single("gfn2-xtb", a.numbers, x)
    fd = fd_forces(lambda y: xtb_energy("gfn2-xtb", a.numbers, y), x, 1e-3)
    assert np.abs(fd - r["forces"]).max() < 1e-3
    assert np.abs(r["forces"]).max() > 0.1  # a distorted geometry, not a trivial zero check
    assert abs(r["charges"].sum()) < 1e-6


def test_catalogue_and_determinism():
    from ase.collections import g2

    from aimnet2mult.datagen.conformers import MDSettings, bond_matrix, check_geometry, sample_md
    from aimnet2mult.datagen.molecules import ALLOWED_ELEMENTS, DEFAULT_NEUTRALS, IONS, g2_candidates, g2_molecule

    cands = g2_candidates()
    assert len(DEFAULT_NEUTRALS) >= 30 and set(DEFAULT_NEUTRALS) <= set(cands)
    assert "CH3" not in cands and "OH" not in cands  # radicals are filtered out
    for n in cands:
        a = g2[n]
        assert len(a) >= 3 and set(a.get_chemical_symbols()) <= set(ALLOWED_ELEMENTS)
        assert sum(a.numbers) % 2 == 0
    assert {i.name: i.charge for i in IONS}["CH3COO-"] == -1
    cfg = {**pipeline.DEFAULTS, "molecules": ["H2O", "NH3", "CH4", "HCN"], "n_unseen": 1,
           "n_dft": 14, "n_dft_unseen_per_mol": 2, "n_xtb": 40}
    p1, p2 = pipeline.make_plan(cfg), pipeline.make_plan(cfg)
    assert p1["split_codes"] == p2["split_codes"] and p1["unseen"] == p2["unseen"]
    assert sum(m["n_dft"] for m in p1["molecules"]) == 14
    assert sum(m["n_xtb"] for m in p1["molecules"]) == 40
    codes = "".join(p1["split_codes"]["dft"].values())
    assert codes.count("u") == 2 and codes.count("v") == 1 and codes.count("s") == 1
    m = g2_molecule("HCN")
    s = MDSettings(equil_steps=10, interval=3)
    c1, _ = sample_md(m.numbers, m.positions, 0, 1, 4, np.random.SeedSequence(5), s)
    c2, _ = sample_md(m.numbers, m.positions, 0, 1, 4, np.random.SeedSequence(5), s)
    assert np.array_equal(c1, c2) and c1.shape == (4, 3, 3)
    assert np.array_equal(c1, c1.astype(np.float32))  # labelled coords are float32-exact
    # geometry filter
    ref = np.asarray(m.positions)
    b = bond_matrix(m.numbers, ref)
    assert check_geometry(m.numbers, ref, b)[0]
    bad = ref.copy()
    bad[0] = bad[1] + [0.0, 0.0, 0.5]
    assert not check_geometry(m.numbers, bad, b)[0]
    far = ref.copy()
    far[2] = far[2] * 3
    assert "broken" in check_geometry(m.numbers, far, b)[1]


def test_cli_status_entry_point(tiny):
    wd, _ = tiny
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "aimnet2mult.datagen", "status", "--workdir", str(wd),
                        "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["state"] == "done" and st["counts"]["dft_done"] == 2 and not st["running"]
