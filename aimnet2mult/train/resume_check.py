"""``--resume`` continues the same run or nothing: what the checkpoint was trained with must equal
what the resumed run would use (architecture, readout mode, offset, fidelities, the fidelity
schedule, and the data files with their content)."""

import hashlib
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..model_config import model_config
from .transfer import ARCH_KEYS


def file_sha256(path: str, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(info: Dict[str, Any]) -> Dict[int, Dict[str, Optional[Dict[str, str]]]]:
    """{fidelity: {"train": {path, sha256}, "val": {path, sha256} or None}} of the loaders' files."""
    out: Dict[int, Dict[str, Optional[Dict[str, str]]]] = {}
    for f, path in info["files"].items():
        val = info["val_files"].get(f)
        out[int(f)] = {"train": {"path": str(path), "sha256": file_sha256(path)},
                       "val": {"path": str(val), "sha256": file_sha256(val)} if val else None}
    return out


def resume_differences(ckpt: Dict[str, Any], cfg: Dict[str, Any], model_yaml: Optional[str],
                       fingerprint: Dict[int, Dict[str, Any]]) -> List[str]:
    """What differs between the checkpoint's run and the run ``cfg`` describes (empty: none)."""
    diffs: List[str] = []
    old_model = ckpt["model_config"]
    for key in ("fidelity_offset", "use_fidelity_readouts"):
        if old_model.get(key) != cfg.get(key):
            diffs.append(f"{key}: checkpoint {old_model.get(key)!r}, configuration {cfg.get(key)!r}")
    if model_yaml:
        new_model = model_config(model_yaml, num_fidelities=old_model["num_fidelities"],
                                 fidelity_offset=old_model["fidelity_offset"],
                                 use_fidelity_readouts=old_model["use_fidelity_readouts"])
        for key in ARCH_KEYS + ("coulomb",):
            if old_model.get(key) != new_model.get(key):
                diffs.append(f"architecture {key}: checkpoint {old_model.get(key)!r}, --model {new_model.get(key)!r}")
    old_cfg = ckpt.get("train_config") or {}
    old_sched = old_cfg.get("fidelity_schedule") or {}
    new_sched = cfg.get("fidelity_schedule") or {}
    for key in ("pretrain_epochs", "init_from"):
        a = old_sched.get(key)
        b = new_sched.get(key)
        if key == "init_from":
            a = {int(k): int(v) for k, v in (a or {}).items()}
            b = {int(k): int(v) for k, v in (b or {}).items()}
        if (a or 0) != (b or 0):
            diffs.append(f"fidelity_schedule.{key}: checkpoint {a!r}, configuration {b!r}")
    old_files = {int(k): str(v) for k, v in ((old_cfg.get("data") or {}).get("fidelity_datasets") or {}).items()}
    for f, fp in fingerprint.items():
        if f in old_files and Path(old_files[f]) != Path(fp["train"]["path"]):
            diffs.append(f"data.fidelity_datasets.{f}: checkpoint {old_files[f]}, configuration {fp['train']['path']}")
    old_fp = (ckpt.get("training_state") or {}).get("data") or {}
    for f, fp in fingerprint.items():
        old = old_fp.get(f) or old_fp.get(str(f))
        if not old:
            continue
        for which in ("train", "val"):
            a, b = old.get(which), fp.get(which)
            if (a is None) != (b is None) or (a and b and a["sha256"] != b["sha256"]):
                what = b["path"] if b else (a["path"] if a else "?")
                diffs.append(f"fidelity {f} {which} data {what}: content differs from the checkpoint's run "
                             "(sha256)")
    return diffs
