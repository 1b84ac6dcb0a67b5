"""Issue 19 reproductions: nothing silently wrong in the calculators' state handling."""

import numpy as np
import pytest
from ase.build import molecule
from helpers import small_checkpoint

from aimnet2mult import AIMNet2Mult
from aimnet2mult.checkpoint import save_checkpoint
from aimnet2mult.export import export_potential

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    ckpt, _ = small_checkpoint(3, seed=4)
    pt = save_checkpoint(ckpt, root / "m.pt")
    return {"pt": pt, "fid0": export_potential(pt, 0, root / "f0.jpt"),
            "fid1": export_potential(pt, 1, root / "f1.jpt"),
            "fid0b": export_potential(pt, 0, root / "f0b.jpt")}


def test_set_discards_cached_results(files):
    atoms = molecule("CH3CH2OH")
    atoms.calc = AIMNet2Mult(files["pt"], fidelity=0)
    e0 = atoms.get_potential_energy()
    atoms.calc.set(charge=1)
    e_cation = atoms.get_potential_energy()
    atoms.calc.set(fidelity=2)
    e_fid2 = atoms.get_potential_energy()
    ref = molecule("CH3CH2OH")
    ref.calc = AIMNet2Mult(files["pt"], fidelity=2, charge=1)
    assert e_cation != e0
    assert e_fid2 == pytest.approx(ref.get_potential_energy(), abs=1e-9)


@pytest.mark.parametrize("bad", [1.7, True, 1.0, [1]])
def test_fidelity_must_be_an_integer_or_name(files, bad):
    atoms = molecule("H2O")
    atoms.calc = AIMNet2Mult(files["pt"], fidelity=0)
    atoms.info["fidelity"] = bad
    with pytest.raises(ValueError, match="fidelity must be an integer index or a name"):
        atoms.get_potential_energy()
    with pytest.raises(ValueError, match="fidelity must be an integer index or a name"):
        AIMNet2Mult(files["pt"], fidelity=bad)
    with pytest.raises(ValueError, match="out of range"):
        AIMNet2Mult(files["pt"], fidelity=0).set(fidelity=7)
    atoms.info["fidelity"] = np.int64(1)  # numpy integers are integers
    assert np.isfinite(atoms.get_potential_energy())


def test_ensemble_of_different_fidelities_refused(files):
    with pytest.raises(ValueError, match="an ensemble must hold one fidelity"):
        AIMNet2Mult([files["fid1"], files["fid0"]])
    atoms = molecule("H2O")
    atoms.calc = AIMNet2Mult([files["fid0"], files["fid0b"]])
    atoms.get_potential_energy()
    assert atoms.calc.results["energy_std"] == pytest.approx(0.0, abs=1e-9)
    # checkpoints of several fidelities in one ensemble: the fidelity is the same for all
    mixed = molecule("H2O")
    mixed.calc = AIMNet2Mult([files["pt"], files["fid0"]], fidelity=0)
    assert np.isfinite(mixed.get_potential_energy())
    mixed.info["fidelity"] = 1
    with pytest.raises(ValueError, match="does not match this compiled single-fidelity potential"):
        mixed.get_potential_energy()


@pytest.mark.parametrize("override,message", [
    ("trainer.grad_clip=-1", "trainer.grad_clip must be > 0.0, got -1"),
    ("use_fidelity_readouts=maybe", "use_fidelity_readouts must be true or false, got 'maybe'"),
    ("use_fidelity_readouts='false'", "use_fidelity_readouts must be true or false, got 'false' \\(a string"),
    ("trainer.epochs=-2", "trainer.epochs must be >= 1, got -2"),
    ("trainer.epochs=0", "trainer.epochs must be >= 1, got 0"),
    ("checkpoint.n_saved=-1", "checkpoint.n_saved must be >= 1"),
    ("data.samplers.train.kwargs.batch_size=ten", "data.samplers.train.kwargs.batch_size must be an integer, "
                                                  "got 'ten'"),
    ("optimizer.kwargs.lr=fast", "optimizer.kwargs.lr must be a finite number, got 'fast'"),
    ("loss.kwargs.components.forces.weight=-0.1", "loss.kwargs.components.forces.weight must be >= 0.0"),
    ("data.val_fraction=1.5", "data.val_fraction must be < 1.0"),
    ("data.samplers.train.kwargs.batches_per_epoch=0", "batches_per_epoch must be >= 1 \\(or -1\\)"),
    ("seed=1.5", "seed must be an integer"),
])
def test_config_types_and_ranges_checked_at_load(tmp_path, override, message):
    from aimnet2mult.model_config import ConfigError
    from aimnet2mult.train.config import load_train_config

    base = ["data.fidelity_datasets.0=a.h5"]
    load_train_config([], base)  # the packaged defaults pass
    with pytest.raises(ConfigError, match=message):
        load_train_config([], base + [override])


