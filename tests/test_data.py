"""Data pipeline: HDF5 reader, SAE, mixed-fidelity dataset, sampler, collate, loaders."""

import logging
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from aimnet2mult.data import (
    DataError,
    MixedFidelityBatchSampler,
    MixedFidelityDataset,
    SizeGroupedDataset,
    build_loaders,
    collate,
    fit_sae,
    read_sae,
    split_indices,
    write_sae,
)
from aimnet2mult.data.sae import SAEError, fit_sae_details
from aimnet2mult.train import calc_sae

SAE0 = {1: -13.587234, 6: -1029.476123, 7: -1485.234567, 8: -2041.789012}
SAE1 = {1: -13.1, 6: -1027.9, 8: -2040.3}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def write_h5(path, groups, numbers_dtype=np.int32):
    """groups: {name: {key: array}} written as given (numbers cast to numbers_dtype)."""
    with h5py.File(path, "w") as f:
        for name, arrays in groups.items():
            g = f.create_group(str(name))
            for k, v in arrays.items():
                v = np.asarray(v)
                if k == "numbers":
                    v = v.astype(numbers_dtype)
                g.create_dataset(k, data=v)
    return Path(path)


def make_groups(sizes, n_per, sae=SAE0, labels=(), seed=0, noise=0.0, mult=False, elements=None):
    """Random molecules: {natoms: arrays}; energy = sum SAE + noise."""
    rng = np.random.default_rng(seed)
    elements = list(elements or sae)
    groups = {}
    for na in sizes:
        num = rng.choice(elements, size=(n_per, na))
        e = np.array([sum(sae[int(z)] for z in row) for row in num]) + rng.normal(0, noise, n_per)
        # atoms on a line 1.2 Å apart, jittered: never closer than the 0.1 Å coincidence limit
        line = np.arange(na)[:, None] * np.array([1.2, 0.0, 0.0])
        coord = line + rng.uniform(-0.3, 0.3, size=(n_per, na, 3))
        g = {"coord": coord.astype(np.float32), "numbers": num,
             "charge": rng.integers(-1, 2, n_per).astype(np.float32), "energy": e}
        if "forces" in labels:
            g["forces"] = rng.normal(size=(n_per, na, 3)).astype(np.float32)
        if "charges" in labels:
            g["charges"] = rng.normal(size=(n_per, na)).astype(np.float32)
        if "spin_charges" in labels:
            g["spin_charges"] = rng.normal(size=(n_per, na)).astype(np.float32)
        if mult:
            g["mult"] = rng.integers(1, 4, n_per).astype(np.float32)
        groups[na] = g
    return groups


def spread(n, natoms):
    """(n, natoms, 3) coordinates 1.2 Å apart on a line (no coincident atoms)."""
    return np.tile(np.arange(natoms)[:, None] * np.array([1.2, 0.0, 0.0]), (n, 1, 1))


def make_file(path, sizes=(3, 5), n_per=6, **kw):
    numbers_dtype = kw.pop("numbers_dtype", np.int32)
    return write_h5(path, make_groups(sizes, n_per, **kw), numbers_dtype)


def batches_equal(a, b):
    if a.keys() != b.keys():
        return False
    return all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# HDF5 format
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint8])
def test_roundtrip_numbers_dtypes(tmp_path, dtype):
    groups = make_groups((5, 3), 4, labels=("forces", "charges"), mult=True, seed=1)
    path = write_h5(tmp_path / "d.h5", groups, numbers_dtype=dtype)
    ds = SizeGroupedDataset(path)
    assert len(ds) == 8
    assert ds.path == str(path)
    assert ds.n_atoms.tolist() == [3] * 4 + [5] * 4  # groups by ascending atom count
    assert ds.label_keys == {"forces", "charges"}
    assert ds.elements == sorted(set(np.concatenate([g["numbers"].ravel() for g in groups.values()]).tolist()))
    for i in range(len(ds)):
        na, row = (3, i) if i < 4 else (5, i - 4)
        g = groups[na]
        it = ds[i]
        assert set(it) == {"coord", "numbers", "charge", "mult", "energy", "forces", "charges"}
        assert it["coord"].dtype == np.float32 and it["coord"].shape == (na, 3)
        assert it["numbers"].dtype == np.int64 and it["numbers"].tolist() == g["numbers"][row].tolist()
        assert it["charge"].dtype == np.float32 and it["charge"].shape == ()
        assert it["mult"].dtype == np.float32 and float(it["mult"]) == g["mult"][row]
        assert it["energy"].dtype == np.float64 and float(it["energy"]) == g["energy"][row]
        np.testing.assert_array_equal(it["coord"], g["coord"][row])
        np.testing.assert_array_equal(it["forces"], g["forces"][row])
        np.testing.assert_array_equal(it["charges"], g["charges"][row])
    counts = ds.element_counts()
    assert counts.shape == (8, len(ds.elements))
    assert counts.sum(axis=1).tolist() == ds.n_atoms.tolist()
    j = ds.elements.index(6)
    assert counts[0, j] == (groups[3]["numbers"][0] == 6).sum()


