"""``aimnet2mult md``: molecular dynamics of a structure file with one fidelity of a model.

    aimnet2mult md mol.xyz --model model.pt --fidelity 0 --engine ase --ensemble nvt --steps 2000
    aimnet2mult md mol.pdb --model model_fid0.jpt --engine openmm --ensemble nve --timestep 0.5

Writes ``PREFIX.xyz`` (extended XYZ trajectory with energies), ``PREFIX_energy.csv`` and
``PREFIX_energy.png`` (potential, kinetic and total energy and temperature against time), with
``PREFIX`` = ``--output`` (default: the input's name + ``_md``). Energies are in eV for both
engines; the temperature is 2 E_kin / (3 N k_B).

Guards (checked at every logged step, ``--interval``): the run stops with an error and exit code 3,
keeping what it wrote so far, when positions or energies become non-finite, the temperature exceeds
``--max-temperature`` (default: 10 x the target or 5,000 K, whichever is larger), or, in NVE, the
total energy drifts by more than ``--max-drift`` eV per atom (default 0.05) from its start.

Engines: ``ase`` (the ``AIMNet2Mult`` calculator; Langevin for NVT, velocity Verlet for NVE) and
``openmm`` (openmm-torch ``TorchForce`` or ``PythonForce``; ``LangevinMiddleIntegrator`` for NVT,
``VerletIntegrator`` for NVE). The structure's cell and PBC (extended XYZ ``Lattice``, PDB
``CRYST1``) make the run periodic. Charge and multiplicity: the command line, else the file's
``charge``/``mult`` info, else 0 and 1. Periodic systems use a periodic Coulomb method:
``--coulomb auto`` (default: 'dsf' unless the model's own method is periodic) or ``ewald``/``dsf``.
"""

import argparse
import csv
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .model_config import COULOMB_METHODS
from .units import BOLTZMANN_EV_PER_K as KB_EV
from .units import EV_TO_KJ_PER_MOL, NM_TO_ANGSTROM

FIELDS = ["step", "time_ps", "epot_eV", "ekin_eV", "etot_eV", "temperature_K"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="structure file (XYZ, extended XYZ, PDB: anything ase.io.read reads)")
    parser.add_argument("--model", help="checkpoint (.pt) or compiled potential (.jpt); default: the bundled model")
    parser.add_argument("--fidelity", help="fidelity index or name (required for a multi-fidelity checkpoint)")
    parser.add_argument("--engine", choices=["ase", "openmm"], default="ase", help="MD engine (default ase)")
    parser.add_argument("--ensemble", choices=["nvt", "nve"], default="nvt", help="default nvt (Langevin)")
    parser.add_argument("--steps", type=int, default=1000, help="number of MD steps (default 1000)")
    parser.add_argument("--timestep", type=float, default=0.5, help="time step in fs (default 0.5)")
    parser.add_argument("--temperature", type=float, default=300.0,
                        help="K: thermostat and initial velocities (default 300)")
    parser.add_argument("--friction", type=float, default=1.0, help="Langevin friction in 1/ps (default 1)")
    parser.add_argument("--charge", type=float, help="total charge (e); default from the file's info or 0")
    parser.add_argument("--mult", type=int, help="spin multiplicity 2S+1; default from the file's info or 1")
    parser.add_argument("--interval", type=int, default=10, help="steps between trajectory frames/log rows")
    parser.add_argument("--output", help="output prefix (default: INPUT stem + '_md' beside the input)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for velocities and the thermostat")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--platform", help="OpenMM platform (default: fastest available)")
    parser.add_argument("--openmm-force", choices=["torch", "python"], default="torch",
                        help="OpenMM force: openmm-torch TorchForce (default) or PythonForce")
    parser.add_argument("--coulomb", choices=["auto", *COULOMB_METHODS], default="auto",
                        help="Coulomb method (default auto: the model's own for molecules, 'dsf' for periodic "
                             "systems unless the model's method is periodic)")
    parser.add_argument("--max-temperature", type=float,
                        help="K: stop when the temperature exceeds it (default max(10 x --temperature, 5000))")
    parser.add_argument("--max-drift", type=float, default=DEFAULT_MAX_DRIFT,
                        help="eV per atom: NVE stops when |E_tot - E_tot(0)| / N exceeds it (default 0.05)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plot", action="store_true", help="no energy plot (PNG; needs matplotlib)")


