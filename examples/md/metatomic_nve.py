"""A fidelity exported as a metatomic model, run with metatomic-ase's calculator (NVE, ASE).

    python examples/md/metatomic_nve.py [--model model.pt --fidelity 0] [--short]

Exports the checkpoint with ``aimnet2mult metatomic`` semantics (one energy variant per fidelity;
every engine with a metatomic interface can load the file), then runs velocity-Verlet MD of a
molecule with ``MetatomicCalculator(file, variants={"energy": <the fidelity's variant>})``.
Writes OUTPUT_DIR/model.mta.pt, metatomic_nve.traj, metatomic_energy.csv and metatomic_energy.png.
"""

import _helpers
import numpy as np
from ase import units
from ase.build import molecule
from ase.io import Trajectory
from ase.md.verlet import VelocityVerlet

from aimnet2mult.engines.metatomic import export_metatomic
from aimnet2mult.md import energy_row, plot_energy, thermalize, write_log
from aimnet2mult.units import EV_TO_KJ_PER_MOL


def main():
    p = _helpers.parser(__doc__, steps=1000, short_steps=20)
    p.add_argument("--molecule", default="CH3CH2OH", help="ASE G2 molecule name (default ethanol)")
    p.add_argument("--temperature", type=float, default=300.0, help="initial temperature in K (default 300)")
    p.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    args = _helpers.parse(p)
    from metatomic_ase import MetatomicCalculator

    from aimnet2mult.calculators import ModelSource

    source = ModelSource(args.model, "cpu")
    k = source.resolve_fidelity(int(args.fidelity) if str(args.fidelity).isdigit() else args.fidelity)
    exported = export_metatomic(args.model, str(args.output_dir / "model.mta.pt"), fidelities=[k])
    variant = next(v for v, index in exported["variants"].items() if index == k)
    print(f"exported fidelity {k} as metatomic variant energy/{variant}: {exported['path']}")

    atoms = molecule(args.molecule)
    atoms.calc = MetatomicCalculator(exported["path"], variants={"energy": variant}, device="cpu")
    thermalize(atoms, args.temperature, np.random.default_rng(42))
    dyn = VelocityVerlet(atoms, args.timestep * units.fs)
    traj = Trajectory(args.output_dir / "metatomic_nve.traj", "w", atoms)
    rows = []

    def log():
        rows.append(energy_row(dyn.nsteps, args.timestep, atoms.get_potential_energy(),
                               atoms.get_kinetic_energy(), len(atoms)))

    dyn.attach(traj.write, interval=5)
    dyn.attach(log, interval=5)
    dyn.run(args.steps)
    traj.close()
    write_log(rows, args.output_dir / "metatomic_energy.csv")
    plot_energy(rows, args.output_dir / "metatomic_energy.png", f"{args.molecule}: metatomic-ase NVE")
    etot = np.array([r["etot_eV"] for r in rows]) * EV_TO_KJ_PER_MOL
    print(f"{args.steps} steps: total-energy drift {etot[-1] - etot[0]:+.4f} kJ/mol "
          f"(max deviation {np.abs(etot - etot[0]).max():.4f} kJ/mol)")


if __name__ == "__main__":
    main()
