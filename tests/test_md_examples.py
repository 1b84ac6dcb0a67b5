"""Every script in examples/md/ runs (``--short``); ``aimnet2mult md`` runs with both engines."""

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aimnet2mult import md
from aimnet2mult.checkpoint import save_checkpoint
from aimnet2mult.import_official import official_member_checkpoint

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples" / "md").glob("*.py") if not p.name.startswith("_"))
#: what each example must write into its output directory
OUTPUTS = {
    "ase_nvt_langevin.py": ["nvt.traj", "nvt_energy.csv", "nvt_energy.png"],
    "ase_nve.py": ["nve.traj", "nve_energy.csv", "nve_energy.png"],
    "openmm_torchforce.py": ["openmm.pdb", "openmm_energy.csv", "openmm_energy.png"],
    "openmm_mlmm_water.py": ["mlmm.pdb", "mlmm_energy.csv", "mlmm_energy.png"],
    "lammps_nve.py": ["lammps.dump", "lammps_energy.csv", "lammps_energy.png", "in.lammps"],
    "ipi_pimd.py": ["water_pimd.pos_0.xyz", "ipi_energy.csv", "ipi_energy.png"],
    "torchsim_nvt.py": ["torchsim_final.xyz", "torchsim_energy.csv", "torchsim_energy.png"],
    "metatomic_nve.py": ["model.mta.pt", "metatomic_energy.csv", "metatomic_energy.png", "metatomic_nve.traj"],
}
#: this example resolves its model itself (import of the official weights into a fresh cache)
DEFAULT_MODEL_EXAMPLE = "ase_nve.py"


@pytest.fixture(scope="module")
def wb97m_pt(wb97m_file, tmp_path_factory):
    return save_checkpoint(official_member_checkpoint(wb97m_file, 0), tmp_path_factory.mktemp("md") / "wb97m.pt")


@pytest.fixture(scope="module")
def example_runs(wb97m_pt, tmp_path_factory):
    """Start every example at once (they spend most of their time importing), then collect them."""
    root = tmp_path_factory.mktemp("examples")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", AIMNET2MULT_CACHE=str(root / "cache"),
               MPLBACKEND="Agg")
    procs = {}
    for script in EXAMPLES:
        out = root / script.stem
        cmd = [sys.executable, str(script), "--short", "--output-dir", str(out)]
        if script.name != DEFAULT_MODEL_EXAMPLE:
            cmd += ["--model", str(wb97m_pt), "--fidelity", "0"]
        procs[script.name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                               cwd=root, env=env), out)
    results = {}
    for name, (proc, out) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = (proc.returncode, stdout, stderr, out)
    return results, root


def test_every_example_is_covered():
    assert {p.name for p in EXAMPLES} == set(OUTPUTS)


@pytest.mark.parametrize("script", sorted(OUTPUTS))
def test_example_runs(example_runs, script):
    results, root = example_runs
    rc, stdout, stderr, out = results[script]
    assert rc == 0, f"{script} failed:\n{stdout}\n{stderr}"
    for name in OUTPUTS[script]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, f"{script}: no {name}"
    with open(out / OUTPUTS[script][1]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 3 and all(float(r["etot_eV"]) == float(r["etot_eV"]) for r in rows)
    if script == DEFAULT_MODEL_EXAMPLE:
        from aimnet2mult.calculators import default_model_path

        try:
            default_model_path()
        except ValueError:  # no bundled model: the official weights, converted once into the cache
            assert (root / "cache" / "aimnet2_wb97m-d3_member0.pt").is_file()
        else:
            assert "using the bundled default model default_model.pt, fidelity 0" in stdout
        assert "drift" in stdout


def md_args(tmp_path, structure, **kw):
    parser = argparse.ArgumentParser()
    md.add_arguments(parser)
    argv = [str(structure), "--steps", "20", "--interval", "5", "--output", str(tmp_path / "run"), "--no-progress"]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return parser.parse_args(argv)


@pytest.fixture
def xyz(tmp_path):
    from ase.build import molecule
    from ase.io import write

    path = tmp_path / "ethanol.xyz"
    write(path, molecule("CH3CH2OH"))
    return path


@pytest.mark.parametrize("engine,ensemble", [("ase", "nvt"), ("openmm", "nve"), ("openmm", "nvt")])
def test_md_command(tmp_path, xyz, wb97m_pt, engine, ensemble, capsys):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = md.run(md_args(tmp_path, xyz, model=wb97m_pt, fidelity=0, engine=engine, ensemble=ensemble))
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    from ase.io import read

    frames = read(tmp_path / "run.xyz", index=":")
    assert len(frames) == 5 and frames[-1].info["step"] == 20
    with open(tmp_path / "run_energy.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 5, 10, 15, 20]
    if ensemble == "nve":
        assert abs(float(rows[-1]["etot_eV"]) - float(rows[0]["etot_eV"])) < 0.01
    png = tmp_path / "run_energy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_md_command_errors(tmp_path, xyz, wb97m_pt, capsys):
    from helpers import small_checkpoint

    from aimnet2mult.checkpoint import CheckpointError

    two = save_checkpoint(small_checkpoint(2)[0], tmp_path / "two.pt")
    with pytest.raises(CheckpointError, match="chosen explicitly"):
        md.run(md_args(tmp_path, xyz, model=two))
    with pytest.raises(FileNotFoundError):
        md.run(md_args(tmp_path, tmp_path / "missing.xyz", model=wb97m_pt))
    assert md.main([str(xyz), "--model", str(two), "--fidelity", "7", "--steps", "1"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_examples_use_the_bundled_default_model(tmp_path, monkeypatch, capsys):
    """Without --model the examples take the bundled default model (multi-fidelity: fidelity 0 unless
    --fidelity is given); here a stand-in in a temporary directory."""
    from helpers import small_checkpoint

    from aimnet2mult.calculators import runtime

    sys.path.insert(0, str(ROOT / "examples" / "md"))
    try:
        import _helpers
    finally:
        sys.path.pop(0)
    ckpt, _ = small_checkpoint(3)
    ckpt["fidelities"][0]["name"] = "b3lyp/6-31g*"
    save_checkpoint(ckpt, tmp_path / "default_model.pt")
    monkeypatch.setattr(runtime, "DEFAULT_MODEL_DIR", tmp_path)
    assert _helpers.resolve_model(None) == (str(tmp_path / "default_model.pt"), 0)
    assert "fidelity 0 ('b3lyp/6-31g*')" in capsys.readouterr().out
    assert _helpers.resolve_model(None, "level2") == (str(tmp_path / "default_model.pt"), "level2")
    assert _helpers.resolve_model("mine.pt", 1) == ("mine.pt", 1)


@pytest.mark.parametrize("script", ["ase_nve.py", "ase_nvt_langevin.py", "openmm_torchforce.py"])
def test_example_that_blows_up_says_so(tmp_path, wb97m_pt, script):
    """A 10 fs time step heats the molecule past 5,000 K within 10 steps: the example stops with
    exit code 3 and a message instead of finishing as if nothing happened."""
    path = next(p for p in EXAMPLES if p.name == script)
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    res = subprocess.run([sys.executable, str(path), "--short", "--timestep", "10", "--output-dir", str(tmp_path),
                          "--model", str(wb97m_pt), "--fidelity", "0"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert res.returncode == 3, res.stdout[-1500:] + res.stderr[-1500:]
    assert "MD became unstable at step" in res.stderr
