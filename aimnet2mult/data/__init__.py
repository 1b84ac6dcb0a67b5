"""Data pipeline: size-grouped HDF5 reader, SAE fitting, mixed-fidelity dataset, weighted batch
sampler, collate with label masks, and DataLoader construction from the training configuration."""

from .collate import collate
from .h5dataset import DataError, SizeGroupedDataset, Subset, split_indices
from .loaders import build_loaders
from .mixed import MixedFidelityDataset
from .sae import SAEError, fit_sae, read_sae, write_sae
from .sampler import MixedFidelityBatchSampler

__all__ = ["DataError", "SAEError", "SizeGroupedDataset", "Subset", "split_indices", "fit_sae", "read_sae",
           "write_sae", "MixedFidelityDataset", "MixedFidelityBatchSampler", "collate", "build_loaders"]
