"""Calculators: the ASE calculator ``AIMNet2Mult`` and the model loading it shares with OpenMM."""

from .ase_calculator import AIMNet2Mult
from .runtime import DENSE_MAX_ATOMS, LoadedPotential, ModelSource, default_model_path, load_model

__all__ = ["AIMNet2Mult", "DENSE_MAX_ATOMS", "LoadedPotential", "ModelSource", "default_model_path", "load_model"]
