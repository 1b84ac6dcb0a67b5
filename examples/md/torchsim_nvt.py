"""Batched Langevin NVT of many small molecules with torch-sim: all of them in one model call per step.

    python examples/md/torchsim_nvt.py [--model model.pt --fidelity 0] [--short] [--systems 64]

Writes OUTPUT_DIR/torchsim_energy.csv and torchsim_energy.png (energies summed over all systems,
the temperature of all atoms together), torchsim_final.xyz (the final structures), and prints the
mean temperature of the second half of the run.
"""

import _helpers
import numpy as np
import torch
from ase.io import write

from aimnet2mult.engines.torchsim import AIMNet2MultModel
from aimnet2mult.md import energy_row, plot_energy, write_log
from aimnet2mult.tools.g2_molecules import small_molecules


def main():
    p = _helpers.parser(__doc__, steps=1000, short_steps=20)
    p.add_argument("--systems", type=int, default=64, help="molecules simulated together (default 64)")
    p.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    p.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    args = _helpers.parse(p)
    import torch_sim as ts
    from torch_sim.units import UnitSystem

    model = AIMNet2MultModel(args.model, fidelity=args.fidelity, device=args.device or "cpu")
    systems = small_molecules(args.systems, set(model.potential.elements) or {1, 6, 7, 8})
    state = ts.initialize_state(systems, model.device, model.dtype)
    # torch-sim's metal units, as ts.integrate sets them: kT in eV, time in Å sqrt(amu/eV) from ps
    kt = torch.tensor(args.temperature * float(UnitSystem.metal.temperature), dtype=model.dtype)
    dt = torch.tensor(args.timestep / 1000.0 * float(UnitSystem.metal.time), dtype=model.dtype)
    init_fn, update_fn = ts.nvt_langevin(model=model, dt=dt, kT=kt, seed=7)
    state = init_fn(state)
    n_atoms = state.positions.shape[0]
    rows = []
    for step in range(args.steps + 1):
        if step:
            state = update_fn(state, kT=kt)
        if step % 10 == 0 or step == args.steps:
            ekin = float((0.5 * (state.momenta ** 2).sum(-1) / state.masses).sum())
            rows.append(energy_row(step, args.timestep, float(state.energy.sum()), ekin, n_atoms))
    out = args.output_dir
    write_log(rows, out / "torchsim_energy.csv")
    plot_energy(rows, out / "torchsim_energy.png",
                f"torch-sim: {args.systems} molecules, Langevin {args.temperature:g} K, {args.timestep} fs")
    write(out / "torchsim_final.xyz", state.to_atoms())
    half = [r["temperature_K"] for r in rows[len(rows) // 2:]]
    print(f"{args.steps} steps of {args.systems} molecules ({n_atoms} atoms) in one batch: mean temperature "
          f"{np.mean(half):.1f} K over the second half (target {args.temperature:g} K); wrote {out}")


if __name__ == "__main__":
    main()
