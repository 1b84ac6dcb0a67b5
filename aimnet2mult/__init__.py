"""aimnet2mult: multi-fidelity AIMNet2 neural network potentials.

Importing the package is cheap: it does not import openmm, ase calculators or the trainer.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "AIMNet2Mult", "load_checkpoint", "export_potential", "build_potential",
           "load_potential"]


def __getattr__(name):
    if name == "AIMNet2Mult":
        from .calculators import AIMNet2Mult
        return AIMNet2Mult
    if name == "load_checkpoint":
        from .checkpoint import load_checkpoint
        return load_checkpoint
    if name in ("export_potential", "build_potential", "load_potential"):
        from . import export
        return getattr(export, name)
    raise AttributeError(f"module 'aimnet2mult' has no attribute {name!r}")
