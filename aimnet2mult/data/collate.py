"""Collate molecule dicts into a padded batch with per-molecule label masks.

Output (B molecules, N = largest atom count in the batch):

* ``coord`` (B, N, 3) float32, padding coordinates 0
* ``numbers`` (B, N) int64, 0 = padding
* ``charge`` (B,) float32, ``mult`` (B,) float32 (1 where an item has none)
* ``energy`` (B,) float64 (when the items have energies; all or none of them must)
* ``fidelity`` (B,) int64 (when the items carry a fidelity; all or none of them must)
* for each optional label (``forces`` (B, N, 3), ``charges`` (B, N), ``spin_charges`` (B, N), float32)
  that at least one item has: the padded tensor (zeros where a molecule lacks it) and
  ``<label>_mask`` (B,) bool = the molecule has the label. Labels no item has are absent.
"""

from typing import Dict, Sequence

import numpy as np
import torch

from .h5dataset import LABEL_KEYS

_LABEL_TAIL = {"forces": (3,), "charges": (), "spin_charges": ()}


def collate(items: Sequence[Dict]) -> Dict[str, torch.Tensor]:
    items = list(items)
    if not items:
        raise ValueError("collate: empty batch")
    B = len(items)
    sizes = [len(np.asarray(it["numbers"]).reshape(-1)) for it in items]
    N = max(sizes)
    coord = np.zeros((B, N, 3), dtype=np.float32)
    numbers = np.zeros((B, N), dtype=np.int64)
    charge = np.zeros(B, dtype=np.float32)
    mult = np.ones(B, dtype=np.float32)
    energy = np.zeros(B, dtype=np.float64)
    labels = [k for k in LABEL_KEYS if any(k in it for it in items)]
    lab = {k: np.zeros((B, N) + _LABEL_TAIL[k], dtype=np.float32) for k in labels}
    mask = {k: np.zeros(B, dtype=bool) for k in labels}
    has_fid = [("fidelity" in it) for it in items]
    if any(has_fid) and not all(has_fid):
        raise ValueError("collate: some items carry a 'fidelity' and others do not")
    has_e = [("energy" in it) for it in items]
    if any(has_e) and not all(has_e):
        raise ValueError("collate: some items have an 'energy' and others do not")
    fidelity = np.zeros(B, dtype=np.int64)
    for b, (it, n) in enumerate(zip(items, sizes)):
        coord[b, :n] = np.asarray(it["coord"], dtype=np.float32).reshape(n, 3)
        numbers[b, :n] = np.asarray(it["numbers"]).reshape(n)
        charge[b] = float(it.get("charge", 0.0))
        if "mult" in it:
            mult[b] = float(it["mult"])
        if has_e[b]:
            energy[b] = float(it["energy"])
        if has_fid[b]:
            fidelity[b] = int(it["fidelity"])
        for k in labels:
            if k in it:
                lab[k][b, :n] = np.asarray(it[k], dtype=np.float32).reshape((n,) + _LABEL_TAIL[k])
                mask[k][b] = True
    out: Dict[str, torch.Tensor] = {
        "coord": torch.from_numpy(coord),
        "numbers": torch.from_numpy(numbers),
        "charge": torch.from_numpy(charge),
        "mult": torch.from_numpy(mult),
    }
    if all(has_e):
        out["energy"] = torch.from_numpy(energy)
    if all(has_fid):
        out["fidelity"] = torch.from_numpy(fidelity)
    for k in labels:
        out[k] = torch.from_numpy(lab[k])
        out[f"{k}_mask"] = torch.from_numpy(mask[k])
    return out