def test_config_type_error_from_yaml_file(tmp_path):
    from aimnet2mult.model_config import ConfigError
    from aimnet2mult.train.config import load_train_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("use_fidelity_readouts: 'false'\ndata:\n  fidelity_datasets: {0: a.h5}\n"
                   "  samplers:\n    train:\n      kwargs:\n        batch_size: ten\n")
    with pytest.raises(ConfigError, match="use_fidelity_readouts must be true or false"):
        load_train_config([str(cfg)])


def _bundled(name):
    from importlib import resources
    from pathlib import Path

    return Path(str(resources.files("aimnet2mult.resources.data"))) / name


def test_commands_never_write_over_their_inputs(tmp_path, files, capsys):
    import shutil

    from ase.io import write

    from aimnet2mult.cli import main

    data = tmp_path / "mydata.h5"
    shutil.copy(_bundled("b3lyp_test.h5"), data)
    before = data.read_bytes()
    assert main(["sae", str(data), str(data)]) == 2
    assert "refusing to write" in capsys.readouterr().err
    assert main(["evaluate", str(data), "--model", str(files["pt"]), "--fidelity", "0", "--json", str(data)]) == 2
    assert "refusing to write" in capsys.readouterr().err
    assert data.read_bytes() == before
    xyz = tmp_path / "x.xyz"
    write(xyz, molecule("H2O"))
    structure = xyz.read_bytes()
    assert main(["md", str(xyz), "--model", str(files["pt"]), "--fidelity", "0", "--output", str(tmp_path / "x"),
                 "--steps", "2"]) == 2
    assert "refusing to write" in capsys.readouterr().err
    assert xyz.read_bytes() == structure
    # training: --save over a data file or its config; compile: --output over the checkpoint
    (tmp_path / "t.yaml").write_text("trainer:\n  epochs: 1\n")
    config = (tmp_path / "t.yaml").read_bytes()
    for save in (data, tmp_path / "t.yaml"):
        argv = ["train", "--config", str(tmp_path / "t.yaml"), "--save", str(save), f"data.fidelity_datasets.0={data}"]
        assert main(argv) == 2
        assert "refusing to write" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "t.yaml"), "--save", str(tmp_path / "t.pt"),
                 f"data.fidelity_datasets.0={data}", "--load", str(tmp_path / "t.pt")]) == 2
    assert "refusing to write" in capsys.readouterr().err
    assert (tmp_path / "t.yaml").read_bytes() == config and data.read_bytes() == before
    ckpt = tmp_path / "copy.pt"
    shutil.copy(files["pt"], ckpt)
    weights = ckpt.read_bytes()
    assert main(["compile", "--weights", str(ckpt), "--output", str(ckpt).replace(".pt", ".jpt"),
                 "--fidelity-level", "0"]) == 0
    capsys.readouterr()
    link = tmp_path / "link_fid0.jpt"
    link.symlink_to(ckpt)
    assert main(["compile", "--weights", str(ckpt), "--output", str(tmp_path / "link"), "--fidelity-level", "0"]) == 2
    assert "refusing to write" in capsys.readouterr().err
    assert ckpt.read_bytes() == weights
    assert main(["evaluate", str(data), "--model", str(files["pt"]), "--fidelity", "0", "--batch-size", "-3"]) == 2
    assert "--batch-size must be a positive integer" in capsys.readouterr().err