def _progress(total: int, disable: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: no bar then
        class _Null:
            def update(self, n):
                pass

            def close(self):
                pass

        return _Null()
    return tqdm(total=total, unit="step", disable=disable, desc="MD")


def thermalize(atoms, temperature_K: float, rng) -> None:
    """Maxwell-Boltzmann momenta at ``temperature_K``, no centre-of-mass motion, and no rotation for
    a non-periodic system."""
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):  # ASE >= 3.29
        vd.thermalize_momenta(atoms, temperature_K, rng=rng)
    else:
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    vd.Stationary(atoms)
    if not atoms.pbc.any():
        vd.ZeroRotation(atoms)


def energy_row(step: int, dt_fs: float, epot: float, ekin: float, n_atoms: int) -> Dict[str, float]:
    """One row of the energy log (energies in eV, time in ps, T = 2 E_kin / (3 N k_B))."""
    return {"step": step, "time_ps": step * dt_fs / 1000.0, "epot_eV": epot, "ekin_eV": ekin,
            "etot_eV": epot + ekin, "temperature_K": 2.0 * ekin / (3.0 * n_atoms * KB_EV)}


def _frame(atoms, row: Dict[str, float]):
    frame = atoms.copy()
    frame.calc = None
    frame.info.update({"step": int(row["step"]), "time_ps": row["time_ps"], "epot_eV": row["epot_eV"],
                       "etot_eV": row["etot_eV"]})
    return frame


def openmm_energies_ev(state) -> Tuple[float, float]:
    """(potential, kinetic) energy in eV of an OpenMM State taken with getEnergy=True."""
    from openmm import unit

    kj = unit.kilojoule_per_mole
    return (state.getPotentialEnergy().value_in_unit(kj) / EV_TO_KJ_PER_MOL,
            state.getKineticEnergy().value_in_unit(kj) / EV_TO_KJ_PER_MOL)


class MDUnstable(RuntimeError):
    """The trajectory left the physical range (non-finite values, runaway temperature, NVE drift)."""


class MDGuard:
    """Checks each logged row; raises :class:`MDUnstable` naming the step, the value and the limit."""

    def __init__(self, n_atoms: int, max_temperature: float, max_drift_per_atom: Optional[float], timestep: float):
        self.n_atoms, self.max_temperature = n_atoms, max_temperature
        self.max_drift, self.timestep = max_drift_per_atom, timestep
        self.e0: Optional[float] = None

    def check(self, row: Dict[str, float], positions) -> None:
        step = int(row["step"])
        hint = f" (time step {self.timestep} fs: try a shorter one)"
        if not all(np.isfinite(row[k]) for k in ("epot_eV", "ekin_eV")) or not np.isfinite(positions).all():
            raise MDUnstable(f"MD became unstable at step {step}: non-finite energies or positions" + hint)
        if self.e0 is None:
            self.e0 = row["etot_eV"]
        if row["temperature_K"] > self.max_temperature:
            raise MDUnstable(f"MD became unstable at step {step}: temperature {row['temperature_K']:.0f} K exceeds "
                             f"--max-temperature {self.max_temperature:.0f} K" + hint)
        drift = abs(row["etot_eV"] - self.e0) / self.n_atoms
        if self.max_drift is not None and drift > self.max_drift:
            raise MDUnstable(f"NVE energy drift at step {step}: |E_tot - E_tot(0)| = {drift:.4g} eV per atom "
                             f"exceeds --max-drift {self.max_drift:g} eV per atom" + hint)


DEFAULT_MAX_DRIFT = 0.05  # eV per atom


