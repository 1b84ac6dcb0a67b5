"""Self-describing checkpoints.

A checkpoint is one ``torch.save`` file holding a plain dict (loadable with
``torch.load(..., weights_only=True)``)::

    format            "aimnet2mult-checkpoint"
    format_version    1
    package_version   aimnet2mult version that wrote it
    model_config      every model hyper-parameter (incl. num_fidelities, fidelity_offset,
                      use_fidelity_readouts, shift_dtype)
    state_dict        model weights (loaded strictly)
    fidelities        one entry per fidelity, in index order:
                        index, name, sae {Z: eV}, elements [Z...],
                        labels_include_dispersion (bool), dispersion (None or D3BJ parameters
                        to add at export: {method, functional, s6, s8, a1, a2, s9, alp}),
                        trained_outputs (the outputs trained for that fidelity: energy and
                        forces always, charges / spin_charges only with such labels; absent in
                        checkpoints written before it was recorded, see trained_outputs())
    train_config      the final training configuration (optional)
    training_state    optimizer/scheduler/epoch/iteration/RNG states for resuming (optional)
    source            free-form provenance (optional)

Loading never needs the YAML the model was trained from. Writes are atomic.
"""

import copy
import hashlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from . import __version__
from .elements import format_elements
from .io_utils import atomic_write_bytes, serialized
from .model_config import ConfigError, validate_model_config

FORMAT = "aimnet2mult-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a valid aimnet2mult checkpoint, or disagrees with what was asked of it."""


#: outputs every fidelity is trained for (forces are the derivative of the trained energy)
ALWAYS_TRAINED = ("energy", "forces")
#: outputs trained only where the fidelity's data has the label of the same name
LABELLED_OUTPUTS = ("charges", "spin_charges")


def fidelity_entry(index: int, name: Optional[str] = None, sae: Optional[Dict[int, float]] = None,
                   elements: Optional[List[int]] = None, labels_include_dispersion: bool = False,
                   dispersion: Optional[Dict[str, Any]] = None,
                   trained_outputs: Optional[List[str]] = None) -> Dict[str, Any]:
    """One row of the fidelity table. ``elements`` defaults to the SAE's elements;
    ``trained_outputs`` defaults to energy and forces only."""
    sae = {int(z): float(v) for z, v in (sae or {}).items()}
    elements = sorted(int(z) for z in (elements if elements is not None else sae))
    outputs = list(ALWAYS_TRAINED) + sorted(set(trained_outputs or ()) - set(ALWAYS_TRAINED))
    unknown = sorted(set(outputs) - set(ALWAYS_TRAINED) - set(LABELLED_OUTPUTS))
    if unknown:
        raise CheckpointError(f"fidelity {index}: unknown trained output(s) {unknown}; known: "
                              f"{', '.join(ALWAYS_TRAINED + LABELLED_OUTPUTS)}")
    return {"index": int(index), "name": name or f"fidelity{index}", "sae": sae, "elements": elements,
            "labels_include_dispersion": bool(labels_include_dispersion),
            "dispersion": copy.deepcopy(dispersion), "trained_outputs": outputs}


def trained_outputs(entry: Dict[str, Any]) -> List[str]:
    """The outputs fidelity ``entry`` was trained for. Entries written before this was recorded
    count as energy and forces only: nothing says their charges were trained."""
    return list(entry.get("trained_outputs") or ALWAYS_TRAINED)


def fidelities_with(ckpt: Dict[str, Any], output: str) -> List[str]:
    """'K (name)' of each fidelity of ``ckpt`` trained for ``output``."""
    return [f"{e['index']} ('{e['name']}')" for e in ckpt.get("fidelities", []) if output in trained_outputs(e)]


