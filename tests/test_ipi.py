"""i-PI end to end over a UNIX socket: the example path-integral input (4 beads) with
``aimnet2mult ipi`` as the client; every step's potential (the bead average i-PI reports) equals
the direct ASE calculator's on the bead positions i-PI wrote."""

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from aimnet2mult import AIMNet2Mult

ROOT = Path(__file__).resolve().parent.parent
IPI = Path(sys.executable).with_name("i-pi")


@pytest.mark.skipif(not IPI.exists(), reason="the ipi package (i-pi server) is not installed")
def test_path_integral_run_matches_the_direct_calculator(tmp_path):
    shutil.copy(ROOT / "examples" / "ipi" / "water.xyz", tmp_path)
    address = f"a2m_{uuid.uuid4().hex[:8]}"
    xml = (ROOT / "examples" / "ipi" / "water_pimd.xml").read_text()
    xml = xml.replace("aimnet2mult_water", address).replace("<total_steps> 20 </total_steps>",
                                                            "<total_steps> 6 </total_steps>")
    (tmp_path / "input.xml").write_text(xml)
    server = subprocess.Popen([str(IPI), "input.xml"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        client = subprocess.run([sys.executable, "-m", "aimnet2mult", "ipi", "--fidelity", "0", "--structure",
                                 "water.xyz", "--unix", address, "--timeout", "120"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        out, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    assert client.returncode == 0, client.stderr[-2000:]
    assert server.returncode == 0 and "Exiting cleanly" in out, out[-2000:]
    props = np.loadtxt(tmp_path / "water_pimd.out")
    # i-PI's electronvolt is 1/27.211383414 Hartree, ASE's (the socket client converts with it)
    # 1/27.211386024: undo the two codes' constants (1e-7 relative, 2e-4 eV here) before comparing
    from ase import units
    from ipi.utils.units import unit_to_internal

    ipi_ev_to_ase_ev = units.Hartree * unit_to_internal("energy", "electronvolt", 1.0)
    assert props.shape[0] == 7  # the initial configuration and the 6 steps
    beads = [read(tmp_path / f"water_pimd.pos_{k}.xyz", index=":") for k in range(4)]
    calc = AIMNet2Mult(fidelity=0)
    for step in range(7):
        energies = []
        for k in range(4):
            atoms = beads[k][step]
            atoms.pbc = False
            atoms.calc = calc
            energies.append(atoms.get_potential_energy())
        # the properties file has 9 significant digits (1e-5 eV here)
        assert props[step, 4] * ipi_ev_to_ase_ev == pytest.approx(np.mean(energies), abs=3e-5), step
    assert len({round(float(e), 6) for e in energies}) == 4  # four distinct beads


BOX_XML = """<simulation verbosity='low' safe_stride='1000'>
  <output prefix='box'>
    <properties stride='1' filename='out'> [ step, potential{electronvolt} ] </properties>
    <trajectory filename='pos' stride='1' format='ase'> positions </trajectory>
    <trajectory filename='for' stride='1' format='ase'> forces </trajectory>
  </output>
  <total_steps> 3 </total_steps>
  <prng><seed> 2718 </seed></prng>
  <ffsocket name='aimnet2mult' mode='unix' pbc='true'>
    <address> ADDRESS </address>
    <latency> 1e-3 </latency>
  </ffsocket>
  <system>
    <initialize nbeads='1'>
      <file mode='xyz' units='angstrom'> box.xyz </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces> <force forcefield='aimnet2mult'> </force> </forces>
    <motion mode='dynamics'>
      <dynamics mode='nve'> <timestep units='femtosecond'> 0.5 </timestep> </dynamics>
    </motion>
    <ensemble> <temperature units='kelvin'> 300 </temperature> </ensemble>
  </system>
</simulation>
"""


@pytest.mark.skipif(not IPI.exists(), reason="the ipi package (i-pi server) is not installed")
@pytest.mark.parametrize("system", ["periodic water box", "molecule"])
@pytest.mark.parametrize("fidelity", [0, 1])
def test_nve_energies_and_forces_equal_the_direct_calculator(tmp_path, system, fidelity):
    """Two fidelities of the bundled model, on a periodic water box (``--periodic``: the cell comes
    from i-PI) and on an isolated molecule: every step's potential and forces equal the direct
    calculator's."""
    from ase.build import molecule

    from aimnet2mult.tools.water import water_cell

    periodic = system != "molecule"
    if periodic:
        atoms0 = water_cell(2, seed=3)
    else:
        atoms0 = molecule("CH3CH2OH")
        atoms0.rattle(0.05, seed=4)
        atoms0.cell = [30.0, 30.0, 30.0]  # i-PI needs a cell; the client ignores it without --periodic
        atoms0.center()
    a = atoms0.cell.lengths()
    lines = [str(len(atoms0)), f"# CELL(abcABC): {a[0]:.10f} {a[1]:.10f} {a[2]:.10f} 90.0 90.0 90.0 "
             "positions{angstrom} cell{angstrom}"]
    lines += [f"{s} {x:.10f} {y:.10f} {z:.10f}" for s, (x, y, z) in zip(atoms0.get_chemical_symbols(),
                                                                        atoms0.positions)]
    (tmp_path / "box.xyz").write_text("\n".join(lines) + "\n")
    address = f"a2m_{uuid.uuid4().hex[:8]}"
    xml = BOX_XML.replace("ADDRESS", address)
    if not periodic:
        xml = xml.replace("pbc='true'", "pbc='false'")
    (tmp_path / "input.xml").write_text(xml)
    server = subprocess.Popen([str(IPI), "input.xml"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        client = subprocess.run([sys.executable, "-m", "aimnet2mult", "ipi", "--fidelity", str(fidelity),
                                 "--structure", "box.xyz", "--unix", address, "--timeout", "120"]
                                + (["--periodic"] if periodic else []), cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        out, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    assert client.returncode == 0, client.stderr[-2000:]
    assert server.returncode == 0, out[-2000:]
    from ase import units
    from ipi.utils.units import unit_to_internal

    ipi_ev_to_ase_ev = units.Hartree * unit_to_internal("energy", "electronvolt", 1.0)
    props = np.loadtxt(tmp_path / "box.out", ndmin=2)
    # format='ase': extxyz in ASE's units (Å, eV/Å) with 8 decimals
    positions = [f.positions for f in read(tmp_path / "box.pos_0.extxyz", index=":")]
    forces = [f.calc.results["forces"] for f in read(tmp_path / "box.for_0.extxyz", index=":")]
    assert props.shape[0] == 4 and len(positions) == 4 and len(forces) == 4
    calc = AIMNet2Mult(fidelity=fidelity)
    for step in range(4):
        atoms = atoms0.copy()
        atoms.pbc = periodic
        atoms.positions = positions[step]
        atoms.calc = calc
        e = atoms.get_potential_energy()
        # the rounding of i-PI's properties file (9 significant digits, '%16.8e') plus 3e-5 eV: the
        # float32 network evaluated again at positions that went through i-PI's Bohr (1e-7 relative)
        printed = 0.5 * 10.0 ** (np.floor(np.log10(abs(e))) - 8)
        assert props[step, 1] * ipi_ev_to_ase_ev == pytest.approx(e, abs=3e-5 + printed), step
        np.testing.assert_allclose(forces[step], atoms.get_forces(), atol=1e-4)
    assert np.abs(positions[3] - positions[0]).max() > 1e-4  # it moved


def test_the_client_without_a_fidelity_lists_them(tmp_path):
    shutil.copy(ROOT / "examples" / "ipi" / "water.xyz", tmp_path)
    proc = subprocess.run([sys.executable, "-m", "aimnet2mult", "ipi", "--structure", "water.xyz", "--unix",
                           "nobody_listens", "--timeout", "1"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "0 ('b3lyp/6-31g*'), 1 ('gfn2-xtb'), 2 ('gfn1-xtb')" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