def test_written_files_follow_the_umask(tmp_path):
    import os
    import stat

    from aimnet2mult.io_utils import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_compiled_file_messages_and_edge_inputs(files):
    import torch

    from aimnet2mult.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from aimnet2mult.export import load_potential

    pot, _ = load_potential(files["fid0"])
    water = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    ref = pot({"coord": water[None], "numbers": torch.tensor([[8, 1, 1]])})["energy"]
    for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32):
        out = pot({"coord": water[None], "numbers": torch.tensor([[8, 1, 1]], dtype=dtype)})["energy"]
        assert torch.equal(out, ref), dtype
    with pytest.raises(Exception, match="the batch is empty"):
        pot({"coord": torch.zeros(0, 3, 3), "numbers": torch.zeros(0, 3, dtype=torch.long)})
    with pytest.raises(Exception) as err:
        pot({"coord": water, "numbers": torch.tensor([8, 1, 1]), "cell": torch.zeros(3, 3)})
    assert "'cell' is singular (volume 0" in str(err.value) and "{" not in str(err.value).splitlines()[-1]
    # a checkpoint with a NaN SAE is refused when written and when read
    ckpt = load_checkpoint(files["pt"])
    ckpt["fidelities"][0]["sae"][1] = float("nan")
    with pytest.raises(CheckpointError, match="SAE of element\\(s\\) H .*not a finite number"):
        save_checkpoint(ckpt, files["pt"].with_name("nan.pt"))
    assert not files["pt"].with_name("nan.pt").exists()


