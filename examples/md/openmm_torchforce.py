"""OpenMM molecular dynamics of a molecule with the aimnet2mult potential as an openmm-torch TorchForce.

    python examples/md/openmm_torchforce.py [--model model.pt --fidelity 0] [--short] [--ensemble nve]

Writes OUTPUT_DIR/openmm.pdb (trajectory), openmm_energy.csv and openmm_energy.png.
"""

import _helpers
import numpy as np
import openmm
from ase.build import molecule
from openmm import app, unit

from aimnet2mult.md import energy_row, openmm_energies_ev, openmm_topology, plot_energy, write_log
from aimnet2mult.openmm import create_torch_force
from aimnet2mult.units import EV_TO_KJ_PER_MOL


def main():
    p = _helpers.parser(__doc__, steps=2000, short_steps=40)
    p.add_argument("--molecule", default="trans-butane", help="ASE G2 molecule name (default trans-butane)")
    p.add_argument("--ensemble", choices=["nvt", "nve"], default="nvt")
    p.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    p.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    p.add_argument("--platform", default=None, help="OpenMM platform (default: OpenMM's fastest)")
    args = _helpers.parse(p)

    atoms = molecule(args.molecule)
    topology = openmm_topology(atoms)          # one residue; elements from the atomic numbers
    system = openmm.System()
    for mass in atoms.get_masses():
        system.addParticle(mass)
    # energy in kJ/mol and forces on all particles from one TorchScript module
    system.addForce(create_torch_force(args.model, args.fidelity, topology=topology, charge=0, mult=1))

    dt = args.timestep * unit.femtoseconds
    if args.ensemble == "nvt":
        integrator = openmm.LangevinMiddleIntegrator(args.temperature * unit.kelvin, 1.0 / unit.picosecond, dt)
    else:
        integrator = openmm.VerletIntegrator(dt)
    platform = openmm.Platform.getPlatformByName(args.platform) if args.platform else None
    simulation = app.Simulation(topology, system, integrator, platform)
    simulation.context.setPositions(atoms.positions * 0.1)  # Å -> nm
    simulation.context.setVelocitiesToTemperature(args.temperature * unit.kelvin, 42)
    simulation.reporters.append(app.PDBReporter(str(args.output_dir / "openmm.pdb"), 10))

    rows = []
    guard = _helpers.make_guard(len(atoms), args.temperature, args.timestep, nve=args.ensemble == "nve")
    for step in range(0, args.steps + 1, 10):
        if step:
            simulation.step(10)
        state = simulation.context.getState(getEnergy=True, getPositions=True)
        epot, ekin = openmm_energies_ev(state)
        rows.append(energy_row(step, args.timestep, epot, ekin, len(atoms)))
        _helpers.check_or_stop(guard, rows[-1], state.getPositions(asNumpy=True)._value, rows,
                               args.output_dir / "openmm_energy.csv")
    write_log(rows, args.output_dir / "openmm_energy.csv")
    plot_energy(rows, args.output_dir / "openmm_energy.png",
                f"{args.molecule}: OpenMM TorchForce {args.ensemble.upper()} "
                f"on {simulation.context.getPlatform().getName()}")
    etot = np.array([r["etot_eV"] for r in rows]) * EV_TO_KJ_PER_MOL
    print(f"{args.steps} steps ({args.ensemble}): E_tot(end) - E_tot(0) = {etot[-1] - etot[0]:+.4f} kJ/mol; "
          f"wrote {args.output_dir}/openmm.pdb and openmm_energy.png")


if __name__ == "__main__":
    main()
