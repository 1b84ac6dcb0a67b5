"""ML/MM molecular dynamics: a methanol solute (ML, aimnet2mult through OpenMM-ML) in TIP3P water
(MM, Amber14 TIP3P with PME), mechanical embedding.

    python examples/md/openmm_mlmm_water.py [--model model.pt --fidelity 0] [--short] [--interpolate]

The ML potential replaces the solute's internal MM terms; solute-water interactions use the MM
charges and Lennard-Jones parameters below (an illustrative, hand-written methanol template:
replace it by a proper force field, e.g. from openmmforcefields, for production work).
Writes OUTPUT_DIR/mlmm.pdb (trajectory), mlmm_energy.csv and mlmm_energy.png.
"""

import io

import _helpers
import numpy as np
import openmm
from ase.build import molecule
from openmm import app, unit

from aimnet2mult.md import energy_row, openmm_energies_ev, plot_energy, write_log

# Illustrative MM template for methanol (units: nm, rad, kJ/mol, e). Only the charges and LJ
# parameters matter in the ML/MM system (solute-water interactions); the bonded terms are used only
# by the pure-MM end state of an interpolation (lambda_interpolate = 0).
METHANOL_XML = """<ForceField>
 <AtomTypes>
  <Type name="MOH-C" class="MOH-C" element="C" mass="12.011"/>
  <Type name="MOH-O" class="MOH-O" element="O" mass="15.999"/>
  <Type name="MOH-HC" class="MOH-HC" element="H" mass="1.008"/>
  <Type name="MOH-HO" class="MOH-HO" element="H" mass="1.008"/>
 </AtomTypes>
 <Residues>
  <Residue name="MOH">
   <Atom name="C" type="MOH-C"/><Atom name="O" type="MOH-O"/><Atom name="H1" type="MOH-HC"/>
   <Atom name="HO" type="MOH-HO"/><Atom name="H2" type="MOH-HC"/><Atom name="H3" type="MOH-HC"/>
   <Bond atomName1="C" atomName2="O"/><Bond atomName1="C" atomName2="H1"/><Bond atomName1="C" atomName2="H2"/>
   <Bond atomName1="C" atomName2="H3"/><Bond atomName1="O" atomName2="HO"/>
  </Residue>
 </Residues>
 <HarmonicBondForce>
  <Bond class1="MOH-C" class2="MOH-O" length="0.1425" k="267000"/>
  <Bond class1="MOH-C" class2="MOH-HC" length="0.1093" k="280000"/>
  <Bond class1="MOH-O" class2="MOH-HO" length="0.0965" k="460000"/>
 </HarmonicBondForce>
 <HarmonicAngleForce>
  <Angle class1="MOH-HC" class2="MOH-C" class3="MOH-HC" angle="1.888" k="290"/>
  <Angle class1="MOH-HC" class2="MOH-C" class3="MOH-O" angle="1.911" k="420"/>
  <Angle class1="MOH-C" class2="MOH-O" class3="MOH-HO" angle="1.892" k="400"/>
 </HarmonicAngleForce>
 <PeriodicTorsionForce>
  <Proper class1="MOH-HC" class2="MOH-C" class3="MOH-O" class4="MOH-HO" periodicity1="3" phase1="0" k1="0.7"/>
 </PeriodicTorsionForce>
 <NonbondedForce coulomb14scale="0.8333333333333334" lj14scale="0.5">
  <Atom type="MOH-C" charge="0.117" sigma="0.340" epsilon="0.458"/>
  <Atom type="MOH-O" charge="-0.600" sigma="0.307" epsilon="0.711"/>
  <Atom type="MOH-HC" charge="0.029" sigma="0.247" epsilon="0.066"/>
  <Atom type="MOH-HO" charge="0.396" sigma="0.100" epsilon="0.0"/>
 </NonbondedForce>
</ForceField>
"""
ATOM_NAMES = ["C", "O", "H1", "HO", "H2", "H3"]  # order of ase.build.molecule('CH3OH')
BONDS = [(0, 1), (0, 2), (0, 4), (0, 5), (1, 3)]