def test_lazy_equals_in_memory_and_defaults(tmp_path):
    path = make_file(tmp_path / "d.h5", sizes=(2, 4, 7), n_per=5, labels=("spin_charges",))
    lazy, mem = SizeGroupedDataset(path), SizeGroupedDataset(path, in_memory=True)
    assert len(lazy) == len(mem) == 15
    for i in range(len(lazy)):
        a, b = lazy[i], mem[i]
        assert a.keys() == b.keys() == {"coord", "numbers", "charge", "mult", "energy", "spin_charges"}
        for k in a:
            assert a[k].dtype == b[k].dtype
            np.testing.assert_array_equal(a[k], b[k])
        assert float(a["mult"]) == 1.0  # default multiplicity
    assert lazy[-1]["numbers"].tolist() == lazy[14]["numbers"].tolist()
    with pytest.raises(IndexError):
        lazy[15]


def test_partial_labels_per_group(tmp_path):
    groups = make_groups((3,), 4, labels=("forces",), seed=2)
    groups.update(make_groups((6,), 3, seed=3))
    ds = SizeGroupedDataset(write_h5(tmp_path / "d.h5", groups))
    assert ds.label_keys == {"forces"}
    assert ds.label_mask("forces").tolist() == [True] * 4 + [False] * 3
    assert ds.label_mask("charges").tolist() == [False] * 7
    assert "forces" in ds[0] and "forces" not in ds[5]
    sub = ds.subset([4, 5])
    assert sub.label_keys == set() and len(sub) == 2 and sub.n_atoms.tolist() == [6, 6]


def test_subset_and_split(tmp_path):
    ds = SizeGroupedDataset(make_file(tmp_path / "d.h5", sizes=(3, 5), n_per=10, elements=[1, 6, 8]))
    tr, va = split_indices(len(ds), 0.25, seed=3)
    tr2, va2 = split_indices(len(ds), 0.25, seed=3)
    assert tr.tolist() == tr2.tolist() and va.tolist() == va2.tolist()
    assert len(va) == 5 and sorted(tr.tolist() + va.tolist()) == list(range(20))
    assert split_indices(20, 0.25, seed=4)[1].tolist() != va.tolist()
    assert [len(x) for x in split_indices(2, 0.1, 0)] == [1, 1]   # tiny: still one validation molecule
    assert [len(x) for x in split_indices(1, 0.5, 0)] == [1, 0]
    assert [len(x) for x in split_indices(10, 0.0, 0)] == [10, 0]
    sub = ds.subset(va)
    assert len(sub) == 5 and sub.n_atoms.tolist() == ds.n_atoms[va].tolist()
    assert sub[2]["numbers"].tolist() == ds[int(va[2])]["numbers"].tolist()
    nested = sub.subset([1, 3])
    assert nested[1]["coord"].tolist() == ds[int(va[3])]["coord"].tolist()
    assert np.array_equal(sub.energies(), ds.energies()[va])
    only_h = SizeGroupedDataset(write_h5(tmp_path / "h.h5", {2: {"coord": spread(2, 2),
                                                                  "numbers": [[1, 1], [1, 8]],
                                                                  "charge": [0, 0], "energy": [-1.0, -2.0]}}))
    assert only_h.subset([0]).elements == [1] and only_h.subset([0]).element_counts().tolist() == [[2]]


