"""The multi-fidelity recipe's mechanics: one fidelity started from another (exact values), the
low-fidelity pretraining schedule, and outputs that were never trained (absent, refused)."""

import numpy as np
import pytest
import synthetic
import torch
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError
from helpers import small_checkpoint, small_model
from molecules import batch
from test_train import _train_api

from aimnet2mult import AIMNet2Mult
from aimnet2mult.checkpoint import load_checkpoint, save_checkpoint
from aimnet2mult.data.sampler import MixedFidelityBatchSampler
from aimnet2mult.export import export_potential, load_potential
from aimnet2mult.model_config import ConfigError
from aimnet2mult.train.fidelity_init import copy_fidelity, parse_schedule
from aimnet2mult.train.loss import MaskedMultiTaskLoss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(k):
    coord, numbers, charge = batch(["CH3CH2OH", "CH3Cl"])
    return {"coord": torch.as_tensor(coord, dtype=torch.float32), "numbers": torch.as_tensor(numbers),
            "charge": torch.as_tensor(charge, dtype=torch.float32), "fidelity": torch.full((2,), k)}


@pytest.mark.parametrize("readouts", [True, False])
def test_copy_fidelity_starts_target_equal_to_source(readouts):
    model, cfg = small_model(3, seed=4, use_fidelity_readouts=readouts)
    model.eval()
    off = cfg["fidelity_offset"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    e2_before = model(_inputs(2))["energy"].detach()
    assert not torch.equal(model(_inputs(0))["energy"], model(_inputs(1))["energy"])
    lines = copy_fidelity(model, target=0, source=1)
    assert any("embeddings copied from fidelity 1" in line for line in lines)
    emb = model.backbone.embedding.weight
    assert torch.equal(emb[1:off], before["backbone.embedding.weight"][off + 1:2 * off])
    assert torch.equal(emb[0], before["backbone.embedding.weight"][0])  # padding row untouched
    assert torch.equal(emb[2 * off:], before["backbone.embedding.weight"][2 * off:])  # fidelity 2 untouched
    if readouts:
        for (name, p0), (_, p1) in zip(model.readouts[0].named_parameters(), model.readouts[1].named_parameters()):
            assert torch.equal(p0, p1), name
        for name, p2 in model.readouts[2].named_parameters():
            assert torch.equal(p2, before[f"readouts.2.{name}"]), name
    else:
        shifts = model.readouts[0].shifts
        assert torch.equal(shifts[1:off], before["readouts.0.shifts"][off + 1:2 * off])
    # the target's residual energy now equals the source's, bit for bit; fidelity 2 unchanged
    e0, e1 = model(_inputs(0))["energy"], model(_inputs(1))["energy"]
    assert torch.equal(e0, e1)
    assert torch.equal(model(_inputs(2))["energy"].detach(), e2_before)


def test_per_fidelity_loss_weights_match_a_hand_computed_loss():
    torch.manual_seed(0)
    n_atoms = torch.tensor([3, 2, 2])
    numbers = torch.tensor([[6, 1, 1], [8, 1, 0], [7, 1, 0]])
    ref = {"numbers": numbers, "energy": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
           "fidelity": torch.tensor([0, 1, 0]), "forces": torch.randn(3, 3, 3),
           "forces_mask": torch.tensor([False, True, False])}
    pred = {"energy": torch.tensor([1.3, 1.8, 3.4], dtype=torch.float64), "forces": torch.randn(3, 3, 3)}
    e_err = ((pred["energy"] - ref["energy"]) / n_atoms) ** 2
    f_err = ((pred["forces"][1, :2] - ref["forces"][1, :2]) ** 2).mean()
    plain = MaskedMultiTaskLoss({"energy": {"weight": 1.0}, "forces": {"weight": 0.2}})
    weighted = MaskedMultiTaskLoss({"energy": {"weight": 1.0}, "forces": {"weight": 0.2}},
                                   {"0": {"energy": 50.0}, 1: {"forces": {"weight": 2.0}}})
    total, terms = plain(pred, ref)
    assert total.item() == pytest.approx(e_err.mean().item() + 0.2 * f_err.item(), rel=1e-6)
    total_w, terms_w = weighted(pred, ref)
    expect = (50.0 * e_err[0] + e_err[1] + 50.0 * e_err[2]) / 3 + 2.0 * f_err
    assert total_w.item() == pytest.approx(expect.item(), rel=1e-6)
    # the logged terms stay the unweighted means
    assert terms_w["energy"].item() == pytest.approx(terms["energy"].item(), rel=1e-12)
    for bad, message in [({"x": {"energy": 1.0}}, "not a fidelity index"), ({0: {"dipole": 1.0}}, "not a loss term"),
                         ({0: {"energy": -1.0}}, "finite number >= 0"), ({0: 3.0}, "must map loss terms")]:
        with pytest.raises(ValueError, match=message):
            MaskedMultiTaskLoss({"energy": {"weight": 1.0}}, bad)


def test_schedule_validation():
    assert parse_schedule({"pretrain_epochs": 2, "init_from": {"0": 1}}, 2, 5) == \
        {"pretrain_epochs": 2, "init_from": {0: 1}}
    assert parse_schedule(None, 2, 5) == {"pretrain_epochs": 0, "init_from": {}}
    for sched, msg in [({"pretrain_epochs": -1}, "non-negative integer"),
                       ({"pretrain_epochs": True}, "non-negative integer"),
                       ({"pretrain_epochs": 2}, "needs init_from"),
                       ({"init_from": {0: 3}}, "source fidelity 3 does not exist"),
                       ({"init_from": {0: 0}}, "cannot start from itself"),
                       ({"init_from": {0: 1, 1: 2}}, "both target and source"),
                       ({"pretrain_epochs": 5, "init_from": {0: 1}}, "must be smaller than trainer.epochs"),
                       ({"init_from": {"x": 1}}, "not a pair of fidelity indices")]:
        with pytest.raises(ConfigError, match=msg):
            parse_schedule(sched, 3, 5)


def test_sampler_pauses_the_target_during_pretraining():
    fid = np.array([0] * 10 + [1] * 40)
    s = MixedFidelityBatchSampler(fid, np.full(50, 5), batch_size=8, batches_per_epoch=20, seed=1,
                                  paused_until_epoch={0: 2})
    drawn = {}
    for epoch in (1, 2, 3):
        s.set_epoch(epoch)
        drawn[epoch] = np.concatenate([np.asarray(b) for b in s])
    assert not (fid[drawn[1]] == 0).any() and not (fid[drawn[2]] == 0).any()
    assert (fid[drawn[3]] == 0).mean() == pytest.approx(0.5, abs=0.12)  # equal weights again
    with pytest.raises(ConfigError, match="at least one must be drawn"):
        MixedFidelityBatchSampler(fid, np.full(50, 5), paused_until_epoch={0: 1, 1: 1})


def test_training_copies_at_the_end_of_pretraining(tmp_path):
    """With lr = 0 nothing but the schedule's copy changes the weights: after training, fidelity 0's
    embedding rows and readout equal fidelity 1's initial ones exactly; the target's molecules are
    drawn only after pretraining."""
    f0 = synthetic.write_h5(tmp_path / "a.h5", synthetic.make_samples(24, seed=10), labels=("forces",))
    f1 = synthetic.write_h5(tmp_path / "b.h5", synthetic.make_samples(24, seed=11, scale=1.2))
    extra = ["optimizer.kwargs.lr=0.0", "fidelity_schedule.pretrain_epochs=1", "fidelity_schedule.init_from.0=1",
             "use_fidelity_readouts=true", "scheduler.class=null", "scheduler.terminate_on_low_lr=null"]
    path = _train_api(tmp_path, {0: f0, 1: f1}, epochs=2, extra=extra)
    ckpt = load_checkpoint(path)
    sd = ckpt["state_dict"]
    off = ckpt["model_config"]["fidelity_offset"]
    emb = sd["backbone.embedding.weight"]
    assert torch.equal(emb[1:off], emb[off + 1:2 * off])
    for key in sd:
        if key.startswith("readouts.0."):
            assert torch.equal(sd[key], sd[key.replace("readouts.0.", "readouts.1.")]), key
    log = (tmp_path / "m_run" / "train.log").read_text()
    assert "fidelity_schedule (start of epoch 2): fidelity 0: element embeddings copied from fidelity 1" in log
    # outputs trained per fidelity follow the labels: fidelity 0 had no charges, fidelity 1 had
    assert ckpt["fidelities"][0]["trained_outputs"] == ["energy", "forces"]
    assert ckpt["fidelities"][1]["trained_outputs"] == ["energy", "forces", "charges"]


@pytest.fixture(scope="module")
def charges_on_fidelity1(tmp_path_factory):
    root = tmp_path_factory.mktemp("masked")
    ckpt, _ = small_checkpoint(2, seed=5, charges_trained=[1])
    return save_checkpoint(ckpt, root / "m.pt"), root


def test_untrained_charges_absent_from_export(charges_on_fidelity1):
    path, root = charges_on_fidelity1
    coord, numbers, charge = batch(["CH3CH2OH"])
    inp = {"coord": torch.as_tensor(coord, dtype=torch.float32), "numbers": torch.as_tensor(numbers)}
    m0, meta0 = load_potential(export_potential(path, 0, root / "f0.jpt"))
    m1, meta1 = load_potential(export_potential(path, 1, root / "f1.jpt"))
    assert meta0["trained_outputs"] == ["energy", "forces"] and "charges" not in meta0["outputs"]
    assert meta1["trained_outputs"] == ["energy", "forces", "charges"] and "charges" in meta1["outputs"]
    out0, out1 = m0(dict(inp)), m1(dict(inp))
    assert "charges" not in out0 and set(out0) >= {"energy", "forces"}
    assert out1["charges"].shape == numbers.shape
    # the flat layout says the same
    flat = {"coord": inp["coord"][0], "numbers": inp["numbers"][0]}
    assert "charges" not in m0(dict(flat)) and "charges" in m1(dict(flat))


@pytest.mark.parametrize("source", ["pt", "jpt"])
def test_calculator_refuses_untrained_charges_and_dipole(charges_on_fidelity1, source):
    path, root = charges_on_fidelity1
    model = path if source == "pt" else export_potential(path, 0, root / "calc_f0.jpt")
    atoms = molecule("CH3CH2OH")
    atoms.calc = AIMNet2Mult(model, fidelity=0)
    energy = atoms.get_potential_energy()
    assert np.isfinite(energy) and np.isfinite(atoms.get_forces()).all()
    with pytest.raises(PropertyNotImplementedError, match="fidelity 0 \\('level0'\\) was trained without charge "
                                                          "labels") as err:
        atoms.get_charges()
    if source == "pt":
        assert "fidelities trained for them: 1 ('level1')" in str(err.value)
    with pytest.raises(PropertyNotImplementedError, match="trained without charge labels"):
        atoms.get_dipole_moment()
    assert "charges" not in atoms.calc.results and "dipole" not in atoms.calc.results
    # the fidelity with charge labels reports them
    other = molecule("CH3CH2OH")
    other.calc = AIMNet2Mult(path, fidelity=1)
    assert other.get_charges().sum() == pytest.approx(0.0, abs=1e-4)
    assert np.isfinite(other.get_dipole_moment()).all()


def test_official_import_records_trained_charges(wb97m_file):
    from aimnet2mult.import_official import official_member_checkpoint

    ckpt = official_member_checkpoint(wb97m_file, 0)
    assert ckpt["fidelities"][0]["trained_outputs"] == ["energy", "forces", "charges"]


def test_legacy_checkpoint_without_record_reports_no_charges(tmp_path):
    ckpt, _ = small_checkpoint(1, seed=2)
    del ckpt["fidelities"][0]["trained_outputs"]  # as written before the record existed
    path = save_checkpoint(ckpt, tmp_path / "old.pt")
    atoms = molecule("H2O")
    atoms.calc = AIMNet2Mult(path, fidelity=0)
    atoms.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError, match="trained without charge labels"):
        atoms.get_charges()