def _tiny_training(tmp_path, *extra, save="m.pt", wait=True):
    import subprocess
    import sys

    import synthetic
    import yaml
    from helpers import SMALL
    from test_train import small_train_yaml

    if not (tmp_path / "a.h5").exists():
        synthetic.write_h5(tmp_path / "a.h5", synthetic.make_samples(16, seed=1))
        small_train_yaml(tmp_path / "train.yaml", epochs=1)
        (tmp_path / "model.yaml").write_text(yaml.safe_dump(SMALL))
    cmd = [sys.executable, "-m", "aimnet2mult.train.cli", "--config", "train.yaml", "--model", "model.yaml",
           "--save", save, "data.fidelity_datasets.0=a.h5", "--no-progress", *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_second_run_into_the_same_save_is_refused_or_replaces(tmp_path):
    first = _tiny_training(tmp_path)
    assert first.returncode == 0, first.stderr
    model = (tmp_path / "m.pt").read_bytes()
    second = _tiny_training(tmp_path)
    assert second.returncode == 2 and "a previous run is there" in second.stderr and "--overwrite" in second.stderr
    assert (tmp_path / "m.pt").read_bytes() == model
    # a stale best checkpoint and a temporary of a killed process are removed by --overwrite
    (tmp_path / "m_run" / "best_epoch99_iter1.pt").write_bytes(b"old")
    (tmp_path / "m_run" / ".last.pt.abc.tmp").write_bytes(b"half")
    third = _tiny_training(tmp_path, "--overwrite", "seed=3")
    assert third.returncode == 0, third.stderr
    assert not (tmp_path / "m_run" / "best_epoch99_iter1.pt").exists()
    assert not list((tmp_path / "m_run").glob(".*.tmp"))
    assert (tmp_path / "m.pt").read_bytes() != model


def test_two_trainings_with_one_save_at_once(tmp_path):
    import fcntl

    _tiny_training(tmp_path, "--overwrite")  # data and configs
    lock = tmp_path / "busy_run" / ".lock"
    lock.parent.mkdir()
    with open(lock, "a+") as fh:  # a running training holds this lock
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = _tiny_training(tmp_path, save="busy.pt")
    assert res.returncode == 2 and "another training is running into" in res.stderr
    assert not (tmp_path / "busy.pt").exists()


@pytest.mark.parametrize("engine,ensemble", [("ase", "nve"), ("ase", "nvt"), ("openmm", "nve"), ("openmm", "nvt")])
def test_md_that_blows_up_says_so(tmp_path, engine, ensemble):
    import signal
    import subprocess
    import sys

    from ase.io import write

    write(tmp_path / "eth.xyz", molecule("CH3CH2OH"))
    argv = [sys.executable, "-m", "aimnet2mult", "md", "eth.xyz", "--fidelity", "0", "--engine", engine,
            "--ensemble", ensemble, "--timestep", "10", "--steps", "200", "--interval", "10",
            "--no-progress", "--no-plot"]
    res = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    if engine == "openmm" and res.returncode == -signal.SIGSEGV and not res.stderr:
        # seen once in ~20 runs (loaded machine, nothing printed yet): the PyPI openmm-torch 1.5
        # wheels' known native crash (see test_openmm.test_torchforce_copy_limitation); once more
        res = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 3, res.stderr[-2000:]
    assert "MD became unstable at step" in res.stderr and "exceeds --max-temperature 5000 K" in res.stderr
    rows = (tmp_path / "eth_md_energy.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) >= 3  # header, step 0, the step that failed


def test_md_nve_drift_guard_and_bad_arguments(tmp_path, capsys):
    from ase.io import write

    from aimnet2mult.cli import main

    write(tmp_path / "w.xyz", molecule("H2O"))
    common = ["md", str(tmp_path / "w.xyz"), "--fidelity", "0", "--no-progress", "--no-plot", "--steps", "20"]
    assert main(common + ["--ensemble", "nve", "--max-drift", "1e-12"]) == 3
    assert "NVE energy drift at step" in capsys.readouterr().err
    assert main(common + ["--ensemble", "nve"]) == 0  # the default limit holds for a sane run
    for extra, message in [(["--temperature", "-5"], "--temperature must be a positive"),
                           (["--friction", "-1"], "--friction must be >= 0"),
                           (["--engine", "openmm", "--platform", "NoSuch"], "no such OpenMM platform; available:"),
                           (["--max-temperature", "100"], "must exceed --temperature")]:
        assert main(common + extra) == 2, extra
        assert message in capsys.readouterr().err
    (tmp_path / "bad.xyz").write_text("3\n\nO 0 0 zero\nH 1 0 0\nH 0 1 0\n")
    (tmp_path / "xx.xyz").write_text("1\n\nXx 0 0 0\n")
    (tmp_path / "garbled.xyz").write_text("not an xyz file\n")
    for name in ("bad.xyz", "xx.xyz", "garbled.xyz"):
        assert main(["md", str(tmp_path / name), "--fidelity", "0", "--no-progress"]) == 2, name
        err = capsys.readouterr().err
        assert f"cannot read the structure file {tmp_path / name}" in err and "Traceback" not in err


def test_float64_input_far_from_the_origin_keeps_precision(files):
    import torch

    from aimnet2mult.export import load_potential

    pot, _ = load_potential(files["fid0"])
    atoms = molecule("CH3CH2OH")
    x = torch.tensor(atoms.positions, dtype=torch.float64)
    z = torch.tensor(atoms.numbers)
    ref = pot({"coord": x[None], "numbers": z[None]})
    for shift in (1e3, 1e5):
        dense = pot({"coord": (x + shift)[None], "numbers": z[None]})
        flat = pot({"coord": x + shift, "numbers": z})
        assert float((dense["energy"] - ref["energy"]).abs()) < 1e-5
        assert float((dense["forces"] - ref["forces"]).abs().max()) < 1e-5
        assert float((flat["forces"] - ref["forces"][0]).abs().max()) < 1e-4
    # two molecules far apart in one flat call: each recentred on its own
    two = pot({"coord": torch.cat([x + 1e5, x - 1e5]), "numbers": torch.cat([z, z]),
               "mol_idx": torch.repeat_interleave(torch.arange(2), len(z))})
    assert float((two["energy"] - ref["energy"]).abs().max()) < 1e-5


def test_dense_input_too_large_is_refused(files):
    import torch

    from aimnet2mult.export import load_potential

    pot, _ = load_potential(files["fid0"])
    n = 2100
    with pytest.raises(Exception, match="give large systems in the flat layout"):
        pot({"coord": torch.rand(1, n, 3) * 40.0, "numbers": torch.ones(1, n, dtype=torch.long)})


def _h5(path, groups):
    import h5py

    with h5py.File(path, "w") as f:
        for name, g in groups.items():
            grp = f.create_group(str(name))
            for k, v in g.items():
                grp.create_dataset(k, data=np.asarray(v))
    return path


def _water_group(n=2, **extra):
    coord = np.tile(np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]), (n, 1, 1))
    g = {"coord": coord, "numbers": np.tile([8, 1, 1], (n, 1)), "charge": np.zeros(n), "energy": np.full(n, -2000.0)}
    g.update(extra)
    return g


