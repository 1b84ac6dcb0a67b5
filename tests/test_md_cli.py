"""``aimnet2mult md`` end to end: the installed command line on XYZ/PDB input, both engines, a periodic
box, the default model and clear errors."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.io import read, write
from helpers import small_checkpoint

from aimnet2mult import AIMNet2Mult
from aimnet2mult.checkpoint import save_checkpoint

FIDELITIES = ["b3lyp/6-31g*", "gfn2-xtb", "gfn1-xtb"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A checkpoint shaped like the bundled default model (3 fidelities, D3(BJ) on fidelity 0)."""
    ckpt, _ = small_checkpoint(3, seed=11, dispersion=[{"method": "d3bj", "functional": "b3lyp"}, None, None])
    for entry, name in zip(ckpt["fidelities"], FIDELITIES):
        entry["name"] = name
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("md_cli") / "default_model.pt")


def water_box():
    atoms = molecule("H2O")
    other = molecule("H2O")
    other.translate([2.8, 0.5, 0.2])
    atoms += other
    atoms.set_cell([10.5, 10.0, 11.0])
    atoms.pbc = True
    atoms.positions += 0.5
    return atoms


def cli(*argv, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "aimnet2mult", "md", *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def read_log(prefix: Path):
    with open(prefix.with_name(prefix.name + "_energy.csv")) as fh:
        return list(csv.DictReader(fh))


def check_outputs(prefix: Path, steps: int, interval: int, n_atoms: int):
    frames = read(prefix.with_name(prefix.name + ".xyz"), index=":")
    assert len(frames) == steps // interval + 1 and all(len(f) == n_atoms for f in frames)
    assert [f.info["step"] for f in frames] == list(range(0, steps + 1, interval))
    rows = read_log(prefix)
    assert [int(r["step"]) for r in rows] == list(range(0, steps + 1, interval))
    assert all(np.isfinite(float(r["etot_eV"])) for r in rows)
    png = prefix.with_name(prefix.name + "_energy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000
    return frames, rows


def test_md_pdb_ase_with_progress_bar(model, tmp_path):
    pdb = tmp_path / "ethanol.pdb"
    write(pdb, molecule("CH3CH2OH"))
    proc = cli(pdb, "--model", model, "--fidelity", "b3lyp/6-31g*", "--engine", "ase", "--steps", 12, "--interval",
               4, "--temperature", 200, "--output", tmp_path / "out" / "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "12/12" in proc.stderr  # tqdm progress bar
    assert "wrote" in proc.stdout and "drift" in proc.stdout
    frames, rows = check_outputs(tmp_path / "out" / "run", 12, 4, 9)
    start = read(pdb)
    start.calc = AIMNet2Mult(model, fidelity=0)
    assert float(rows[0]["epot_eV"]) == pytest.approx(start.get_potential_energy(), rel=1e-9)


def test_md_periodic_xyz_openmm_nve(model, tmp_path):
    """A periodic extended XYZ box through the OpenMM engine (TorchForce, automatic periodic Coulomb):
    its first energy is the ASE calculator's; NVE keeps the total energy."""
    xyz = tmp_path / "box.xyz"
    box = water_box()
    write(xyz, box, format="extxyz")
    proc = cli(xyz, "--model", model, "--fidelity", 1, "--engine", "openmm", "--ensemble", "nve", "--steps", 20,
               "--interval", 10, "--timestep", 0.25, "--platform", "Reference", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    frames, rows = check_outputs(tmp_path / "box_md", 20, 10, 6)
    assert frames[0].pbc.all() and np.allclose(frames[0].cell, box.cell)
    box.calc = AIMNet2Mult(model, fidelity=1)
    assert float(rows[0]["epot_eV"]) == pytest.approx(box.get_potential_energy(), rel=1e-6)
    assert abs(float(rows[-1]["etot_eV"]) - float(rows[0]["etot_eV"])) < 0.01


def test_md_cli_errors(model, tmp_path, capsys):
    from aimnet2mult import cli as cli_module

    xyz = tmp_path / "water.xyz"
    write(xyz, molecule("H2O"))
    proc = cli(xyz, "--model", model, "--steps", 2, cwd=tmp_path)  # the installed entry point: exit status 2
    assert proc.returncode == 2
    assert "chosen explicitly" in proc.stderr and "0 ('b3lyp/6-31g*'), 1 ('gfn2-xtb'), 2 ('gfn1-xtb')" in proc.stderr
    assert "Traceback" not in proc.stderr
    xe = tmp_path / "xe.xyz"
    write(xe, Atoms("XeH", positions=[[0, 0, 0], [1.7, 0, 0]]))
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    for argv, message in (([tmp_path / "missing.xyz", "--model", model, "--fidelity", 0], "not found"),
                          ([xe, "--model", model, "--fidelity", 0], "Xe not supported by fidelity 0"),
                          ([xyz, "--model", model, "--fidelity", 5], "out of range"),
                          ([xyz, "--model", junk, "--fidelity", 0], "cannot be read as an aimnet2mult checkpoint")):
        assert cli_module.main(["md", *map(str, argv), "--steps", "2", "--no-progress"]) == 2
        assert message in capsys.readouterr().err


def test_md_default_model(model, tmp_path, monkeypatch):
    """No --model: the bundled default model (here a stand-in in a temporary directory)."""
    import shutil

    from aimnet2mult import cli as cli_module
    from aimnet2mult.calculators import runtime

    shutil.copy(model, tmp_path / "default_model.pt")
    monkeypatch.setattr(runtime, "DEFAULT_MODEL_DIR", tmp_path)
    xyz = tmp_path / "water.xyz"
    write(xyz, molecule("H2O"))
    argv = ["md", str(xyz), "--fidelity", "0", "--steps", "4", "--interval", "2", "--no-progress"]
    assert cli_module.main(argv) == 0
    check_outputs(tmp_path / "water_md", 4, 2, 3)
    monkeypatch.setattr(runtime, "DEFAULT_MODEL_DIR", tmp_path / "none")
    assert cli_module.main(argv) == 2
    # --no-plot: trajectory and log only; --coulomb simple refuses a periodic structure before running
    box = tmp_path / "box.xyz"
    write(box, water_box(), format="extxyz")
    argv = ["md", str(box), "--model", str(model), "--fidelity", "2", "--steps", "2", "--interval", "2",
            "--no-progress", "--no-plot", "--output", str(tmp_path / "noplot")]
    assert cli_module.main(argv) == 0
    assert (tmp_path / "noplot.xyz").is_file() and not (tmp_path / "noplot_energy.png").exists()
    assert cli_module.main(argv + ["--coulomb", "simple"]) == 2
