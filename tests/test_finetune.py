"""Fine-tuning to a new level of theory (aimnet2mult/train/finetune.py): the added fidelity's start,
the untouched source fidelities, replay pseudo-labels, the frozen strategy, bad input, and a run
from the official AIMNet2 member whose exported files keep its D3(BJ)."""

import argparse

import numpy as np
import pytest
import synthetic
import torch
from helpers import small_checkpoint

from aimnet2mult.checkpoint import load_checkpoint, save_checkpoint
from aimnet2mult.data.h5dataset import SizeGroupedDataset
from aimnet2mult.export import build_potential, export_potential, load_potential
from aimnet2mult.train import finetune

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["trainer.epochs=1", "data.samplers.train.kwargs.batches_per_epoch=3", "data.samplers.train.kwargs.batch_size=8"]


def _args(tmp_path, source, strategy="replay", **kw):
    ns = dict(load=str(source), data=str(tmp_path / "new.h5"), val=str(tmp_path / "new_val.h5"), name="newlevel",
              save=str(tmp_path / f"ft_{strategy}.pt"), from_fidelity="0", strategy=strategy, replay_pool=[],
              replay_weight=0.5, dispersion="none", labels_include_dispersion=False, workdir=None, config=[],
              no_progress=True, overwrite=False, overrides=list(FAST))
    ns.update(kw)
    return argparse.Namespace(**ns)


@pytest.fixture()
def setup(tmp_path):
    ckpt, _ = small_checkpoint(2, seed=8)
    # the source's fidelity 0 was never trained on N: the new data's N must start from C's row
    ckpt["fidelities"][0]["elements"] = [z for z in ckpt["fidelities"][0]["elements"] if z != 7]
    ckpt["fidelities"][0]["sae"].pop(7, None)
    source = save_checkpoint(ckpt, tmp_path / "source.pt")
    synthetic.write_h5(tmp_path / "new.h5", synthetic.make_samples(40, seed=31, scale=1.3), labels=("forces",))
    synthetic.write_h5(tmp_path / "new_val.h5", synthetic.make_samples(12, seed=32, scale=1.3), labels=("forces",))
    return tmp_path, source, ckpt


def _inputs(path, n=16):
    ds = SizeGroupedDataset(path, in_memory=True)
    out = []
    for i in range(min(n, len(ds))):
        s = ds[i]
        out.append((s, {"coord": torch.tensor(s["coord"], dtype=torch.float64), "numbers": torch.tensor(s["numbers"]),
                        "charge": torch.tensor([float(s["charge"])], dtype=torch.float64)}))
    ds.close()
    return out


def test_initial_model_copies_the_source_and_starts_the_new_fidelity_from_it(setup):
    tmp_path, source, ckpt = setup
    prepared = finetune.prepare(_args(tmp_path, source))
    init = load_checkpoint(prepared["initial"])
    assert [f["name"] for f in init["fidelities"]] == ["level0", "level1", "newlevel"]
    assert init["fidelities"][0]["sae"] == ckpt["fidelities"][0]["sae"]
    for k in (0, 1):
        before, after = build_potential(ckpt, k), build_potential(init, k)
        for s, inp in _inputs(tmp_path / "new_val.h5", 12):
            if not set(int(z) for z in s["numbers"]) <= set(ckpt["fidelities"][k]["elements"]):
                continue
            flat = {key: (v.float() if v.is_floating_point() else v) for key, v in inp.items()}
            a, b = before(dict(flat)), after(dict(flat))
            assert torch.equal(a["energy"], b["energy"]) and torch.equal(a["forces"], b["forces"]), k
    src, new = build_potential(ckpt, 0).double(), build_potential(init, 2).double()
    sae_src = {int(z): v for z, v in ckpt["fidelities"][0]["sae"].items()}
    sae_new = {int(z): v for z, v in init["fidelities"][2]["sae"].items()}
    emb = init["state_dict"]["backbone.embedding.weight"]
    off = init["model_config"]["fidelity_offset"]
    assert torch.equal(emb[2 * off + 7], emb[2 * off + 6])  # N from its nearest trained element, C
    residual = []
    for s, inp in _inputs(tmp_path / "new.h5", 40):
        e_new = float(new(dict(inp))["energy"][0])
        residual.append((s, float(s["energy"]) - e_new))
        if 7 in set(int(z) for z in s["numbers"]):
            continue  # N: the source fidelity has no row of its own to compare with
        delta = sum(sae_new[int(z)] - sae_src[int(z)] for z in s["numbers"])
        assert e_new == pytest.approx(float(src(dict(inp))["energy"][0]) + delta, abs=1e-6)
    # the SAE shift is the least-squares fit: its residuals are orthogonal to every element count
    zs = sorted(sae_new)
    counts = np.array([[list(s["numbers"]).count(z) for z in zs] for s, _ in residual], dtype=float)
    r = np.array([x for _, x in residual])
    assert np.abs(counts.T @ r).max() < 1e-8 * np.abs(counts).sum() * max(1.0, np.abs(r).max())