@pytest.mark.parametrize("change,message", [
    ("coincident", "atoms 0 and 1 of row 1 are 0 Å apart \\(closer than 0.1 Å: coincident atoms\\)"),
    ("close", "atoms 0 and 1 of row 1 are 0.05 Å apart"),
    ("Forces", "key 'Forces': unknown key; did you mean 'forces'\\?"),
    ("leading_zero", "group '03': group name has leading zeros; name it '3'"),
    ("charge_1e6", "total charge 1e\\+06 leaves -999990 electrons"),
    ("charge_half", "total charge 0.5 is not an integer"),
    ("mult_half", "multiplicity 1.5 is not an integer"),
])
def test_training_data_the_potential_would_refuse(tmp_path, change, message):
    from aimnet2mult.data.h5dataset import DataError, SizeGroupedDataset

    g = _water_group()
    groups = {"3": g}
    if change in ("coincident", "close"):
        g["coord"][1, 1] = g["coord"][1, 0] + (0.0 if change == "coincident" else [0.05, 0, 0])
    elif change == "Forces":
        g["Forces"] = np.zeros((2, 3, 3))
    elif change == "leading_zero":
        groups = {"3": g, "03": _water_group()}
    elif change == "charge_1e6":
        g["charge"] = np.array([0.0, 1e6])
    elif change == "charge_half":
        g["charge"] = np.array([0.0, 0.5])
    elif change == "mult_half":
        g["mult"] = np.array([1.0, 1.5])
    path = _h5(tmp_path / "d.h5", groups)
    with pytest.raises(DataError, match=message) as err:
        SizeGroupedDataset(path)
    assert str(path) in str(err.value)


def test_unit_and_spin_plausibility_warnings(tmp_path, caplog):
    import logging

    from aimnet2mult.data.h5dataset import SizeGroupedDataset

    logging.getLogger("aimnet2mult").propagate = True  # training tests in this process may have stopped it

    bohr = _water_group()
    bohr["coord"] = bohr["coord"] / 0.529177210903
    with caplog.at_level(logging.WARNING):
        SizeGroupedDataset(_h5(tmp_path / "bohr.h5", {"3": bohr}))
    assert "are the coordinates in Bohr?" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        SizeGroupedDataset(_h5(tmp_path / "mult.h5", {"3": _water_group(mult=np.array([1.0, 2.0]))}))
    assert "row 1: 10 electrons (charge 0) cannot have multiplicity 2" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        SizeGroupedDataset(_h5(tmp_path / "ok.h5", {"3": _water_group()}))
    assert caplog.text == ""


def test_open_shell_data_on_a_closed_shell_model_and_hartree_energies(tmp_path, caplog):
    import logging

    from test_train import _train_api

    from aimnet2mult.data.loaders import build_loaders
    from aimnet2mult.model_config import ConfigError

    # energies in Hartree: water -76.4, H2 -1.17 -> fitted SAE of H about -0.585 "eV"
    water = _water_group(4)
    water["energy"] = np.array([-76.40, -76.41, -76.39, -76.42])
    h2 = {"coord": np.tile([[0.0, 0.0, 0.0], [0.74, 0.0, 0.0]], (4, 1, 1)), "numbers": np.ones((4, 2), int),
          "charge": np.zeros(4), "energy": np.array([-1.17, -1.171, -1.169, -1.17])}
    hw = _h5(tmp_path / "hartree.h5", {"3": water, "2": h2})
    logger = logging.getLogger("aimnet2mult")
    logger.addHandler(caplog.handler)  # training tests in this process may have stopped propagation
    try:
        with caplog.at_level(logging.WARNING, logger="aimnet2mult"):
            build_loaders({"fidelity_datasets": {0: str(hw)}, "val_fraction": 0.0}, 0, 200)
    finally:
        logger.removeHandler(caplog.handler)
    assert "are the energies in Hartree?" in caplog.text
    spin = _h5(tmp_path / "spin.h5", {"3": _water_group(4, mult=np.array([1.0, 3.0, 1.0, 1.0]))})
    with pytest.raises(ConfigError, match="spin.h5 has 1 molecule\\(s\\) with multiplicity != 1 \\(e.g. 3\\)"):
        _train_api(tmp_path, {0: spin}, epochs=1)


