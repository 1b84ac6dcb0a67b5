"""Small random models and checkpoints for tests."""

import torch

from aimnet2mult.checkpoint import fidelity_entry, make_checkpoint
from aimnet2mult.model_config import model_config
from aimnet2mult.nn.model import MultiFidelityAIMNet2

SMALL = dict(passes=[[48, 32], [48, 32], [48, 32]], aim_size=32, energy_head=[16])
ELEMENTS = [1, 6, 7, 8, 9, 16, 17]


def small_model(num_fidelities=2, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = model_config(**{**SMALL, "num_fidelities": num_fidelities, **overrides})
    model = MultiFidelityAIMNet2(cfg)
    with torch.no_grad():  # non-trivial shifts so readouts differ per fidelity
        for ro in model.readouts:
            ro.shifts.normal_(0.0, 0.5)
    return model, cfg


def small_checkpoint(num_fidelities=2, seed=0, dispersion=None, charges_trained=True, **overrides):
    """``charges_trained``: True (every fidelity), False (none) or a list of fidelities whose
    charges (and spin charges, for open-shell models) count as trained."""
    model, cfg = small_model(num_fidelities, seed, **overrides)
    fids = []
    for k in range(num_fidelities):
        sae = {z: -10.0 * z - 3.0 * k + 0.123 * z * z for z in ELEMENTS}
        disp = dispersion[k] if isinstance(dispersion, list) else dispersion
        trained = charges_trained is True or (isinstance(charges_trained, (list, tuple)) and k in charges_trained)
        outputs = (["charges"] + (["spin_charges"] if cfg["num_charge_channels"] == 2 else [])) if trained else []
        fids.append(fidelity_entry(k, f"level{k}", sae=sae, dispersion=disp, trained_outputs=outputs))
    return make_checkpoint(model, cfg, fids), model


def as_torch(coord, numbers, charge, dtype=torch.float32):
    return {"coord": torch.tensor(coord, dtype=dtype), "numbers": torch.tensor(numbers),
            "charge": torch.tensor(charge, dtype=dtype)}


def padded_batch(flats):
    """Flat single-molecule inputs ({"coord" (N, 3), "numbers" (N,), "charge" (1,)}) as one padded
    dense batch {"coord" (B, N_max, 3), "numbers" (B, N_max), "charge" (B,)}."""
    n_max = max(len(f["numbers"]) for f in flats)
    coord = torch.zeros(len(flats), n_max, 3, dtype=flats[0]["coord"].dtype)
    numbers = torch.zeros(len(flats), n_max, dtype=torch.long)
    for b, f in enumerate(flats):
        coord[b, :len(f["numbers"])] = f["coord"]
        numbers[b, :len(f["numbers"])] = f["numbers"]
    return {"coord": coord, "numbers": numbers, "charge": torch.cat([f["charge"] for f in flats])}