def default_guard(n_atoms: int, temperature: float, timestep: float, nve: bool,
                  max_temperature: Optional[float] = None, max_drift: float = DEFAULT_MAX_DRIFT) -> MDGuard:
    """The guard with its defaults: temperature limit max(10 x target, 5,000 K); the drift limit
    only for NVE."""
    limit = max_temperature if max_temperature is not None else max(10.0 * temperature, 5000.0)
    return MDGuard(n_atoms, limit, max_drift if nve else None, timestep)


def make_guard(args, n_atoms: int) -> MDGuard:
    return default_guard(n_atoms, args.temperature, args.timestep, args.ensemble == "nve",
                         getattr(args, "max_temperature", None), getattr(args, "max_drift", DEFAULT_MAX_DRIFT))


def run_in_chunks(advance, record, steps: int, interval: int, bar) -> None:
    """Record step 0, then advance ``interval`` steps at a time (the last chunk may be shorter),
    recording after each chunk and updating the progress bar."""
    record(0)
    done = 0
    while done < steps:
        n = min(interval, steps - done)
        advance(n)
        done += n
        record(done)
        bar.update(n)
    bar.close()


def run_ase(atoms, source, fidelity, charge, mult, args, traj_path: Path,
            rows: Optional[List[Dict[str, float]]] = None) -> List[Dict[str, float]]:
    from ase import units
    from ase.io import write
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    from .calculators import AIMNet2Mult

    atoms.calc = AIMNet2Mult(source, fidelity=fidelity, charge=charge, mult=mult,
                             coulomb=getattr(args, "coulomb", "auto"))
    rng = np.random.default_rng(args.seed)
    thermalize(atoms, args.temperature, rng)
    if args.ensemble == "nvt":
        dyn = Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature,
                       friction=args.friction / (1000.0 * units.fs), fixcm=False, rng=rng)
    else:
        dyn = VelocityVerlet(atoms, args.timestep * units.fs)
    rows = [] if rows is None else rows
    bar = _progress(args.steps, args.no_progress)
    guard = make_guard(args, len(atoms))

    def record(step):
        row = energy_row(step, args.timestep, atoms.get_potential_energy(), atoms.get_kinetic_energy(), len(atoms))
        rows.append(row)
        write(traj_path, _frame(atoms, row), format="extxyz", append=step > 0)
        guard.check(row, atoms.positions)

    run_in_chunks(dyn.run, record, args.steps, args.interval, bar)
    return rows


def openmm_topology(atoms):
    """OpenMM Topology (one chain, one residue) and box of an ASE Atoms (cell rows, Å -> nm)."""
    from openmm import Vec3, app

    top = app.Topology()
    chain = top.addChain()
    res = top.addResidue("MOL", chain)
    for i, z in enumerate(atoms.numbers):
        element = app.Element.getByAtomicNumber(int(z))
        top.addAtom(f"{element.symbol}{i + 1}", element, res)
    if atoms.pbc.any():
        if not atoms.pbc.all():
            raise ValueError("OpenMM needs periodicity in all three directions or none; atoms.pbc is "
                             f"{atoms.pbc.tolist()}")
        cell = np.asarray(atoms.cell) / NM_TO_ANGSTROM
        if abs(cell[0, 1]) > 1e-9 or abs(cell[0, 2]) > 1e-9 or abs(cell[1, 2]) > 1e-9:
            raise ValueError("OpenMM needs the cell in reduced form (a along x, b in the xy plane): "
                             "use atoms.cell.standard_form() and rotate the positions first")
        top.setPeriodicBoxVectors([Vec3(*row) for row in cell])
    return top


def _openmm_platform(name: Optional[str]):
    import openmm

    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name:
        if name not in names:
            raise ValueError(f"--platform {name!r}: no such OpenMM platform; available: {', '.join(names)}")
        return openmm.Platform.getPlatformByName(name)
    for candidate in ("CUDA", "OpenCL", "CPU", "Reference"):
        if candidate in names:
            return openmm.Platform.getPlatformByName(candidate)
    raise ValueError("no OpenMM platform available")


