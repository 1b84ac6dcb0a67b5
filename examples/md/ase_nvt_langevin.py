"""NVT molecular dynamics of a small molecule with ASE's Langevin thermostat.

    python examples/md/ase_nvt_langevin.py [--model model.pt --fidelity 0] [--short]

Writes OUTPUT_DIR/nvt.traj (ASE trajectory), nvt_energy.csv and nvt_energy.png.
"""

import _helpers
import numpy as np
from ase import units
from ase.build import molecule
from ase.io import Trajectory
from ase.md.langevin import Langevin

from aimnet2mult import AIMNet2Mult
from aimnet2mult.md import energy_row, plot_energy, thermalize, write_log


def main():
    p = _helpers.parser(__doc__, steps=2000, short_steps=40)
    p.add_argument("--molecule", default="trans-butane", help="ASE G2 molecule name (default trans-butane)")
    p.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    p.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    p.add_argument("--friction", type=float, default=0.01, help="1/fs (default 0.01)")
    args = _helpers.parse(p)

    atoms = molecule(args.molecule)
    atoms.info["charge"] = 0
    atoms.info["mult"] = 1
    atoms.calc = AIMNet2Mult(args.model, fidelity=args.fidelity, device=args.device)
    rng = np.random.default_rng(42)
    thermalize(atoms, args.temperature, rng)
    dyn = Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature,
                   friction=args.friction / units.fs, fixcm=False, rng=rng)

    traj = Trajectory(args.output_dir / "nvt.traj", "w", atoms)
    rows = []
    guard = _helpers.make_guard(len(atoms), args.temperature, args.timestep, nve=False)

    def log():
        rows.append(energy_row(dyn.nsteps, args.timestep, atoms.get_potential_energy(), atoms.get_kinetic_energy(),
                               len(atoms)))
        _helpers.check_or_stop(guard, rows[-1], atoms.positions, rows, args.output_dir / "nvt_energy.csv")

    dyn.attach(traj.write, interval=10)
    dyn.attach(log, interval=10)
    dyn.run(args.steps)
    traj.close()
    write_log(rows, args.output_dir / "nvt_energy.csv")
    plot_energy(rows, args.output_dir / "nvt_energy.png", f"{args.molecule}: ASE Langevin {args.temperature:.0f} K")
    temps = [r["temperature_K"] for r in rows]
    print(f"{args.steps} steps: mean T = {np.mean(temps):.1f} K; wrote {args.output_dir}/nvt.traj and nvt_energy.png")


if __name__ == "__main__":
    main()
