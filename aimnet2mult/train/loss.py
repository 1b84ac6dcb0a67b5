"""Masked multi-task loss.

Each term is a mean over the molecules that HAVE the label (per-molecule availability masks from
collate); when no molecule of the batch has it, the term is exactly 0 with a zero gradient.

* energy: ((E_pred - E_ref) / n_atoms)², i.e. per-atom energy error squared (eV²), so molecules of
  different sizes weigh alike;
* forces: mean over real atoms and components of (F_pred - F_ref)² (eV²/Å²);
* charges, spin_charges: mean over real atoms of the squared error (e²).

``fidelity_components`` ({fidelity: {term: weight}}) overrides a term's weight for the molecules
of one fidelity: the weighted term is ``mean over labelled molecules of w_f * error``. The terms
reported for logging stay unweighted means. Why: a fidelity with energies only (e.g. DFT) next to
one with forces (xTB) gets almost none of the gradient, because per-atom energy errors squared
(~1e-5 eV²) are orders of magnitude below force errors squared (~1e-3 eV²/Å²); weighting its
energies up gives the expensive fidelity its share (docs/multifidelity-recipe.md).
"""

from typing import Any, Dict, Mapping, Optional, Tuple

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


def parse_fidelity_components(spec: Optional[Mapping[Any, Any]], terms) -> Dict[int, Dict[str, float]]:
    """Validated ``{fidelity: {term: weight}}`` from ``loss.kwargs.fidelity_components``."""
    out: Dict[int, Dict[str, float]] = {}
    for key, sub in (spec or {}).items():
        try:
            fid = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"loss.kwargs.fidelity_components: key {key!r} is not a fidelity index") from None
        if fid < 0:
            raise ValueError(f"loss.kwargs.fidelity_components: fidelity {fid} is negative")
        if not isinstance(sub, Mapping):
            raise ValueError(f"loss.kwargs.fidelity_components.{fid} must map loss terms to weights, got {sub!r}")
        out[fid] = {}
        for term, w in sub.items():
            if term not in terms:
                raise ValueError(f"loss.kwargs.fidelity_components.{fid}.{term}: not a loss term of this run "
                                 f"(terms: {', '.join(sorted(terms))})")
            value = w.get("weight") if isinstance(w, Mapping) else w
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
                    or value == float("inf"):
                raise ValueError(f"loss.kwargs.fidelity_components.{fid}.{term} must be a finite number >= 0, "
                                 f"got {value!r}")
            out[fid][str(term)] = float(value)
    return out


class MaskedMultiTaskLoss:
    def __init__(self, components: Dict[str, Dict[str, float]],
                 fidelity_components: Optional[Mapping[Any, Any]] = None):
        unknown = set(components) - {"energy", *ATOMIC_KEYS}
        if unknown:
            raise ValueError(f"unknown loss components {sorted(unknown)}; valid: energy, {', '.join(ATOMIC_KEYS)}")
        self.weights = {k: float(v.get("weight", 0.0)) if isinstance(v, dict) else float(v)
                        for k, v in components.items()}
        self.fidelity_components = parse_fidelity_components(fidelity_components, self.weights)

    def molecule_weights(self, key: str, batch: Dict[str, Tensor], like: Tensor) -> Optional[Tensor]:
        """(B,) weight of term ``key`` per molecule, or None when no fidelity overrides it."""
        overrides = {f: w[key] for f, w in self.fidelity_components.items() if key in w}
        if not overrides or "fidelity" not in batch:
            return None
        fid = batch["fidelity"].to(like.device)
        w = torch.full(like.shape, self.weights[key], dtype=like.dtype, device=like.device)
        for f, value in overrides.items():
            w = torch.where(fid == f, torch.full_like(w, value), w)
        return w

    def needs_forces(self, batch: Dict[str, Tensor]) -> bool:
        return self.weights.get("forces", 0.0) > 0 and "forces" in batch and bool(label_mask(batch, "forces").any())

    def __call__(self, pred: Dict[str, Tensor], batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        real = batch["numbers"] != 0
        n_atoms = real.sum(1).to(torch.float64)
        terms: Dict[str, Tensor] = {}
        per_molecule: Dict[str, Tensor] = {}
        zero = pred["energy"].new_zeros(())
        if "energy" in self.weights:
            if "energy" in batch:
                err = ((pred["energy"] - batch["energy"]) / n_atoms) ** 2
                terms["energy"] = masked_mean(err, label_mask(batch, "energy"))
                per_molecule["energy"] = err
            else:
                terms["energy"] = zero
        for key in ATOMIC_KEYS:
            if key not in self.weights:
                continue
            if key in batch and key in pred:
                mse = per_molecule_atomic_mse(pred[key], batch[key], real).to(torch.float64)
                terms[key] = masked_mean(mse, label_mask(batch, key))
                per_molecule[key] = mse
            else:
                terms[key] = zero
        total = zero
        for key, value in terms.items():
            w = self.molecule_weights(key, batch, per_molecule[key]) if key in per_molecule else None
            if w is None:
                total = total + self.weights[key] * value
            else:
                total = total + masked_mean(w * per_molecule[key], label_mask(batch, key))
        return total, terms
