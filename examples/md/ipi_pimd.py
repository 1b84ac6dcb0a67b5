"""Path-integral NVT of one water molecule with i-PI (4 beads), aimnet2mult as its socket client.

    python examples/md/ipi_pimd.py [--model model.pt --fidelity 0] [--short]

Starts the i-PI server on examples/ipi/water_pimd.xml (a private UNIX socket address, the step
count of this run), connects ``aimnet2mult ipi`` to it in this process, and converts i-PI's
properties into OUTPUT_DIR/ipi_energy.csv (epot = the bead-averaged potential; etot = i-PI's
conserved quantity, which includes the ring-polymer springs and the thermostat's work; ekin =
their difference; temperature = i-PI's) and ipi_energy.png. i-PI's own outputs (water_pimd.out,
water_pimd.pos_K.xyz) stay in OUTPUT_DIR.
"""

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import _helpers
import numpy as np

from aimnet2mult.engines.ipi import run_client
from aimnet2mult.md import plot_energy, write_log

IPI_DIR = Path(__file__).resolve().parent.parent / "ipi"


def main():
    p = _helpers.parser(__doc__, steps=200, short_steps=10)
    args = _helpers.parse(p)
    out = args.output_dir
    shutil.copy(IPI_DIR / "water.xyz", out / "water.xyz")
    address = f"aimnet2mult_{uuid.uuid4().hex[:8]}"
    xml = (IPI_DIR / "water_pimd.xml").read_text().replace("aimnet2mult_water", address)
    xml = xml.replace("<total_steps> 20 </total_steps>", f"<total_steps> {args.steps} </total_steps>")
    (out / "input.xml").write_text(xml)
    server_exe = Path(sys.executable).with_name("i-pi")
    server = subprocess.Popen([str(server_exe if server_exe.exists() else "i-pi"), "input.xml"], cwd=out,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import os

        cwd = os.getcwd()
        os.chdir(out)
        try:
            run_client("water.xyz", args.model, args.fidelity, unix=address, timeout=120)
        finally:
            os.chdir(cwd)
        log, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    if server.returncode != 0:
        raise SystemExit(f"i-pi failed:\n{log[-2000:]}")
    props = np.loadtxt(out / "water_pimd.out", ndmin=2)  # step, time/ps, conserved, T/K, potential (eV)
    rows = [{"step": int(r[0]), "time_ps": r[1], "epot_eV": r[4], "ekin_eV": r[2] - r[4], "etot_eV": r[2],
             "temperature_K": r[3]} for r in props]
    write_log(rows, out / "ipi_energy.csv")
    plot_energy(rows, out / "ipi_energy.png", "water: i-PI path-integral NVT, 4 beads")
    print(f"{args.steps} i-PI steps (4 beads, 300 K): mean temperature {props[:, 3].mean():.1f} K, conserved "
          f"quantity drift {props[-1, 2] - props[0, 2]:+.5f} eV; wrote {out}")


if __name__ == "__main__":
    main()
