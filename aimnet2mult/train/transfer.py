"""Transfer learning: initialise a new multi-fidelity model from a checkpoint.

The source may have more or fewer fidelities, another offset, other elements or another readout
mode; the architecture proper (basis, passes, widths) must match. For each target fidelity k:

* k < source fidelities: embedding block k, readout k and atomic shifts are copied from source
  fidelity k. Shifts are re-expressed for the target SAE, σ'_k[Z] = σ_k[Z] + SAE_src,k[Z] -
  SAE_tgt,k[Z], so total energies (residual + SAE) are preserved exactly.
* new fidelities: initialised from source fidelity 0 (same re-expression of the shifts).
* elements new to a fidelity keep their fresh initialisation (random embedding row, zero shift).

Returns log lines saying which blocks were copied or initialised.
"""

from typing import Any, Dict, List

import torch

from ..checkpoint import CheckpointError
from ..elements import format_elements

ARCH_KEYS = ("cutoff", "num_shells", "shell_start", "num_features", "num_combinations", "passes", "aim_size",
             "energy_head", "num_charge_channels")


def _readout_state(state: Dict[str, torch.Tensor], cfg: Dict[str, Any], k: int):
    """(mlp state, shift vector indexed by standard Z) of fidelity k in a state dict."""
    off = int(cfg["fidelity_offset"])
    head = k if cfg["use_fidelity_readouts"] else 0
    prefix = f"readouts.{head}."
    mlp = {key[len(prefix) + 4:]: v for key, v in state.items() if key.startswith(prefix + "mlp.")}
    shifts = state[prefix + "shifts"]
    if not cfg["use_fidelity_readouts"]:
        shifts = shifts[k * off:(k + 1) * off]
    return mlp, shifts.to(torch.float64)


def transfer_weights(model: torch.nn.Module, target_cfg: Dict[str, Any], target_sae: Dict[int, Dict[int, float]],
                     source: Dict[str, Any]) -> List[str]:
    src_cfg = source["model_config"]
    diff = [k for k in ARCH_KEYS if src_cfg.get(k) != target_cfg.get(k)]
    if diff:
        raise CheckpointError("--load: source architecture differs in " +
                              ", ".join(f"{k} ({src_cfg.get(k)!r} vs {target_cfg.get(k)!r})" for k in diff) +
                              "; give the source's model YAML or omit --model")
    src = source["state_dict"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lines: List[str] = []
    for key in state:
        if key.startswith("backbone.") and key != "backbone.embedding.weight":
            state[key] = src[key].clone()
    lines.append("shared backbone (basis, convolutions, passes): copied")
    n_src, n_tgt = int(src_cfg["num_fidelities"]), int(target_cfg["num_fidelities"])
    off_s, off_t = int(src_cfg["fidelity_offset"]), int(target_cfg["fidelity_offset"])
    n_z = min(off_s, off_t)
    emb_s, emb_t = src["backbone.embedding.weight"], state["backbone.embedding.weight"]
    for k in range(n_tgt):
        ks = k if k < n_src else 0
        src_fid = source["fidelities"][ks]
        src_elements = [z for z in src_fid["elements"] if z < n_z]
        emb_t[k * off_t + 1:k * off_t + n_z] = emb_s[ks * off_s + 1:ks * off_s + n_z]
        mlp, shifts_src = _readout_state(src, src_cfg, ks)
        sae_src = {int(z): float(v) for z, v in src_fid["sae"].items()}
        new_shifts = torch.zeros(off_t, dtype=torch.float64)
        for z in src_elements:
            # (SAE difference first: an unchanged SAE leaves the shift bit-identical)
            new_shifts[z] = shifts_src[z] + (sae_src.get(z, 0.0) - target_sae.get(k, {}).get(z, 0.0))
        if target_cfg["use_fidelity_readouts"]:
            prefix = f"readouts.{k}."
            for name, value in mlp.items():
                state[prefix + "mlp." + name] = value.clone()
            state[prefix + "shifts"] = new_shifts.to(state[prefix + "shifts"].dtype)
        else:
            if k == 0:
                for name, value in mlp.items():
                    state["readouts.0.mlp." + name] = value.clone()
            state["readouts.0.shifts"][k * off_t:(k + 1) * off_t] = new_shifts
        how = f"copied from source fidelity {ks} ('{src_fid['name']}')" if k < n_src else \
            f"new: initialised from source fidelity 0 ('{src_fid['name']}')"
        new_elements = sorted(set(target_sae.get(k, {})) - set(src_elements))
        extra = f"; elements new to it (fresh init): {format_elements(new_elements)}" if new_elements else ""
        lines.append(f"fidelity {k}: embedding block, readout and shifts {how}{extra}")
    if n_src > n_tgt:
        lines.append(f"source fidelities {list(range(n_tgt, n_src))} dropped")
    model.load_state_dict(state, strict=True)
    return lines