def run_openmm(atoms, source, fidelity, charge, mult, args, traj_path: Path,
               rows: Optional[List[Dict[str, float]]] = None) -> List[Dict[str, float]]:
    import openmm
    from ase.io import write
    from openmm import unit

    from .calculators import ModelSource
    from .openmm.torchforce import create_torch_force

    top = openmm_topology(atoms)
    system = openmm.System()
    for m in atoms.get_masses():
        system.addParticle(float(m))
    if top.getPeriodicBoxVectors() is not None:
        system.setDefaultPeriodicBoxVectors(*top.getPeriodicBoxVectors())
    if args.openmm_force == "torch":
        # built on the CPU: openmm-torch moves the module to the platform's device
        cpu_source = source if str(source.device) == "cpu" else ModelSource(source.path or source.checkpoint, "cpu")
        force = create_torch_force(cpu_source, fidelity, topology=top, charge=charge, mult=mult,
                                   coulomb=getattr(args, "coulomb", "auto"))
    else:
        from .openmm.pythonforce import create_python_force

        force = create_python_force(source.path or source.checkpoint, fidelity, topology=top, charge=charge,
                                    mult=mult, device=args.device, coulomb=getattr(args, "coulomb", "auto"))
    system.addForce(force)
    dt = args.timestep * unit.femtoseconds
    if args.ensemble == "nvt":
        integrator = openmm.LangevinMiddleIntegrator(args.temperature * unit.kelvin,
                                                     args.friction / unit.picosecond, dt)
        integrator.setRandomNumberSeed(args.seed)
    else:
        integrator = openmm.VerletIntegrator(dt)
    context = openmm.Context(system, integrator, _openmm_platform(args.platform))
    context.setPositions(atoms.positions / NM_TO_ANGSTROM)
    context.setVelocitiesToTemperature(args.temperature * unit.kelvin, args.seed)
    rows = [] if rows is None else rows
    frame = atoms.copy()
    bar = _progress(args.steps, args.no_progress)
    guard = make_guard(args, len(atoms))

    def record(step):
        st = context.getState(getEnergy=True, getPositions=True)
        epot, ekin = openmm_energies_ev(st)
        frame.positions = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer) * NM_TO_ANGSTROM
        row = energy_row(step, args.timestep, epot, ekin, len(atoms))
        rows.append(row)
        write(traj_path, _frame(frame, row), format="extxyz", append=step > 0)
        guard.check(row, frame.positions)

    run_in_chunks(integrator.step, record, args.steps, args.interval, bar)
    return rows