def test_calculator_pickles_and_deep_copies(files):
    import copy
    import pickle

    atoms = molecule("CH3CH2OH")
    calc = AIMNet2Mult(files["pt"], fidelity=1, charge=0)
    atoms.calc = calc
    e = atoms.get_potential_energy()
    for clone in (pickle.loads(pickle.dumps(calc)), copy.deepcopy(calc)):
        other = molecule("CH3CH2OH")
        other.calc = clone
        assert other.get_potential_energy() == pytest.approx(e, abs=1e-9)
        assert clone.parameters["fidelity"] == 1
    jpt = AIMNet2Mult(files["fid0"])
    assert isinstance(pickle.loads(pickle.dumps(jpt)), AIMNet2Mult)
    from aimnet2mult.export import load_potential

    module, _ = load_potential(files["fid0"])
    with pytest.raises(TypeError, match="give the model as a file path"):
        pickle.dumps(AIMNet2Mult(module))


def test_resume_refuses_a_changed_run(tmp_path):
    import shutil

    import synthetic
    from helpers import SMALL
    from test_train import _train_api

    from aimnet2mult.checkpoint import CheckpointError

    f0 = synthetic.write_h5(tmp_path / "a.h5", synthetic.make_samples(16, seed=8))
    f1 = synthetic.write_h5(tmp_path / "b.h5", synthetic.make_samples(16, seed=9, scale=1.2), labels=())
    half = _train_api(tmp_path, {0: f0, 1: f1}, epochs=1, save="half.pt")
    last = str(tmp_path / "half_run" / "last.pt")
    for extra, model, message in [
        (["use_fidelity_readouts=false"], None, "use_fidelity_readouts: checkpoint True, configuration False"),
        (["fidelity_offset=300"], None, "fidelity_offset: checkpoint 200, configuration 300"),
        (["fidelity_schedule.pretrain_epochs=1", "fidelity_schedule.init_from.0=1"], None,
         "fidelity_schedule.pretrain_epochs: checkpoint 0, configuration 1"),
        ([], dict(SMALL, aim_size=48), "architecture aim_size: checkpoint 32, --model 48"),
    ]:
        kwargs = {"model": model} if model else {}
        with pytest.raises(CheckpointError, match=message):
            _train_api(tmp_path, {0: f0, 1: f1}, epochs=3, save="r.pt", extra=extra, resume=last, **kwargs)
    # the same file name with other content
    shutil.copy(synthetic.write_h5(tmp_path / "other.h5", synthetic.make_samples(16, seed=10)), f0)
    with pytest.raises(CheckpointError, match="fidelity 0 train data .*a.h5: content differs"):
        _train_api(tmp_path, {0: f0, 1: f1}, epochs=3, save="r.pt", resume=last)
    assert half.exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (needs root and mount; skipped with the reason elsewhere)."""
    import subprocess

    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip() or 'mount failed'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_full_disk_gives_a_clear_error_and_no_partial_files(tmp_path, small_disk, files, capsys):
    from ase.io import write

    from aimnet2mult.calculators.runtime import default_model_path
    from aimnet2mult.cli import main

    # compile: the 10 MB file of the bundled model does not fit

    assert main(["compile", "--weights", str(default_model_path()), "--output", str(small_disk / "m"),
                 "--fidelity-level", "0"]) == 2
    err = capsys.readouterr().err
    assert "could not write" in err and "no space left on device" in err and "Traceback" not in err
    assert list(small_disk.iterdir()) == []
    # training: the checkpoint does not fit, the run says so
    res = _tiny_training(tmp_path, save=str(small_disk / "t.pt"))
    assert res.returncode == 2 and "no space left on device" in res.stderr, res.stderr[-2000:]
    assert not [p for p in small_disk.rglob("*.tmp")] and not (small_disk / "t.pt").exists()
    # md: the trajectory fills the disk
    for p in sorted(small_disk.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    write(tmp_path / "w.xyz", molecule("H2O"))
    code = main(["md", str(tmp_path / "w.xyz"), "--fidelity", "0", "--steps", "4000", "--interval", "1",
                 "--no-progress", "--no-plot", "--output", str(small_disk / "w")])
    err = capsys.readouterr().err
    assert code == 2 and f"could not write {small_disk / 'w.xyz'}" in err and "no space left on device" in err
