"""MD speed inside the other engines, against ASE in the same run (issue 22).

    python bench/bench_engines.py [--out bench_out] [--quick] [--threads 2]

* LAMMPS (``fix external``, one rank): NVE steps/s of trans-butane in a 12 Å periodic box, against
  ASE's velocity Verlet on the same system with the same potential (``AIMNet2Mult``);
* torch-sim, batched: molecule-steps/s of Langevin NVT of 64 small molecules in one flat batch,
  against 64 ASE Langevin runs of the same molecules one after another.

Model: the bundled default model, fidelity 0. Writes OUT/engines.json; prints the ratios (> 1 = the
engine is faster than ASE). Timings are wall-clock on a shared machine: ratios count, not absolutes.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def butane_box(edge=12.0):
    from ase.build import molecule

    atoms = molecule("trans-butane")
    atoms.cell = [edge] * 3
    atoms.center()
    atoms.pbc = True
    return atoms


def ase_nve_steps_per_s(atoms, steps: int) -> float:
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from aimnet2mult import AIMNet2Mult

    atoms = atoms.copy()
    atoms.calc = AIMNet2Mult(fidelity=0)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    dyn.run(5)  # warm-up (first calls build the potential)
    t0 = time.perf_counter()
    dyn.run(steps)
    return steps / (time.perf_counter() - t0)


def lammps_nve_steps_per_s(atoms, steps: int) -> float:
    from ase.io import write

    from aimnet2mult.engines.lammps import attach, import_lammps

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "system.data"
        write(data, atoms, format="lammps-data", specorder=["H", "C"], masses=True, units="metal")
        lmp = import_lammps()(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        lmp.commands_string(f"""units metal
atom_style atomic
boundary p p p
read_data {data}
fix aimnet all external pf/callback 1 1
velocity all create 300.0 4928459 mom yes rot yes dist gaussian
timestep 0.0005
fix nve all nve
thermo 0
""")
        keep = attach(lmp, "aimnet", None, fidelity=0, elements=["H", "C"])
        lmp.command("run 5")  # warm-up
        t0 = time.perf_counter()
        lmp.command(f"run {steps}")
        rate = steps / (time.perf_counter() - t0)
        del keep
        lmp.close()
    return rate


def torchsim_molecule_steps_per_s(n_systems: int, steps: int):
    import torch
    import torch_sim as ts
    from ase import units
    from ase.md.langevin import Langevin
    from torch_sim.units import UnitSystem

    from aimnet2mult import AIMNet2Mult
    from aimnet2mult.engines.torchsim import AIMNet2MultModel
    from aimnet2mult.tools.g2_molecules import small_molecules

    model = AIMNet2MultModel(None, fidelity=0)
    systems = small_molecules(n_systems, set(model.potential.elements))
    state = ts.initialize_state(systems, model.device, model.dtype)
    kt = torch.tensor(300.0 * float(UnitSystem.metal.temperature), dtype=model.dtype)
    dt = torch.tensor(0.0005 * float(UnitSystem.metal.time), dtype=model.dtype)
    init_fn, update_fn = ts.nvt_langevin(model=model, dt=dt, kT=kt, seed=1)
    state = init_fn(state)
    state = update_fn(state, kT=kt)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        state = update_fn(state, kT=kt)
    batched = n_systems * steps / (time.perf_counter() - t0)
    calc = AIMNet2Mult(fidelity=0)
    atoms_list = [a.copy() for a in systems]
    a0 = atoms_list[0].copy()
    a0.calc = calc
    Langevin(a0, 0.5 * units.fs, temperature_K=300, friction=0.01, fixcm=False,
             rng=np.random.default_rng(0)).run(2)  # warm-up
    t0 = time.perf_counter()
    for i, atoms in enumerate(atoms_list):
        atoms.calc = calc
        Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01, fixcm=False,
                 rng=np.random.default_rng(i)).run(steps)
    one_by_one = n_systems * steps / (time.perf_counter() - t0)
    return batched, one_by_one, int(state.positions.shape[0])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_out")
    p.add_argument("--quick", action="store_true", help="smoke settings (few steps)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    p.add_argument("--systems", type=int, default=64)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    steps_md = 20 if args.quick else 300
    steps_ts = 3 if args.quick else 30
    result = {"benchmark": "engines", "threads": args.threads, "model": "bundled default model, fidelity 0"}
    box = butane_box()
    ase_rate = ase_nve_steps_per_s(box, steps_md)
    try:
        lmp_rate = lammps_nve_steps_per_s(box, steps_md)
        result["lammps"] = {"system": f"trans-butane in a 12 A periodic box ({len(box)} atoms), NVE 0.5 fs",
                            "steps": steps_md, "lammps_steps_per_s": lmp_rate, "ase_steps_per_s": ase_rate,
                            "ratio_vs_ase": lmp_rate / ase_rate}
        print(f"LAMMPS fix external: {lmp_rate:.1f} steps/s, ASE {ase_rate:.1f} steps/s: "
              f"{lmp_rate / ase_rate:.2f}x ASE ({len(box)} atoms, periodic)")
    except ImportError as exc:
        result["lammps"] = {"left_out": f"lammps not installed: {exc}"}
    try:
        batched, one_by_one, n_atoms = torchsim_molecule_steps_per_s(args.systems, steps_ts)
        result["torchsim"] = {"systems": args.systems, "atoms": n_atoms, "steps": steps_ts,
                              "batched_molecule_steps_per_s": batched,
                              "ase_one_by_one_molecule_steps_per_s": one_by_one,
                              "ratio_vs_ase": batched / one_by_one}
        print(f"torch-sim batched: {batched:.1f} molecule-steps/s for {args.systems} molecules ({n_atoms} atoms) in "
              f"one batch, ASE one after another {one_by_one:.1f}: {batched / one_by_one:.2f}x")
    except ImportError as exc:
        result["torchsim"] = {"left_out": f"torch-sim not installed: {exc}"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engines.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