def make_checkpoint(model: torch.nn.Module, model_config: Dict[str, Any], fidelities: List[Dict[str, Any]],
                    train_config: Optional[Dict[str, Any]] = None,
                    training_state: Optional[Dict[str, Any]] = None,
                    source: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "model_config": copy.deepcopy(model_config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "fidelities": copy.deepcopy(fidelities),
        "train_config": copy.deepcopy(train_config),
        "training_state": training_state,
        "source": copy.deepcopy(source or {}),
    }
    validate_checkpoint(ckpt, "<in memory>")
    return ckpt


def save_checkpoint(ckpt: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Write atomically (temporary file + rename): an interrupted save leaves the old file intact."""
    validate_checkpoint(ckpt, str(path))
    return atomic_write_bytes(path, serialized(lambda buf: torch.save(ckpt, buf)))


def validate_checkpoint(ckpt: Any, where: str) -> Dict[str, Any]:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not an aimnet2mult checkpoint (no '{FORMAT}' format tag)")
    if int(ckpt.get("format_version", -1)) > FORMAT_VERSION:
        raise CheckpointError(f"{where}: checkpoint format version {ckpt['format_version']} is newer than "
                              f"this aimnet2mult supports ({FORMAT_VERSION}); upgrade aimnet2mult")
    for key in ("model_config", "state_dict", "fidelities"):
        if key not in ckpt:
            raise CheckpointError(f"{where}: checkpoint lacks '{key}'")
    try:
        cfg = validate_model_config(dict(ckpt["model_config"]), f"{where}: model_config")
    except (ConfigError, KeyError) as exc:
        raise CheckpointError(f"{where}: invalid model_config: {exc}") from None
    fids = ckpt["fidelities"]
    if [f.get("index") for f in fids] != list(range(cfg["num_fidelities"])):
        raise CheckpointError(f"{where}: fidelity table indices {[f.get('index') for f in fids]} do not match "
                              f"num_fidelities = {cfg['num_fidelities']}")
    for f in fids:
        bad = [z for z in f["elements"] if not 0 < int(z) < cfg["fidelity_offset"]]
        if bad:
            raise CheckpointError(f"{where}: fidelity {f['index']} lists invalid elements {bad}")
        import math

        nonfinite = [int(z) for z, v in f["sae"].items() if not math.isfinite(float(v))]
        if nonfinite:
            raise CheckpointError(f"{where}: fidelity {f['index']} ({f['name']}): the SAE of element(s) "
                                  f"{format_elements(nonfinite)} is not a finite number")
        missing = [z for z in f["elements"] if f["sae"] and int(z) not in f["sae"]]
        if missing:
            raise CheckpointError(f"{where}: fidelity {f['index']} ({f['name']}): no SAE for element(s) "
                                  f"{format_elements(missing)}")
    return ckpt


def load_checkpoint(path: Union[str, Path], map_location: str = "cpu") -> Dict[str, Any]:
    """Load and validate a checkpoint; clear errors for missing files and non-checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for foreign files
        hint = " (it looks like a compiled .jpt potential)" if _is_torchscript(path) else ""
        raise CheckpointError(f"{path}: cannot be read as an aimnet2mult checkpoint{hint}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return validate_checkpoint(ckpt, str(path))


def _is_torchscript(path: Path) -> bool:
    import zipfile
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def build_model(ckpt: Dict[str, Any]):
    """The MultiFidelityAIMNet2 of a checkpoint, weights loaded strictly."""
    from .nn.model import MultiFidelityAIMNet2

    model = MultiFidelityAIMNet2(ckpt["model_config"])
    result = model.load_state_dict(ckpt["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError("checkpoint weights do not match its model_config: missing "
                              f"{result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}")
    return model


def checkpoint_hash(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_fidelity_value(fidelity: Any, choices: str) -> Union[int, str, None]:
    """A fidelity as a user may give it: an integer index (int or numpy integer, not bool), a
    name, or None. Anything else (1.7, True, a list) is an error naming the choices."""
    import numbers

    if fidelity is None or isinstance(fidelity, str):
        return fidelity
    if isinstance(fidelity, bool) or not isinstance(fidelity, numbers.Integral):
        raise CheckpointError(f"fidelity must be an integer index or a name, got {fidelity!r} "
                              f"({type(fidelity).__name__}); this model has: {choices}")
    return int(fidelity)


def fidelity_index(ckpt: Dict[str, Any], fidelity: Union[int, str, None]) -> int:
    """Resolve a fidelity given by index or name; never silently picks one."""
    fids = ckpt["fidelities"]
    choices = ", ".join(f"{f['index']} ('{f['name']}')" for f in fids)
    fidelity = check_fidelity_value(fidelity, choices)
    if fidelity is None:
        raise CheckpointError(f"a fidelity must be chosen explicitly; this model has: {choices}")
    if isinstance(fidelity, str) and not fidelity.strip().lstrip("-").isdigit():
        for f in fids:
            if f["name"].lower() == fidelity.strip().lower():
                return int(f["index"])
        raise CheckpointError(f"unknown fidelity '{fidelity}'; this model has: {choices}")
    k = int(fidelity)
    if not 0 <= k < len(fids):
        raise CheckpointError(f"fidelity {k} is out of range; this model has: {choices}")
    return k