def test_replay_pseudo_labels_equal_the_loaded_models_predictions(setup):
    tmp_path, source, ckpt = setup
    prepared = finetune.prepare(_args(tmp_path, source))
    for k in (0, 1):
        pot = build_potential(ckpt, k, dispersion=None).double()
        file = prepared["workdir"] / f"replay_fid{k}.h5"
        items = _inputs(file, 40)
        supported = set(ckpt["fidelities"][k]["elements"])
        assert all(set(int(z) for z in s["numbers"]) <= supported for s, _ in items)
        for s, inp in items:
            out = pot(dict(inp))
            assert float(s["energy"]) == pytest.approx(float(out["energy"][0]), abs=1e-6)
            np.testing.assert_allclose(s["forces"], out["forces"].numpy(), atol=1e-6)
    n_new = len(SizeGroupedDataset(tmp_path / "new.h5"))
    n0 = len(SizeGroupedDataset(prepared["workdir"] / "replay_fid0.h5"))
    assert n0 < n_new == len(SizeGroupedDataset(prepared["workdir"] / "replay_fid1.h5"))  # fid 0: no N molecules
    cfg = prepared["train_config"]
    assert cfg["data"]["fidelity_weights"] == {0: 0.25, 1: 0.25, 2: 0.5}


def test_frozen_strategy_keeps_the_pretrained_fidelities_bit_identical(setup):
    tmp_path, source, ckpt = setup
    args = _args(tmp_path, source, "frozen", overrides=FAST + ["optimizer.kwargs.lr=1e-3"])
    assert finetune.run(args) == 0
    ft = load_checkpoint(args.save)
    init = load_checkpoint(tmp_path / "ft_frozen_finetune" / "initial.pt")
    moved = False
    for s, inp in _inputs(tmp_path / "new_val.h5", 12):
        flat = {key: (v.float() if v.is_floating_point() else v) for key, v in inp.items()}
        for k in (0, 1):
            if not set(int(z) for z in s["numbers"]) <= set(ckpt["fidelities"][k]["elements"]):
                continue
            a, b = build_potential(ckpt, k)(dict(flat)), build_potential(ft, k)(dict(flat))
            assert torch.equal(a["energy"], b["energy"]) and torch.equal(a["forces"], b["forces"]), k
        moved |= not torch.equal(build_potential(init, 2)(dict(flat))["energy"],
                                 build_potential(ft, 2)(dict(flat))["energy"])
    assert moved, "the new fidelity's readout did not train"
    assert ft["fidelities"][0]["elements"] == ckpt["fidelities"][0]["elements"]


def test_replay_and_no_replay_train(setup):
    tmp_path, source, _ = setup
    for strategy in ("replay", "no-replay"):
        args = _args(tmp_path, source, strategy)
        assert finetune.run(args) == 0
        cfg = finetune.prepare(_args(tmp_path, source, strategy))["train_config"]
        w = cfg["data"]["fidelity_weights"]
        assert (w[0], w[2]) == ((0.25, 0.5) if strategy == "replay" else (0.0, 1.0))


def test_bad_input_is_refused(setup, capsys):
    tmp_path, source, _ = setup
    assert finetune.run(_args(tmp_path, source, name="level1")) == 2
    assert "already has a fidelity of that name" in capsys.readouterr().err
    assert finetune.run(_args(tmp_path, source, overrides=FAST + ["fidelity_offset=300"])) == 2
    assert "keeps the source's fidelity_offset" in capsys.readouterr().err
    assert finetune.run(_args(tmp_path, source, replay_weight=1.0)) == 2
    assert "--replay-weight" in capsys.readouterr().err
    assert finetune.run(_args(tmp_path, source, from_fidelity="nope")) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "ft_replay.pt").exists()


