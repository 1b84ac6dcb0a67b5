"""Reproducible quantum-chemistry label generation for aimnet2mult.

Molecules from ASE's G2 set (plus a few ions), conformers from GFN2-xTB Langevin MD, labels at
three levels (B3LYP/6-31G* with PySCF, GFN2-xTB and GFN1-xTB with tblite), deterministic splits
and the package's HDF5 format. Command line::

    python -m aimnet2mult.datagen run --workdir DIR [--n-dft 520 --n-xtb 5200 --seed 0]
    python -m aimnet2mult.datagen status --workdir DIR
    python -m aimnet2mult.datagen check --workdir DIR
    python -m aimnet2mult.datagen assemble --workdir DIR --output OUTDIR
"""

__version__ = "0.1.0"

__all__ = ["__version__", "run", "assemble", "status", "check"]


def __getattr__(name):  # lazy: keep `import aimnet2mult.datagen` cheap
    if name in ("run", "status", "check"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "assemble":
        from .assemble import assemble

        return assemble
    raise AttributeError(name)