def _bad_cases(tmp):
    good = make_groups((3,), 4, labels=("forces",), seed=5)[3]

    def file_with(name, **changes):
        g = {k: v.copy() for k, v in good.items()}
        for k, v in changes.items():
            if v is None:
                g.pop(k)
            else:
                g[k] = v
        return write_h5(tmp / f"{name}.h5", {3: g})

    nan_coord = good["coord"].copy()
    nan_coord[2, 1, 0] = np.nan
    nan_coord[3, 0, 0] = np.inf
    inf_e = good["energy"].copy()
    inf_e[1] = np.inf
    nan_f = good["forces"].copy()
    nan_f[0, 0, 2] = np.nan
    zero_z = good["numbers"].copy()
    zero_z[1, 2] = 0
    big_z = good["numbers"].copy()
    big_z[0, 0] = 119
    (tmp / "text.h5").write_text("not hdf5\n")
    with h5py.File(tmp / "empty.h5", "w"):
        pass
    write_h5(tmp / "nomol.h5", {3: {"coord": np.zeros((0, 3, 3)), "numbers": np.zeros((0, 3)),
                                    "charge": np.zeros(0), "energy": np.zeros(0)}})
    write_h5(tmp / "badname.h5", {"abc": good})
    write_h5(tmp / "wrongcount.h5", {4: good})
    with h5py.File(tmp / "rootds.h5", "w") as f:
        f.create_dataset("coord", data=np.zeros((1, 3, 3)))
    return [
        (tmp / "missing.h5", ["missing.h5", "no such file"]),
        (tmp / "text.h5", ["text.h5", "not an HDF5 file"]),
        (tmp / "empty.h5", ["empty.h5", "no groups"]),
        (tmp / "nomol.h5", ["nomol.h5", "no molecules"]),
        (tmp / "badname.h5", ["badname.h5", "group 'abc'", "not a positive integer"]),
        (tmp / "wrongcount.h5", ["wrongcount.h5", "group '4'", "key 'coord'", "group name says 4"]),
        (tmp / "rootds.h5", ["rootds.h5", "'coord'", "not a group"]),
        (file_with("noenergy", energy=None), ["noenergy.h5", "group '3'", "energy", "missing"]),
        (file_with("nonumbers", numbers=None), ["nonumbers.h5", "group '3'", "numbers", "missing"]),
        (file_with("rank", coord=good["coord"][:, :, :2]), ["rank.h5", "group '3'", "key 'coord'", "shape"]),
        (file_with("fshape", forces=good["forces"][:, :, 0]), ["fshape.h5", "group '3'", "key 'forces'", "shape"]),
        (file_with("eshape", energy=good["energy"][:, None]), ["eshape.h5", "key 'energy'", "shape"]),
        (file_with("length", energy=good["energy"][:3]), ["length.h5", "group '3'", "key 'energy'", "3 molecules"]),
        (file_with("nanc", coord=nan_coord), ["nanc.h5", "group '3'", "key 'coord'", "2 non-finite", "row 2"]),
        (file_with("infe", energy=inf_e), ["infe.h5", "group '3'", "key 'energy'", "1 non-finite", "row 1"]),
        (file_with("nanf", forces=nan_f), ["nanf.h5", "group '3'", "key 'forces'", "non-finite", "row 0"]),
        (file_with("zeroz", numbers=zero_z), ["zeroz.h5", "group '3'", "key 'numbers'", "padding", "row 1"]),
        (file_with("bigz", numbers=big_z), ["bigz.h5", "group '3'", "key 'numbers'", "119"]),
        (file_with("floatz", numbers=good["numbers"].astype(np.float32)), ["floatz.h5", "key 'numbers'", "integer"]),
        (file_with("badmult", mult=np.zeros(4)), ["badmult.h5", "key 'mult'", ">= 1"]),
    ]


def test_bad_input_errors(tmp_path):
    for path, needles in _bad_cases(tmp_path):
        # floatz: write_h5 casts numbers; rewrite with floats directly
        if path.name == "floatz.h5":
            with h5py.File(path, "a") as f:
                arr = f["3/numbers"][()].astype(np.float32)
                del f["3/numbers"]
                f["3"].create_dataset("numbers", data=arr)
        with pytest.raises(DataError) as exc:
            SizeGroupedDataset(path)
        msg = str(exc.value)
        for needle in needles:
            assert needle in msg, (path.name, msg)