def test_from_the_official_member_both_fidelities_export(tmp_path, wb97m_file):
    """The official wB97M-D3 member fine-tuned to the bundled B3LYP data (a few steps): both files
    load in ASE, the pretrained fidelity keeps its D3(BJ) parameters and stays close to the official."""
    from importlib import resources

    from ase.build import molecule

    from aimnet2mult import AIMNet2Mult
    from aimnet2mult.import_official import official_member_checkpoint

    data = resources.files("aimnet2mult.resources.data")
    args = argparse.Namespace(load=str(wb97m_file), data=str(data / "b3lyp_val.h5"), val=None, name="b3lyp",
                              save=str(tmp_path / "ft.pt"), from_fidelity="0", strategy="replay", replay_pool=[],
                              replay_weight=0.5, dispersion="b3lyp", labels_include_dispersion=False,
                              workdir=None, config=[], no_progress=True, overwrite=False,
                              overrides=["trainer.epochs=1", "data.samplers.train.kwargs.batches_per_epoch=2",
                                         "data.samplers.train.kwargs.batch_size=8"])
    assert finetune.run(args) == 0
    official = official_member_checkpoint(wb97m_file, 0)
    ft = load_checkpoint(tmp_path / "ft.pt")
    assert ft["fidelities"][0]["dispersion"] == official["fidelities"][0]["dispersion"]
    assert ft["fidelities"][0]["elements"] == official["fidelities"][0]["elements"]
    for key in ("labels_include_dispersion", "trained_outputs", "sae", "name"):
        assert ft["fidelities"][0][key] == official["fidelities"][0][key], key
    assert ft["fidelities"][1]["dispersion"]["method"] == "d3bj"
    atoms = molecule("CH3CH2OH")
    energies = []
    for k in (0, 1):
        path = export_potential(ft, k, tmp_path / f"ft_fid{k}.jpt")
        assert load_potential(path)[1]["dispersion"]["method"] == "d3bj"
        atoms.calc = AIMNet2Mult(str(path))
        energies.append(atoms.get_potential_energy())
    atoms.calc = AIMNet2Mult(export_potential(official, 0, tmp_path / "official.jpt"))
    assert abs(energies[0] - atoms.get_potential_energy()) < 0.5  # eV, after two small steps
    assert np.isfinite(energies[1])


def test_replay_warns_about_source_elements_no_replayed_molecule_contains(setup, caplog):
    tmp_path, source, ckpt = setup
    ckpt["fidelities"][1]["elements"] = [1, 6, 7, 8]
    no_oxygen = ["CH4", "NH3", "C2H4", "CH3CN"]
    synthetic.write_h5(tmp_path / "no_o.h5", synthetic.make_samples(8, seed=33, bases=no_oxygen), labels=("forces",))
    with caplog.at_level("WARNING", logger="aimnet2mult"):
        assert finetune.pseudo_label(ckpt, 1, [str(tmp_path / "no_o.h5")], tmp_path / "r1.h5") == 8
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "cover none of its elements O:" in warned[0] and "fidelity 1 ('level1')" in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="aimnet2mult"):  # a pool with water covers it
        finetune.pseudo_label(ckpt, 1, [str(tmp_path / "no_o.h5"), str(tmp_path / "new_val.h5")], tmp_path / "r2.h5")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_held_fidelities_keep_their_own_parameters_while_the_backbone_trains(setup):
    tmp_path, source, ckpt = setup
    held = ["optimizer.kwargs.lr=1e-3", "optimizer.hold_fidelities=[0,1]"]
    args = _args(tmp_path, source, "replay", overrides=FAST + held)
    assert finetune.run(args) == 0
    init = load_checkpoint(tmp_path / "ft_replay_finetune" / "initial.pt")["state_dict"]
    ft = load_checkpoint(args.save)["state_dict"]
    off = int(ckpt["model_config"]["fidelity_offset"])
    emb0, emb1 = init["backbone.embedding.weight"], ft["backbone.embedding.weight"]
    for k in (0, 1):  # the held fidelities' rows (row k * off, "element 0", is never read)
        assert torch.equal(emb0[k * off + 1:(k + 1) * off], emb1[k * off + 1:(k + 1) * off]), k
    assert not torch.equal(emb0[2 * off:], emb1[2 * off:])  # the new fidelity's rows trained
    readouts = ckpt["model_config"]["use_fidelity_readouts"]
    for name in init:
        if name.startswith(("readouts.0.", "readouts.1.")) and readouts:
            assert torch.equal(init[name], ft[name]), name
    assert not torch.equal(init["backbone.passes.0.0.weight"], ft["backbone.passes.0.0.weight"])


def test_hold_fidelities_refuses_what_does_not_exist(setup, capsys):
    tmp_path, source, _ = setup
    for value, message in (("[5]", "fidelities [5] do not exist (the model has 3)"),
                           ("[0,1,2]", "names every fidelity")):
        args = _args(tmp_path, source, "replay", overrides=FAST + [f"optimizer.hold_fidelities={value}"],
                     save=str(tmp_path / f"bad{len(value)}.pt"))
        assert finetune.run(args) != 0
        assert f"optimizer.hold_fidelities: {message}" in capsys.readouterr().err
