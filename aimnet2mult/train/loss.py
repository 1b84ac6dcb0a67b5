"""Masked multi-task loss.

Each term is a mean over the molecules that HAVE the label (per-molecule availability masks from
collate); when no molecule of the batch has it, the term is exactly 0 with a zero gradient.

* energy: ((E_pred - E_ref) / n_atoms)², i.e. per-atom energy error squared (eV²), so molecules of
  different sizes weigh alike;
* forces: mean over real atoms and components of (F_pred - F_ref)² (eV²/Å²);
* charges, spin_charges: mean over real atoms of the squared error (e²).
"""

from typing import Dict, Tuple

import torch
from torch import Tensor

ATOMIC_KEYS = ("forces", "charges", "spin_charges")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` (B,) over mask (B,) True entries; exactly 0 (zero grad) if none."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def per_molecule_atomic_mse(pred: Tensor, ref: Tensor, real: Tensor) -> Tensor:
    """pred, ref: (B, N[, 3]); real: (B, N) bool. Returns (B,) mean squared error over real atoms."""
    diff2 = (pred - ref.to(pred.dtype)) ** 2
    if diff2.dim() == 3:
        diff2 = diff2.mean(-1)
    diff2 = diff2 * real.to(diff2.dtype)
    return diff2.sum(1) / real.sum(1).clamp(min=1).to(diff2.dtype)


def label_mask(batch: Dict[str, Tensor], key: str) -> Tensor:
    mask_key = f"{key}_mask"
    if mask_key in batch:
        return batch[mask_key].to(torch.bool)
    return torch.ones(batch["energy"].shape[0], dtype=torch.bool, device=batch["energy"].device)


class MaskedMultiTaskLoss:
    def __init__(self, components: Dict[str, Dict[str, float]]):
        unknown = set(components) - {"energy", *ATOMIC_KEYS}
        if unknown:
            raise ValueError(f"unknown loss components {sorted(unknown)}; valid: energy, {', '.join(ATOMIC_KEYS)}")
        self.weights = {k: float(v.get("weight", 0.0)) if isinstance(v, dict) else float(v)
                        for k, v in components.items()}

    def needs_forces(self, batch: Dict[str, Tensor]) -> bool:
        return self.weights.get("forces", 0.0) > 0 and "forces" in batch and bool(label_mask(batch, "forces").any())

    def __call__(self, pred: Dict[str, Tensor], batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        real = batch["numbers"] != 0
        n_atoms = real.sum(1).to(torch.float64)
        terms: Dict[str, Tensor] = {}
        zero = pred["energy"].new_zeros(())
        if "energy" in self.weights:
            if "energy" in batch:
                err = ((pred["energy"] - batch["energy"]) / n_atoms) ** 2
                terms["energy"] = masked_mean(err, label_mask(batch, "energy"))
            else:
                terms["energy"] = zero
        for key in ATOMIC_KEYS:
            if key not in self.weights:
                continue
            if key in batch and key in pred:
                mse = per_molecule_atomic_mse(pred[key], batch[key], real).to(torch.float64)
                terms[key] = masked_mean(mse, label_mask(batch, key))
            else:
                terms[key] = zero
        total = zero
        for key, value in terms.items():
            total = total + self.weights[key] * value
        return total, terms
