"""NVE molecular dynamics inside LAMMPS (``fix external``) of a molecule in a periodic box.

    python examples/md/lammps_nve.py [--model model.pt --fidelity 0] [--short]
    mpirun -np 2 python examples/md/lammps_nve.py ...        # the same trajectory on 2 ranks

Writes OUTPUT_DIR/system.data and in.lammps (a plain LAMMPS input with ``fix aimnet all external
pf/callback 1 1``; ``aimnet2mult lammps in.lammps --fidelity K --elements ...`` runs it too),
log.lammps, lammps.dump, lammps_energy.csv and lammps_energy.png, and prints the total-energy drift.
"""

import _helpers
import numpy as np
from ase.build import molecule
from ase.io import write

from aimnet2mult.engines.lammps import run_input
from aimnet2mult.md import energy_row, plot_energy, write_log
from aimnet2mult.units import EV_TO_KJ_PER_MOL

INPUT = """# {molecule} in a periodic {box} A box, NVE with aimnet2mult forces (fix external)
units metal
atom_style atomic
boundary p p p
read_data system.data
fix aimnet all external pf/callback 1 1
velocity all create {temperature} 4928459 mom yes rot yes dist gaussian
timestep {timestep_ps}
fix nve all nve
thermo_style custom step pe ke etotal temp press
thermo_modify format float %20.10f
thermo {every}
dump traj all custom {every} lammps.dump id type x y z
dump_modify traj sort id
run {steps}
"""


def thermo_rows(log_path):
    """(step, pe, ke, etotal) rows of the thermo output in a LAMMPS log."""
    rows, inside = [], False
    for line in log_path.read_text().splitlines():
        words = line.split()
        if words[:2] == ["Step", "PotEng"]:
            inside = True
        elif inside and line.startswith("Loop time"):
            inside = False
        elif inside and words:
            rows.append([float(w) for w in words[:4]])
    return rows


def main():
    p = _helpers.parser(__doc__, steps=2000, short_steps=40)
    p.add_argument("--molecule", default="trans-butane", help="ASE G2 molecule name (default trans-butane)")
    p.add_argument("--box", type=float, default=12.0, help="cubic periodic box edge in Å (default 12)")
    p.add_argument("--temperature", type=float, default=300.0, help="initial temperature in K (default 300)")
    p.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    args = _helpers.parse(p)

    atoms = molecule(args.molecule)
    atoms.cell = [args.box] * 3
    atoms.center()
    atoms.pbc = True
    species = sorted(set(atoms.get_chemical_symbols()), key=lambda s: atoms.get_chemical_symbols().index(s))
    out = args.output_dir
    write(out / "system.data", atoms, format="lammps-data", specorder=species, masses=True, units="metal")
    every = 10 if args.steps >= 20 else 1
    (out / "in.lammps").write_text(INPUT.format(molecule=args.molecule, box=args.box, temperature=args.temperature,
                                                timestep_ps=args.timestep / 1000.0, every=every, steps=args.steps))
    import os

    cwd = os.getcwd()
    os.chdir(out)  # LAMMPS resolves system.data and writes its outputs relative to the working directory
    try:
        run_input("in.lammps", args.model, args.fidelity, species, log="log.lammps", cmdargs=["-screen", "none"])
    finally:
        os.chdir(cwd)
    rows = [energy_row(int(step), args.timestep, pe, ke, len(atoms)) for step, pe, ke, _ in thermo_rows(
        out / "log.lammps")]
    write_log(rows, out / "lammps_energy.csv")
    plot_energy(rows, out / "lammps_energy.png", f"{args.molecule}: LAMMPS NVE, {args.timestep} fs")
    etot = np.array([r["etot_eV"] for r in rows]) * EV_TO_KJ_PER_MOL
    print(f"{args.steps} steps: total-energy drift {etot[-1] - etot[0]:+.4f} kJ/mol "
          f"(max deviation {np.abs(etot - etot[0]).max():.4f} kJ/mol); wrote {out}/lammps.dump")


if __name__ == "__main__":
    main()