def forcefield() -> app.ForceField:
    return app.ForceField("amber14/tip3p.xml", io.StringIO(METHANOL_XML))


def solvated_methanol(padding_nm: float = 1.0, seed: int = 0):
    """(topology, positions, forcefield, ML atom indices) of methanol in a TIP3P water box."""
    atoms = molecule("CH3OH")
    top = app.Topology()
    chain = top.addChain()
    res = top.addResidue("MOH", chain)
    made = [top.addAtom(name, app.Element.getByAtomicNumber(int(z)), res)
            for name, z in zip(ATOM_NAMES, atoms.numbers)]
    for i, j in BONDS:
        top.addBond(made[i], made[j])
    ff = forcefield()
    modeller = app.Modeller(top, atoms.positions * 0.1 * unit.nanometer)
    modeller.addSolvent(ff, model="tip3p", padding=padding_nm * unit.nanometer)
    ml_atoms = list(range(len(atoms)))
    return modeller.topology, modeller.positions, ff, ml_atoms


def mm_system(topology, ff, cutoff_nm: float = 0.9):
    return ff.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=cutoff_nm * unit.nanometer,
                           constraints=app.HBonds, rigidWater=True)


def main():
    p = _helpers.parser(__doc__, steps=1000, short_steps=20)
    p.add_argument("--interpolate", action="store_true",
                   help="build an interpolating system (global parameter lambda_interpolate, set to 1)")
    p.add_argument("--platform", default="CPU", help="OpenMM platform (default CPU)")
    p.add_argument("--padding", type=float, default=1.0, help="water padding around the solute, nm")
    args = _helpers.parse(p)

    from openmmml import MLPotential

    topology, positions, ff, ml_atoms = solvated_methanol(args.padding)
    system = mm_system(topology, ff)
    potential = MLPotential("aimnet2mult", modelPath=args.model, fidelity=args.fidelity)
    mixed = potential.createMixedSystem(topology, system, ml_atoms, interpolate=args.interpolate, charge=0,
                                        multiplicity=1)
    # the flexible ML solute needs a short time step; the MM water stays rigid
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1.0 / unit.picosecond, 0.5 * unit.femtoseconds)
    simulation = app.Simulation(topology, mixed, integrator, openmm.Platform.getPlatformByName(args.platform))
    simulation.context.setPositions(positions)
    if args.interpolate:
        simulation.context.setParameter("lambda_interpolate", 1.0)
    simulation.minimizeEnergy(maxIterations=50)
    simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, 42)
    simulation.reporters.append(app.PDBReporter(str(args.output_dir / "mlmm.pdb"), 10))

    n = topology.getNumAtoms()
    dof = 3 * n - mixed.getNumConstraints() - 3  # rigid waters; CMMotionRemover
    rows = []
    guard = _helpers.make_guard(dof / 3.0, 300.0, 0.5, nve=False)
    for step in range(0, args.steps + 1, 10):
        if step:
            simulation.step(10)
        state = simulation.context.getState(getEnergy=True, getPositions=True)
        epot, ekin = openmm_energies_ev(state)
        rows.append(energy_row(step, 0.5, epot, ekin, dof / 3.0))  # T from the true degrees of freedom
        _helpers.check_or_stop(guard, rows[-1], state.getPositions(asNumpy=True)._value, rows,
                               args.output_dir / "mlmm_energy.csv")
    write_log(rows, args.output_dir / "mlmm_energy.csv")
    plot_energy(rows, args.output_dir / "mlmm_energy.png",
                f"methanol (ML) in {topology.getNumResidues() - 1} TIP3P waters (MM, PME)")
    temps = [r["temperature_K"] for r in rows]
    print(f"{args.steps} steps of ML/MM ({n} atoms, {len(ml_atoms)} ML): mean T {np.mean(temps):.0f} K; "
          f"wrote {args.output_dir}/mlmm.pdb and mlmm_energy.png")


if __name__ == "__main__":
    main()
