"""aimnet2mult as an i-PI client (path-integral MD and everything else i-PI drives).

    i-pi input.xml &                                   # the server, with <ffsocket mode='unix'>
    aimnet2mult ipi --model model.pt --fidelity 0 --structure water.xyz --unix aimnet2mult_water

The client speaks i-PI's socket protocol through ASE's ``SocketClient``: for every bead i-PI sends
positions (and the cell), the client answers with the energy, forces and virial of the chosen
fidelity, in i-PI's atomic units (ASE converts from eV, Å). The fidelity is always chosen
explicitly (``--fidelity``, an index or a name). ``--structure`` gives the atom order and elements
(the same file as i-PI's ``<initialize>``); its cell is used only with ``--periodic`` (then the
cell i-PI sends at each step counts, and the virial comes from the potential's stress). Several
clients may connect to one server (i-PI spreads the beads over them). Example: ``examples/ipi/``.
"""

import argparse
from typing import Any, Optional


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint (.pt) or compiled potential (.jpt); default: the bundled model")
    p.add_argument("--fidelity", help="fidelity to run (index or name); required for a multi-fidelity model "
                                      "(without it, the error lists the model's fidelities)")
    p.add_argument("--structure", required=True, help="structure file (XYZ/PDB/...): elements and atom order")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", help="UNIX-socket name of the i-PI <ffsocket mode='unix'> address")
    where.add_argument("--port", type=int, help="TCP port of an <ffsocket mode='inet'> server")
    p.add_argument("--host", default="localhost", help="host of an inet server (default localhost)")
    p.add_argument("--charge", type=float, default=0.0, help="total charge (e)")
    p.add_argument("--mult", type=int, default=1, help="spin multiplicity")
    p.add_argument("--periodic", action="store_true", help="periodic system (the cell comes from i-PI)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the server")


def client_atoms(structure: str, model: Any, fidelity: Any, charge: float = 0.0, mult: int = 1,
                 periodic: bool = False):
    """The ASE Atoms the client evaluates, with the aimnet2mult calculator attached."""
    from ase.io import read

    from ..calculators.ase_calculator import AIMNet2Mult
    from ..calculators.runtime import ModelSource

    ModelSource(model, "cpu").resolve_fidelity(fidelity)  # before connecting: a fidelity is never implicit
    atoms = read(structure)
    atoms.pbc = bool(periodic)
    atoms.calc = AIMNet2Mult(model, fidelity=fidelity, charge=charge, mult=mult)
    return atoms


def run_client(structure: str, model: Any, fidelity: Any, unix: Optional[str] = None, port: Optional[int] = None,
               host: str = "localhost", charge: float = 0.0, mult: int = 1, periodic: bool = False,
               timeout: float = 600.0) -> None:
    """Connect to an i-PI server and answer its force requests until it sends EXIT."""
    import time
    from pathlib import Path

    from ase.calculators.socketio import SocketClient

    atoms = client_atoms(structure, model, fidelity, charge, mult, periodic)
    if unix is not None:  # i-PI creates /tmp/ipi_<address> when it starts listening
        path = Path("/tmp") / f"ipi_{unix}"
        deadline = time.time() + timeout
        while not path.exists():
            if time.time() > deadline:
                raise ValueError(f"no i-PI server listens on the UNIX socket {path} (address '{unix}') after "
                                 f"{timeout:g} s: start i-pi with <ffsocket mode='unix'><address>{unix}</address> "
                                 "first")
            time.sleep(0.1)
    try:
        client = SocketClient(host=host, port=port, unixsocket=unix, timeout=timeout)
    except (ConnectionRefusedError, FileNotFoundError) as exc:
        where = f"UNIX socket '{unix}'" if unix is not None else f"{host}:{port}"
        raise ValueError(f"cannot connect to an i-PI server at {where}: {exc}") from None
    try:
        client.run(atoms, use_stress=bool(periodic))
    finally:
        client.close()


def run(args) -> int:
    fidelity: Any = int(args.fidelity) if str(args.fidelity).isdigit() else args.fidelity  # None stays None
    run_client(args.structure, args.model, fidelity, unix=args.unix, port=args.port, host=args.host,
               charge=args.charge, mult=args.mult, periodic=args.periodic, timeout=args.timeout)
    return 0
