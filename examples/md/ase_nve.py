"""NVE (velocity Verlet) molecular dynamics of a small molecule with ASE: energy conservation check.

    python examples/md/ase_nve.py [--model model.pt --fidelity 0] [--short]

Writes OUTPUT_DIR/nve.traj (ASE trajectory), nve_energy.csv and nve_energy.png, and prints the
total-energy drift.
"""

import _helpers
import numpy as np
from ase import units
from ase.build import molecule
from ase.io import Trajectory
from ase.md.verlet import VelocityVerlet

from aimnet2mult import AIMNet2Mult
from aimnet2mult.md import energy_row, plot_energy, thermalize, write_log
from aimnet2mult.units import EV_TO_KJ_PER_MOL


def main():
    p = _helpers.parser(__doc__, steps=2000, short_steps=40)
    p.add_argument("--molecule", default="trans-butane", help="ASE G2 molecule name (default trans-butane)")
    p.add_argument("--temperature", type=float, default=300.0, help="initial temperature in K (default 300)")
    p.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    args = _helpers.parse(p)

    atoms = molecule(args.molecule)
    atoms.calc = AIMNet2Mult(args.model, fidelity=args.fidelity, charge=0, mult=1, device=args.device)
    thermalize(atoms, args.temperature, np.random.default_rng(42))
    dyn = VelocityVerlet(atoms, args.timestep * units.fs)

    traj = Trajectory(args.output_dir / "nve.traj", "w", atoms)
    rows = []
    guard = _helpers.make_guard(len(atoms), args.temperature, args.timestep, nve=True)

    def log():
        rows.append(energy_row(dyn.nsteps, args.timestep, atoms.get_potential_energy(),
                               atoms.get_kinetic_energy(), len(atoms)))
        _helpers.check_or_stop(guard, rows[-1], atoms.positions, rows, args.output_dir / "nve_energy.csv")

    dyn.attach(traj.write, interval=10)
    dyn.attach(log, interval=10)
    dyn.run(args.steps)
    traj.close()
    write_log(rows, args.output_dir / "nve_energy.csv")
    plot_energy(rows, args.output_dir / "nve_energy.png", f"{args.molecule}: ASE NVE, {args.timestep} fs")
    etot = np.array([r["etot_eV"] for r in rows]) * EV_TO_KJ_PER_MOL
    print(f"{args.steps} steps: total-energy drift {etot[-1] - etot[0]:+.4f} kJ/mol "
          f"(max deviation {np.abs(etot - etot[0]).max():.4f} kJ/mol); wrote {args.output_dir}/nve.traj")


if __name__ == "__main__":
    main()
