"""Regenerate ``d4_reference.npz``: the DFT-D4 and EEQ(2019) reference data of ``aimnet2mult.nn.d4``.

Source: the table modules of tad-dftd4 0.8.0 (Grimme group, Apache-2.0; its ``reference/d4``
and ``data`` packages, transcribed from the dftd4 Fortran sources) and tad-multicharge 0.5.0
(Apache-2.0; ``param/eeq2019.py``). They are read as data files (each module needs only torch),
because both packages pin ``numpy<2`` and an older tad-mctc and so cannot be installed next to
this package; the vendored file is checked against the dftd4 library itself by
``tests/test_d4.py`` (energies, forces, charges, CNs, C6).

    pip download --no-deps tad-dftd4==0.8.0 tad-multicharge==0.5.0 -d wheels
    python -m aimnet2mult.resources.d4.make_tables wheels/tad_dftd4-0.8.0-py3-none-any.whl \
        wheels/tad_multicharge-0.5.0-py3-none-any.whl

Effective nuclear charges, chemical hardnesses, D3 covalent radii (Bohr, scaled by 4/3) and
Pauling electronegativities are what tad-dftd4 imports from tad-mctc (installed with tad-dftd3).
"""

import argparse
import runpy
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

_D4_TABLES = ("refc", "refcovcn", "refalpha", "refascale", "refscount", "refsys", "secscale", "secalpha")


def _module(root: Path, rel: str) -> dict:
    return runpy.run_path(str(root / rel))


def build(d4_wheel: Path, eeq_wheel: Path, out: Path) -> None:
    torch.set_default_dtype(torch.float64)  # the modules' literals, read at full precision
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for wheel in (d4_wheel, eeq_wheel):
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(root)
        params = _module(root, "tad_dftd4/reference/d4/params.py")
        charges = _module(root, "tad_dftd4/reference/d4/charge_eeq.py")
        tables = {name: params[name].numpy() for name in _D4_TABLES}
        tables["clsq"] = charges["clsq"].numpy()
        tables["clsh"] = charges["clsh"].numpy()
        tables["r4r2"] = _module(root, "tad_dftd4/data/r4r2.py")["R4R2"](dtype=torch.float64).numpy()
        eeq = _module(root, "tad_multicharge/param/eeq2019.py")
        for name in ("chi", "eta", "kcn", "rad"):
            tables["eeq_" + name] = eeq[name].numpy()
    # what tad-dftd4 imports from tad-mctc (installed with tad-dftd3)
    from tad_mctc.data import COV_D3, GAM, PAULING, ZEFF

    tables["zeff"] = ZEFF().numpy()
    tables["gam"] = GAM(dtype=torch.float64).numpy()
    tables["rcov"] = COV_D3(dtype=torch.float64).numpy()
    tables["en"] = PAULING(dtype=torch.float64).numpy()
    for name, value in tables.items():
        print(f"{name:12s} {value.dtype} {value.shape}")
    np.savez_compressed(out, **tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("d4_wheel", type=Path)
    parser.add_argument("eeq_wheel", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("d4_reference.npz"))
    build(parser.parse_args().d4_wheel, parser.parse_args().eeq_wheel, parser.parse_args().out)


if __name__ == "__main__":
    main()