def write_log(rows: List[Dict[str, float]], path: Path) -> Path:
    """The energy log as CSV, written atomically."""
    import io

    from .io_utils import atomic_write_text

    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def plot_energy(rows: List[Dict[str, float]], path: Path, title: str = "") -> Path:
    """PNG with potential, kinetic and total energy (eV, relative to the first total energy) and the
    temperature against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r["time_ps"] for r in rows])
    e0 = rows[0]["etot_eV"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for key, label in (("epot_eV", "E_pot - E_tot(0)"), ("ekin_eV", "E_kin"), ("etot_eV", "E_tot - E_tot(0)")):
        ax1.plot(t, np.array([r[key] for r in rows]) - (e0 if key != "ekin_eV" else 0.0), label=label)
    ax1.set_ylabel("energy (eV)")
    ax1.legend()
    ax2.plot(t, [r["temperature_K"] for r in rows], color="tab:red")
    ax2.set_ylabel("temperature (K)")
    ax2.set_xlabel("time (ps)")
    if title:
        ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(args) -> int:
    from ase.io import read

    from .calculators import ModelSource
    from .tools.allocator import keep_freed_memory

    keep_freed_memory()  # large systems: no mmap/munmap of the temporaries at every step

    inp = Path(args.input)
    if not inp.is_file():
        raise FileNotFoundError(f"structure file not found: {inp}")
    if args.steps < 0 or args.interval < 1 or args.timestep <= 0:
        raise ValueError("--steps must be >= 0, --interval >= 1 and --timestep > 0")
    if not args.temperature > 0 or not np.isfinite(args.temperature):
        raise ValueError(f"--temperature must be a positive number of kelvin, got {args.temperature}")
    if args.friction < 0 or not np.isfinite(args.friction):
        raise ValueError(f"--friction must be >= 0 (1/ps), got {args.friction}")
    if getattr(args, "max_temperature", None) is not None and not args.max_temperature > args.temperature:
        raise ValueError(f"--max-temperature ({args.max_temperature}) must exceed --temperature ({args.temperature})")
    if not getattr(args, "max_drift", DEFAULT_MAX_DRIFT) > 0:
        raise ValueError(f"--max-drift must be a positive energy per atom (eV), got {args.max_drift}")
    if not getattr(args, "no_plot", False):
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # fail before the run, not after it
            raise ValueError("the energy plot needs matplotlib: pip install matplotlib (or run with --no-plot)")
    try:
        atoms = read(str(inp))
    except Exception as exc:  # ASE raises many types for garbled files, unknown elements, bad numbers
        raise ValueError(f"cannot read the structure file {inp}: {type(exc).__name__}: {exc}") from None
    if len(atoms) == 0:
        raise ValueError(f"the structure file {inp} holds no atoms")
    charge = args.charge if args.charge is not None else float(atoms.info.get("charge", 0))
    mult = args.mult if args.mult is not None else int(atoms.info.get("mult", atoms.info.get("spin", 1)))
    fidelity = args.fidelity
    # resolve model and fidelity once, before anything runs: clear errors for bad files/fidelities
    source = ModelSource(args.model, args.device)
    pot = source.potential(fidelity)
    pot.check_elements(atoms.numbers)
    pot.coulomb_setting(bool(np.any(atoms.pbc)), getattr(args, "coulomb", "auto"))  # e.g. 'simple' with PBC
    prefix = Path(args.output) if args.output else inp.with_name(inp.stem + "_md")
    from .io_utils import refuse_to_overwrite_inputs

    outputs = [prefix.with_name(prefix.name + ext) for ext in (".xyz", "_energy.csv", "_energy.png")]
    refuse_to_overwrite_inputs(outputs, [inp, args.model], "md")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    traj = outputs[0]
    engine = run_ase if args.engine == "ase" else run_openmm
    rows: List[Dict[str, float]] = []
    failure: Optional[MDUnstable] = None
    try:
        engine(atoms, source, pot.fidelity if fidelity is None else fidelity, charge, mult, args, traj, rows)
    except MDUnstable as exc:
        failure = exc
    except OSError as exc:  # the trajectory append failed (e.g. a full disk)
        from .io_utils import write_error

        raise write_error(traj, exc, f" at step {rows[-1]['step'] if rows else 0}") from None
    log = write_log(rows, prefix.with_name(prefix.name + "_energy.csv"))
    if failure is not None:
        import sys

        print(f"error: {failure}; the trajectory and energy log up to that step are in {traj} and {log}",
              file=sys.stderr)
        return 3
    png = None if getattr(args, "no_plot", False) else plot_energy(
        rows, prefix.with_name(prefix.name + "_energy.png"),
        f"{inp.name}: {args.engine} {args.ensemble.upper()}, fidelity {pot.fidelity} '{pot.fidelity_name}'")
    drift = rows[-1]["etot_eV"] - rows[0]["etot_eV"]
    written = ", ".join(str(f) for f in (traj, log, png) if f)
    print(f"{args.steps} steps of {args.timestep} fs ({args.engine}, {args.ensemble}); "
          f"E_tot drift {drift * EV_TO_KJ_PER_MOL:+.4f} kJ/mol; wrote {written}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Stand-alone entry (``python -m aimnet2mult.md``); the same as ``aimnet2mult md``."""
    import sys

    parser = argparse.ArgumentParser(prog="aimnet2mult md", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