# ---------------------------------------------------------------------------------------------
# SAE
# ---------------------------------------------------------------------------------------------
def _sae_file(tmp_path, n=300, outliers=((5, 4.0), (40, -6.0), (77, 9.0), (123, 3.0)), seed=7):
    groups = make_groups((4, 6, 9, 12), n // 4, sae=SAE0, seed=seed, noise=1e-3)
    flat = [(na, r) for na in groups for r in range(n // 4)]
    for idx, delta in outliers:
        na, r = flat[idx]
        groups[na]["energy"][r] += delta
    return write_h5(tmp_path / "sae.h5", groups)


def test_fit_sae_recovers_values_despite_outliers(tmp_path):
    ds = SizeGroupedDataset(_sae_file(tmp_path))
    fit = fit_sae_details(ds)
    assert set(fit.sae) == set(SAE0)
    for z, v in SAE0.items():
        assert abs(fit.sae[z] - v) < 2e-3, (z, fit.sae[z], v)
    assert fit.n_used < fit.n_molecules and fit.rmse < 5e-3
    plain = fit_sae(ds, trim=None)  # without trimming the outliers pull the fit away
    assert max(abs(plain[z] - v) for z, v in SAE0.items()) > 2e-3
    # list of datasets == concatenation
    assert fit_sae([ds.subset(range(150)), ds.subset(range(150, 300))]) == pytest.approx(fit.sae, abs=1e-9)


def test_fit_sae_keeps_rare_element(tmp_path, caplog):
    groups = make_groups((5,), 200, sae=SAE0, elements=[1, 6, 8], seed=11, noise=1e-3)
    rare = {"coord": spread(2, 5), "numbers": [[16, 1, 1, 6, 8], [16, 16, 1, 1, 8]],
            "charge": [0, 0], "energy": [0.0, 0.0]}
    e_s = -10831.5
    rare["energy"] = [sum(SAE0.get(z, e_s) for z in row) for row in rare["numbers"]]
    rare["energy"][0] += 7.0   # both rare molecules are gross outliers of the first fit
    rare["energy"][1] -= 7.0
    groups[5] = {k: np.concatenate([groups[5][k], np.asarray(rare[k], dtype=groups[5][k].dtype)])
                 for k in groups[5]}
    ds = SizeGroupedDataset(write_h5(tmp_path / "rare.h5", groups))
    with caplog.at_level(logging.WARNING, logger="aimnet2mult.data.sae"):
        fit = fit_sae_details(ds)
    assert 16 in fit.sae and fit.kept_for_elements == [16]
    assert any("S (Z=16)" in r.getMessage() and "keeping" in r.getMessage() for r in caplog.records)
    for z in (1, 6, 8):  # the two kept (inconsistent) molecules pull the fit only slightly
        assert abs(fit.sae[z] - SAE0[z]) < 0.02
    assert 7 not in fit.sae  # absent element is not in the result


def test_sae_file_format_and_errors(tmp_path):
    path = write_sae({6: -1029.4761234, 1: -13.587234}, tmp_path / "s.yaml")
    assert path.read_text() == "1: -13.587234\n6: -1029.476123\n"
    assert read_sae(path) == {1: -13.587234, 6: -1029.476123}
    (tmp_path / "sym.yaml").write_text("H: -13.5\nC: -1029.0\n8: -2041\n")
    assert read_sae(tmp_path / "sym.yaml") == {1: -13.5, 6: -1029.0, 8: -2041.0}
    cases = {"missing.yaml": None, "bad.yaml": "1: [1, 2\n", "list.yaml": "- 1\n- 2\n", "empty.yaml": "",
             "xx.yaml": "Xx: -1.0\n", "val.yaml": "1: abc\n", "dup.yaml": "1: -1.0\nH: -2.0\n",
             "z0.yaml": "0: -1.0\n", "nan.yaml": "1: .nan\n"}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(SAEError) as exc:
            read_sae(tmp_path / name)
        assert name in str(exc.value)
        assert isinstance(exc.value, DataError)
    with pytest.raises(SAEError, match="'Xx'"):
        read_sae(tmp_path / "xx.yaml")


def test_calc_sae_cli(tmp_path, capsys):
    data = _sae_file(tmp_path)
    out = tmp_path / "out" / "sae_fid0.yaml"
    assert calc_sae.main([str(data), str(out)]) == 0
    lines = out.read_text().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["1", "6", "7", "8"]
    assert all(re.fullmatch(r"\d+: -?\d+\.\d{6}", ln) for ln in lines)
    printed = capsys.readouterr().out
    assert "H" in printed and "C" in printed and "-1029.47" in printed
    assert calc_sae.main([str(tmp_path / "nope.h5"), str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope.h5" in err and "\n" not in err
    assert not (tmp_path / "x.yaml").exists()
    proc = subprocess.run([sys.executable, "-m", "aimnet2mult.train.calc_sae", str(tmp_path / "nope.h5"),
                           str(tmp_path / "x.yaml")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# mixed dataset, sampler, collate
# ---------------------------------------------------------------------------------------------
def _two_fidelities(tmp_path, n0=6, n1=6):
    d0 = SizeGroupedDataset(make_file(tmp_path / "f0.h5", sizes=(3, 5), n_per=n0, labels=("forces", "charges"),
                                      seed=1, noise=0.1))
    d1 = SizeGroupedDataset(make_file(tmp_path / "f1.h5", sizes=(4,), n_per=n1, sae=SAE1, seed=2, noise=0.1))
    return d0, d1


def test_mixed_dataset_residuals_and_checks(tmp_path):
    d0, d1 = _two_fidelities(tmp_path)
    mixed = MixedFidelityDataset({1: d1, 0: d0}, {0: SAE0, 1: SAE1})
    assert len(mixed) == 18
    assert mixed.fidelity_of.tolist() == [0] * 12 + [1] * 6
    assert mixed.n_atoms.tolist() == d0.n_atoms.tolist() + d1.n_atoms.tolist()
    assert mixed.indices_of(1).tolist() == list(range(12, 18))
    for i in range(len(mixed)):
        it = mixed[i]
        f, j = (0, i) if i < 12 else (1, i - 12)
        raw = (d0, d1)[f][j]
        sae = (SAE0, SAE1)[f]
        assert it["fidelity"] == f and it["energy"].dtype == np.float64
        assert float(it["energy"]) == pytest.approx(float(raw["energy"]) - sum(sae[int(z)] for z in raw["numbers"]),
                                                    abs=1e-9)
        assert abs(float(it["energy"])) < 1.0  # the synthetic residual is only the noise
    assert np.allclose(mixed.residual_energies(0), [float(mixed[i]["energy"]) for i in range(12)])
    with pytest.raises(DataError) as exc:
        MixedFidelityDataset({0: d0, 1: d1}, {0: SAE0, 1: {1: -13.1, 6: -1027.9}}, sae_sources={1: "sae_fid1.yaml"})
    msg = str(exc.value)
    assert "O (Z=8)" in msg and "fidelity 1" in msg and "sae_fid1.yaml" in msg
    with pytest.raises(DataError, match="missing fidelity 1"):
        MixedFidelityDataset({0: d0, 2: d1}, {0: SAE0, 2: SAE1})


def _sampler_data(n_per_fid=400, sizes=(3, 8, 20)):
    rng = np.random.default_rng(0)
    fid = np.repeat([0, 1], n_per_fid)
    natoms = rng.choice(sizes, size=2 * n_per_fid)
    return fid, natoms


@pytest.mark.parametrize("weights,expected", [({0: 3, 1: 1}, 0.75), ({0: 1, 1: 1}, 0.50), ({0: 3.0}, 0.75),
                                              ({0: 0.2, 1: 0.6}, 0.25)])
def test_sampler_fidelity_fractions(weights, expected):
    fid, natoms = _sampler_data()
    s = MixedFidelityBatchSampler(fid, natoms, weights, batch_size=32, batches_per_epoch=200, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 200
    flat = np.concatenate(batches)
    assert abs(np.mean(fid[flat] == 0) - expected) < 0.03
    mixed = sum(len(set(fid[b].tolist())) == 2 for b in batches)
    assert mixed > 150  # batches mix fidelities
    # each fidelity's stream is a reshuffled permutation: usage is even across molecules
    c = Counter(flat[fid[flat] == 1].tolist())
    assert max(c.values()) - min(c.values()) <= 1


def test_sampler_atoms_mode_budget_and_one_pass():
    fid, natoms = _sampler_data(sizes=(3, 8, 20, 70))
    s = MixedFidelityBatchSampler(fid, natoms, {0: 1, 1: 1}, batch_size=64, batch_mode="atoms", seed=2)
    batches = list(s)
    assert len(batches) == len(s)
    for b in batches:
        padded = len(b) * natoms[b].max()
        assert padded <= 64 or len(b) == 1
    assert any(len(b) == 1 and natoms[b[0]] == 70 for b in batches)  # oversize molecule alone
    n_mol = sum(len(b) for b in batches)
    assert 0.8 * len(fid) < n_mol < 1.2 * len(fid)  # about one pass
    s.set_epoch(5)
    assert len(list(s)) == len(batches)  # same length every epoch


def test_sampler_molecules_one_pass_and_determinism():
    fid, natoms = _sampler_data(n_per_fid=50)
    s = MixedFidelityBatchSampler(fid, natoms, None, batch_size=8, seed=3)
    assert len(s) == 13  # ceil(100 / 8)
    s.set_epoch(4)
    a = list(s)
    b = list(s)          # next epoch without set_epoch: different
    s.set_epoch(4)
    c = list(s)
    assert a == c and a != b
    t = MixedFidelityBatchSampler(fid, natoms, None, batch_size=8, seed=3)
    t.set_epoch(4)
    assert list(t) == a
    u = MixedFidelityBatchSampler(fid, natoms, None, batch_size=8, seed=4)
    u.set_epoch(4)
    assert list(u) != a


def test_sampler_ranks_disjoint():
    fid = np.zeros(96, dtype=int)  # one fidelity, one pass = a permutation
    natoms = np.full(96, 5)
    full = MixedFidelityBatchSampler(fid, natoms, None, batch_size=8, seed=5)
    ranks = [MixedFidelityBatchSampler(fid, natoms, None, batch_size=8, seed=5, num_replicas=3, rank=r)
             for r in range(3)]
    for s in ranks + [full]:
        s.set_epoch(2)
    parts = [list(s) for s in ranks]
    assert [len(p) for p in parts] == [4, 4, 4] == [len(s) for s in ranks]
    sets = [set(i for b in p for i in b) for p in parts]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == set(range(96))
    assert sorted(b for p in parts for b in map(tuple, p)) == sorted(map(tuple, full))
    # unequal split: every rank still gets the same count
    two = [MixedFidelityBatchSampler(fid, natoms, None, batch_size=8, seed=5, num_replicas=5, rank=r) for r in range(5)]
    assert len({len(list(s)) for s in two}) == 1


@pytest.mark.parametrize("mode,size", [("molecules", 7), ("atoms", 40)])
def test_validation_sampler_visits_every_molecule_once(mode, size):
    fid, natoms = _sampler_data(n_per_fid=37)
    s = MixedFidelityBatchSampler(fid, natoms, {0: 5}, batch_size=size, batch_mode=mode, shuffle=False)
    batches = list(s)
    assert len(batches) == len(s)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(fid)))
    assert all(len(set(fid[b].tolist())) == 1 for b in batches)  # fidelity by fidelity
    assert fid[flat].tolist() == sorted(fid[flat].tolist())
    assert list(s) == batches
    shares = [MixedFidelityBatchSampler(fid, natoms, None, batch_size=size, batch_mode=mode, shuffle=False,
                                        num_replicas=2, rank=r) for r in range(2)]
    got = sorted(i for sh in shares for b in sh for i in b)
    assert got == list(range(len(fid)))


def test_sampler_bad_weights():
    fid, natoms = _sampler_data(n_per_fid=10)
    for w in ({0: 0, 1: 0}, {1: -1.0}, {2: 1.0}, {0: "x"}, {0: float("nan")}):
        with pytest.raises(ValueError):
            MixedFidelityBatchSampler(fid, natoms, w, batch_size=4)
    # weight 0: validation only, never drawn for training
    sampler = MixedFidelityBatchSampler(fid, natoms, {0: 0}, batch_size=4, batches_per_epoch=20)
    drawn = np.concatenate(list(iter(sampler)))
    assert len(drawn) == 80 and not (np.asarray(fid)[drawn] == 0).any()
    with pytest.raises(ValueError):
        MixedFidelityBatchSampler(fid, natoms, None, batch_size=4, batch_mode="graphs")
    with pytest.raises(ValueError):
        MixedFidelityBatchSampler(fid, natoms, None, batch_size=0)


def test_collate_masks_and_padding(tmp_path):
    d0, d1 = _two_fidelities(tmp_path)
    mixed = MixedFidelityDataset({0: d0, 1: d1}, {0: SAE0, 1: SAE1})
    idx = [12, 0, 8, 13]  # fid1 (4 atoms), fid0 (3 atoms, forces+charges), fid0 (5 atoms), fid1
    items = [mixed[i] for i in idx]
    b = collate(items)
    assert set(b) == {"coord", "numbers", "charge", "mult", "energy", "fidelity", "forces", "forces_mask",
                      "charges", "charges_mask"}
    assert b["coord"].shape == (4, 5, 3) and b["coord"].dtype == torch.float32
    assert b["numbers"].dtype == torch.int64 and b["energy"].dtype == torch.float64
    assert b["charge"].dtype == torch.float32 and b["mult"].dtype == torch.float32
    assert b["fidelity"].tolist() == [1, 0, 0, 1] and b["fidelity"].dtype == torch.int64
    assert b["forces_mask"].tolist() == [False, True, True, False] and b["forces_mask"].dtype == torch.bool
    assert b["charges_mask"].tolist() == [False, True, True, False]
    assert (b["numbers"][0, 4] == 0) and (b["numbers"][1, 3:] == 0).all()
    assert (b["coord"][1, 3:] == 0).all() and (b["forces"][1, 3:] == 0).all()
    assert (b["forces"][0] == 0).all() and (b["charges"][3] == 0).all()
    np.testing.assert_array_equal(b["forces"][1, :3].numpy(), items[1]["forces"])
    np.testing.assert_array_equal(b["charges"][2].numpy(), items[2]["charges"])
    assert b["energy"][0].item() == float(items[0]["energy"])
    only1 = collate([mixed[12], mixed[13]])
    assert "forces" not in only1 and "forces_mask" not in only1 and "charges" not in only1


def test_dataloader_workers_lazy(tmp_path):
    d0, d1 = _two_fidelities(tmp_path, n0=20, n1=20)
    mixed = MixedFidelityDataset({0: d0, 1: d1}, {0: SAE0, 1: SAE1})
    mixed[0]  # open the HDF5 handle in the parent before the workers fork

    def run(workers):
        s = MixedFidelityBatchSampler(mixed.fidelity_of, mixed.n_atoms, {0: 2, 1: 1}, batch_size=6, seed=9)
        s.set_epoch(1)
        dl = DataLoader(mixed, batch_sampler=s, collate_fn=collate, num_workers=workers,
                        persistent_workers=workers > 0)
        return list(dl)

    a, b = run(0), run(2)
    assert len(a) == len(b) == 10
    assert all(batches_equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------
# build_loaders
# ---------------------------------------------------------------------------------------------
def _cfg(files, **extra):
    cfg = {"fidelity_datasets": {str(k): str(v) for k, v in files.items()}, "val_fraction": 0.25,
           "samplers": {"train": {"kwargs": {"batch_size": 4}}, "val": {"kwargs": {"batch_size": 5}}}}
    cfg.update(extra)
    return cfg


def test_build_loaders_end_to_end(tmp_path, monkeypatch):
    make_file(tmp_path / "f0.h5", sizes=(3, 5), n_per=8, labels=("forces", "charges"), seed=1, noise=0.05)
    make_file(tmp_path / "f1.h5", sizes=(4, 6), n_per=6, sae=SAE1, seed=2, noise=0.05)
    write_sae(SAE1, tmp_path / "sae1.yaml")
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the working directory
    cfg = _cfg({0: "f0.h5", 1: "f1.h5"}, fidelity_weights={"0": 2.0},
               sae={"energy": {"files": {1: "sae1.yaml"}}})
    train, val, info = build_loaders(cfg, seed=0, fidelity_offset=200)
    assert info["files"] == {0: str(tmp_path / "f0.h5"), 1: str(tmp_path / "f1.h5")}
    assert info["n_train"] == {0: 12, 1: 9} and info["n_val"] == {0: 4, 1: 3}
    assert info["sae_sources"] == {0: "fitted", 1: str(tmp_path / "sae1.yaml")}
    assert info["sae"][1] == SAE1
    assert all(abs(info["sae"][0][z] - SAE0[z]) < 0.2 for z in SAE0)
    assert info["labels"] == {0: ["charges", "forces"], 1: []}
    assert info["elements"] == {0: [1, 6, 7, 8], 1: [1, 6, 8]}
    assert info["weights"] == {0: 2.0, 1: 1.0}
    batches = list(train)
    assert len(batches) == len(train) == 6   # ceil(21 / 4)
    for b in batches:
        assert b["coord"].shape[0] == 4
        if "forces_mask" in b:
            assert b["forces_mask"].tolist() == (b["fidelity"] == 0).tolist()
        assert (b["energy"].abs() < 2.0).all()  # residual energies
    vb = list(val)
    seen = Counter(int(f) for b in vb for f in b["fidelity"])
    assert seen == {0: 4, 1: 3}
    # same seed -> same split and batches
    train2, _, info2 = build_loaders(cfg, seed=0, fidelity_offset=200)
    assert info2 == info and all(batches_equal(x, y) for x, y in zip(batches, train2))


def test_build_loaders_separate_validation_and_no_val(tmp_path):
    f0 = make_file(tmp_path / "f0.h5", sizes=(3,), n_per=5, labels=("forces",), seed=1)
    f1 = make_file(tmp_path / "f1.h5", sizes=(4,), n_per=4, sae=SAE1, seed=2)
    v0 = make_file(tmp_path / "v0.h5", sizes=(6,), n_per=3, labels=("forces",), seed=3, elements=[1, 6])
    train, val, info = build_loaders(_cfg({0: f0, 1: f1}, val_fidelity_datasets={0: str(v0)},
                                          samplers={"train": {"kwargs": {"batch_mode": "atoms", "batch_size": 16}}}),
                                     seed=1, fidelity_offset=200)
    assert info["n_train"] == {0: 5, 1: 3} and info["n_val"] == {0: 3, 1: 1}
    assert info["val_files"] == {0: str(v0), 1: None}
    assert sorted(int(f) for b in val for f in b["fidelity"]) == [0, 0, 0, 1]
    for b in train:
        assert b["numbers"].numel() <= 16 or b["numbers"].shape[0] == 1
    train, val, info = build_loaders(_cfg({0: f0}, val_fraction=0.0), seed=1, fidelity_offset=200)
    assert val is None and info["n_val"] == {0: 0} and info["n_train"] == {0: 5}
    tiny = make_file(tmp_path / "tiny.h5", sizes=(2,), n_per=2, seed=4, elements=[1])
    train, val, info = build_loaders(_cfg({0: tiny}, val_fraction=0.1), seed=1, fidelity_offset=200)
    assert info["n_train"] == {0: 1} and info["n_val"] == {0: 1}
    assert len(list(train)) == 1 and len(list(val)) == 1


def test_build_loaders_errors(tmp_path):
    f0 = make_file(tmp_path / "f0.h5", sizes=(3,), n_per=5, seed=1)
    f1 = make_file(tmp_path / "f1.h5", sizes=(3,), n_per=5, seed=2, sae=SAE1)
    with pytest.raises(DataError, match="missing fidelity 1"):
        build_loaders(_cfg({0: f0, 2: f1}), seed=0, fidelity_offset=200)
    (tmp_path / "sae0.yaml").write_text("1: -13.5\n6: -1029.0\n8: -2041.0\n")  # no nitrogen
    with pytest.raises(DataError) as exc:
        build_loaders(_cfg({0: f0}, sae={"energy": {"files": {"0": str(tmp_path / "sae0.yaml")}}}),
                      seed=0, fidelity_offset=200)
    assert "N (Z=7)" in str(exc.value) and "fidelity 0" in str(exc.value) and "sae0.yaml" in str(exc.value)
    with pytest.raises(DataError, match="fidelity_offset=7"):
        build_loaders(_cfg({0: f0}), seed=0, fidelity_offset=7)
    with pytest.raises(DataError, match="no such file"):
        build_loaders(_cfg({0: tmp_path / "nope.h5"}), seed=0, fidelity_offset=200)
    with pytest.raises(DataError, match="no training data"):
        build_loaders(_cfg({0: f0}, val_fidelity_datasets={3: str(f1)}), seed=0, fidelity_offset=200)
    with pytest.raises(ValueError, match="fidelity_weights"):
        build_loaders(_cfg({0: f0}, fidelity_weights={0: 0.0}), seed=0, fidelity_offset=200)
    with pytest.raises(ValueError, match="batch_sise"):
        build_loaders(_cfg({0: f0}, samplers={"train": {"kwargs": {"batch_sise": 3}}}), seed=0, fidelity_offset=200)


def test_build_loaders_rare_elements_and_validation_only_element(tmp_path, caplog):
    groups = make_groups((3,), 30, seed=6, elements=[1, 6, 8])
    groups[4] = {"coord": spread(1, 4).astype(np.float32), "numbers": [[16, 1, 1, 8]], "charge": [0.0],
                 "energy": [-12900.0]}
    f0 = write_h5(tmp_path / "rare.h5", groups)
    with caplog.at_level(logging.INFO, logger="aimnet2mult.data.loaders"):
        for seed in range(4):  # wherever the split puts the sulfur molecule, it ends up in training
            _, _, info = build_loaders(_cfg({0: f0}, val_fraction=0.5), seed=seed, fidelity_offset=200)
            assert 16 in info["sae"][0] and info["n_train"][0] + info["n_val"][0] == 31
    v0 = make_file(tmp_path / "v0.h5", sizes=(3,), n_per=2, seed=7, elements=[1, 9], sae={1: -13.5, 9: -2700.0})
    with pytest.raises(DataError) as exc:
        build_loaders(_cfg({0: f0}, val_fidelity_datasets={0: str(v0)}), seed=0, fidelity_offset=200)
    msg = str(exc.value)
    assert "F (Z=9)" in msg and "fidelity 0" in msg and "v0.h5" in msg and "fitted" in msg


def test_dataset_pickles_for_spawned_workers(tmp_path):
    import pickle

    ds = SizeGroupedDataset(make_file(tmp_path / "d.h5", seed=8))
    first = ds[3]
    clone = pickle.loads(pickle.dumps(ds.subset([3, 4])))
    np.testing.assert_array_equal(clone[0]["coord"], first["coord"])


def test_corrupted_chunk_names_file_group_and_key(tmp_path):
    """A damaged gzip chunk (bytes overwritten on disk) gives an error naming file, group and key,
    both when the file is validated and when a lazy read hits it later."""
    path = tmp_path / "corrupt.h5"
    n = 2000
    coord = spread(n, 3) + np.random.default_rng(0).normal(0, 0.01, (n, 3, 3))
    with h5py.File(path, "w") as f:
        g = f.create_group("3")
        g.create_dataset("coord", data=coord, chunks=(100, 3, 3), compression="gzip")
        g.create_dataset("numbers", data=np.tile([8, 1, 1], (n, 1)))
        g.create_dataset("charge", data=np.zeros(n))
        g.create_dataset("energy", data=np.full(n, -2000.0))
        offset = g["coord"].id.get_chunk_info(5).byte_offset
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[offset:offset + 40] = b"\0" * 40
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=f"{path}: group '3': key 'coord': rows 0..1999 cannot be read"):
        SizeGroupedDataset(path)
    path.write_bytes(good)
    ds = SizeGroupedDataset(path)  # validated while intact, damaged afterwards
    ds.close()
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=f"{path}: group '3': key 'coord': row 500 cannot be read"):
        ds[500]
