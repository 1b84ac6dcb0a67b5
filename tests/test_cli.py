"""Command lines: the seed's compile_jit flags, `aimnet2mult compile`, `import-aimnet2`."""

import subprocess
import sys

import molecules
import pytest
import torch
import yaml
from helpers import as_torch, small_checkpoint

from aimnet2mult.checkpoint import save_checkpoint
from aimnet2mult.export import load_potential, read_metadata


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    ckpt, _ = small_checkpoint(3, dispersion=[None, None, None])
    save_checkpoint(ckpt, d / "model.pt")
    (d / "model.yaml").write_text(yaml.safe_dump({k: v for k, v in ckpt["model_config"].items()
                                                  if k not in ("num_fidelities", "fidelity_offset",
                                                               "use_fidelity_readouts")}))
    (d / "sae_fid0.yaml").write_text(yaml.safe_dump(ckpt["fidelities"][0]["sae"]))
    return d, ckpt


SEED_FLAGS = ["--weights", "model.pt", "--model", "model.yaml", "--output", "compiled_model",
              "--fidelity-level", "0", "--fidelity-offset", "200", "--num-fidelities", "3",
              "--use-fidelity-readouts", "true", "--sae", "sae_fid0.yaml"]


def test_seed_compile_command_as_written(trained):
    d, _ = trained
    res = run("aimnet2mult.tools.compile_jit", *SEED_FLAGS, "--dispersion", "d3bj",
              "--dispersion-functional", "wb97m", cwd=d)
    assert res.returncode == 0, res.stderr
    meta = read_metadata(d / "compiled_model_fid0.jpt")
    assert meta["dispersion"]["a2"] == pytest.approx(3.128) and meta["fidelity"] == 0


@pytest.mark.parametrize("flag,value,msg", [("--fidelity-offset", "300", "fidelity_offset"),
                                            ("--num-fidelities", "2", "num_fidelities"),
                                            ("--use-fidelity-readouts", "false", "use_fidelity_readouts")])
def test_disagreeing_flags_are_refused(trained, flag, value, msg):
    d, _ = trained
    flags = list(SEED_FLAGS)
    flags[flags.index(flag) + 1] = value
    flags[flags.index("--output") + 1] = "bad"
    res = run("aimnet2mult.tools.compile_jit", *flags, cwd=d)
    assert res.returncode != 0 and msg in res.stderr
    assert not list(d.glob("bad*"))


def test_disagreeing_sae_and_model_are_refused(trained):
    d, ckpt = trained
    sae = dict(ckpt["fidelities"][0]["sae"])
    sae[6] += 0.01
    (d / "sae_wrong.yaml").write_text(yaml.safe_dump(sae))
    res = run("aimnet2mult.tools.compile_jit", "--weights", "model.pt", "--output", "bad", "--fidelity-level", "0",
              "--sae", "sae_wrong.yaml", cwd=d)
    assert res.returncode == 2 and "--sae" in res.stderr
    (d / "model_wrong.yaml").write_text(yaml.safe_dump({"aim_size": 64}))
    res = run("aimnet2mult.tools.compile_jit", "--weights", "model.pt", "--output", "bad", "--fidelity-level", "0",
              "--model", "model_wrong.yaml", cwd=d)
    assert res.returncode == 2 and "aim_size" in res.stderr
    assert not list(d.glob("bad*"))


def test_fidelity_level_out_of_range(trained):
    d, _ = trained
    res = run("aimnet2mult", "compile", "--weights", "model.pt", "--output", "bad", "--fidelity-level", "3", cwd=d)
    assert res.returncode == 2 and "out of range" in res.stderr and "0 ('level0')" in res.stderr
    assert not list(d.glob("bad*"))


@pytest.mark.parametrize("name", ["m062x", "m06-2x"])
def test_m062x_with_d3bj_exits_nonzero_and_writes_nothing(trained, name):
    d, _ = trained
    res = run("aimnet2mult.tools.compile_jit", "--weights", "model.pt", "--output", "m06", "--fidelity-level", "1",
              "--dispersion", "d3bj", "--dispersion-functional", name, cwd=d)
    assert res.returncode != 0
    assert "BJ" in res.stderr or "bj" in res.stderr
    assert not list(d.glob("m06*"))


def test_unknown_functional_lists_near_matches(trained):
    d, _ = trained
    res = run("aimnet2mult", "compile", "--weights", "model.pt", "--output", "x", "--fidelity-level", "0",
              "--dispersion-functional", "b3lpy", cwd=d)
    assert res.returncode == 2 and "b3lyp" in res.stderr


def test_custom_parameters_and_none(trained):
    d, _ = trained
    res = run("aimnet2mult", "compile", "--weights", "model.pt", "--output", "custom.jpt", "--fidelity-level",
              "level2", "--dispersion", "d3bj", "--dispersion-s6", "1.0", "--dispersion-s8", "0.5",
              "--dispersion-a1", "0.4", "--dispersion-a2", "4.5", cwd=d)
    assert res.returncode == 0, res.stderr
    meta = read_metadata(d / "custom.jpt")
    assert meta["dispersion"]["s8"] == 0.5 and meta["dispersion"]["s9"] == 0.0 and meta["fidelity"] == 2
    res = run("aimnet2mult", "compile", "--weights", "model.pt", "--output", "nodisp", "--fidelity-level", "1",
              "--dispersion", "none", cwd=d)
    assert res.returncode == 0, res.stderr
    assert read_metadata(d / "nodisp_fid1.jpt")["dispersion"] is None


def test_import_aimnet2_then_compile_reproduces_official(tmp_path, b973c_file):
    res = run("aimnet2mult", "import-aimnet2", str(b973c_file), "--member", "2", "--output", "b973c.pt",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = run("aimnet2mult", "compile", "--weights", "b973c.pt", "--fidelity-level", "0", "--output", "b973c",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    pot, meta = load_potential(tmp_path / "b973c_fid0.jpt")
    assert meta["dispersion"]["s8"] == pytest.approx(1.5)
    official = getattr(torch.jit.load(str(b973c_file)).models, "2")
    inp = as_torch(*molecules.batch(["CH3CH2OH"]))
    ref = official(dict(inp))["energy"].item()
    assert abs(pot(dict(inp))["energy"].item() - ref) < 5e-4


def test_import_rejects_bad_member_and_file(tmp_path, wb97m_file):
    res = run("aimnet2mult", "import-aimnet2", str(wb97m_file), "--member", "7", "--output", "x.pt", cwd=tmp_path)
    assert res.returncode == 2 and "members" in res.stderr
    (tmp_path / "notes.txt").write_text("hello")
    res = run("aimnet2mult", "import-aimnet2", "notes.txt", "--output", "x.pt", cwd=tmp_path)
    assert res.returncode == 2 and "not a TorchScript" in res.stderr
    assert not (tmp_path / "x.pt").exists()
