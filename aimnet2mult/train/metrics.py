"""Per-fidelity validation metrics: MAE and RMSE of E, F, q, s.

Units as in the original description: energies in kcal/mol, forces in kcal/mol/Å, charges and
spin charges in e. Keys: ``fid{k}/E_mae``, ``fid{k}/E_rmse``, ``fid{k}/F_mae`` ... plus the
fidelity-independent ``loss`` and ``{component}_loss``. Only molecules that have a label count.
"""

from collections import defaultdict
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from ..units import EV_TO_KCAL_PER_MOL

#: metric prefix -> (batch key, unit factor from eV-based units)
PROPERTIES = {"E": ("energy", EV_TO_KCAL_PER_MOL), "F": ("forces", EV_TO_KCAL_PER_MOL),
              "q": ("charges", 1.0), "s": ("spin_charges", 1.0)}
MAX_PARITY_POINTS = 20000


class FidelityMetrics:
    """Accumulates absolute and squared errors per (fidelity, property)."""

    def __init__(self) -> None:
        self.sums: Dict[Tuple[int, str], List[float]] = defaultdict(lambda: [0.0, 0.0, 0])
        self.parity: Dict[Tuple[int, str], List[Tuple[Tensor, Tensor]]] = defaultdict(list)
        self.loss_sums: Dict[str, float] = defaultdict(float)
        self.n_batches = 0

    def update(self, pred: Dict[str, Tensor], batch: Dict[str, Tensor], loss_terms: Dict[str, Tensor],
               loss: Tensor) -> None:
        self.n_batches += 1
        self.loss_sums["loss"] += float(loss)
        for key, value in loss_terms.items():
            self.loss_sums[f"{key}_loss"] += float(value)
        real = batch["numbers"] != 0
        fid = batch["fidelity"]
        for short, (key, factor) in PROPERTIES.items():
            if key not in batch or key not in pred:
                continue
            has = batch.get(f"{key}_mask", torch.ones_like(fid, dtype=torch.bool)).to(torch.bool)
            for k in torch.unique(fid).tolist():
                sel = has & (fid == k)
                if not bool(sel.any()):
                    continue
                p = pred[key][sel].detach().to(torch.float64)
                r = batch[key][sel].to(torch.float64)
                if key != "energy":  # per-atom quantities: real atoms only
                    m = real[sel]
                    p, r = p[m], r[m]
                err = (p - r).flatten() * factor
                acc = self.sums[(k, short)]
                acc[0] += float(err.abs().sum())
                acc[1] += float((err ** 2).sum())
                acc[2] += err.numel()
                stored = sum(x.numel() for x, _ in self.parity[(k, short)])
                if stored < MAX_PARITY_POINTS:
                    self.parity[(k, short)].append((r.flatten().cpu() * factor, p.flatten().cpu() * factor))

    def compute(self) -> Dict[str, float]:
        out = {key: value / max(self.n_batches, 1) for key, value in self.loss_sums.items()}
        for (k, short), (abs_sum, sq_sum, n) in sorted(self.sums.items()):
            if n:
                out[f"fid{k}/{short}_mae"] = abs_sum / n
                out[f"fid{k}/{short}_rmse"] = (sq_sum / n) ** 0.5
        return out

    def parity_data(self) -> Dict[Tuple[int, str], Tuple[Tensor, Tensor]]:
        return {key: (torch.cat([r for r, _ in v]), torch.cat([p for _, p in v])) for key, v in self.parity.items()}
