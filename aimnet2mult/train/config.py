"""Training configuration: packaged defaults -> each --config file -> key=value dotted overrides.

Uses OmegaConf for merging and dotted overrides (``data.fidelity_datasets.0="fid0.h5"``). The result
is a plain dict; per-fidelity maps get integer keys. Relative paths are resolved against the
current working directory.
"""

from importlib import resources
from pathlib import Path
from typing import Any, Dict, Sequence

import yaml

from ..model_config import ConfigError, read_yaml

#: per-fidelity maps under ``data`` whose keys are fidelity indices
FIDELITY_MAPS = ("fidelity_datasets", "val_fidelity_datasets", "fidelity_weights", "labels_include_dispersion",
                 "dispersion")


def default_train_config() -> Dict[str, Any]:
    text = resources.files("aimnet2mult.resources.config").joinpath("default_train.yaml").read_text()
    return yaml.safe_load(text)


def _int_keys(mapping: Any, where: str) -> Dict[int, Any]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where} must be a mapping of fidelity index -> value, got {mapping!r}")
    out: Dict[int, Any] = {}
    for key, value in mapping.items():
        try:
            out[int(key)] = value
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: key {key!r} is not a fidelity index (0, 1, ...)") from None
    return out


def load_train_config(config_files: Sequence[str] = (), overrides: Sequence[str] = ()) -> Dict[str, Any]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    base = OmegaConf.create(_string_keys(default_train_config()))
    layers = [base]
    for path in config_files:
        layers.append(OmegaConf.create(_string_keys(read_yaml(path))))
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got: {' '.join(bad)}")
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = layers[0]
        for layer in layers[1:]:
            merged = OmegaConf.merge(_drop_replaced_kwargs(merged, layer), layer)
        cfg = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid configuration or override: {exc}") from None
    _check_unknown(cfg, default_train_config(), "")
    from .schema import check_schema

    check_schema(cfg)
    return normalize(cfg)


def _string_keys(node: Any) -> Any:
    """YAML reads ``0:`` as an int key but a dotted override ``data.fidelity_datasets.0=...`` has
    the string key '0'; OmegaConf refuses to merge the two, so every key is a string until
    ``normalize`` turns the fidelity maps back into int keys."""
    if isinstance(node, dict):
        return {str(k): _string_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_string_keys(v) for v in node]
    return node


def _drop_replaced_kwargs(merged, layer):
    """A layer that names another optimizer or scheduler class replaces its kwargs instead of
    merging into the previous class's kwargs (which would not fit the new class)."""
    from omegaconf import OmegaConf

    merged = OmegaConf.to_container(merged)
    for section in ("optimizer", "scheduler"):
        new = layer.get(section) if hasattr(layer, "get") else None
        old = merged.get(section) or {}
        if new is not None and "class" in new and new["class"] != old.get("class"):
            old.pop("kwargs", None)
    return OmegaConf.create(merged)


def _check_unknown(cfg: Dict[str, Any], ref: Dict[str, Any], prefix: str) -> None:
    """Unknown keys are errors (typos must not be silently ignored); free-form maps are skipped."""
    free = {"data.fidelity_datasets", "data.val_fidelity_datasets", "data.fidelity_weights", "data.sae.energy.files",
            "data.labels_include_dispersion", "data.dispersion", "fidelity_names", "optimizer.kwargs",
            "optimizer.param_groups", "scheduler.kwargs", "wandb.init", "loss.kwargs.components",
            "loss.kwargs.fidelity_components",
            "data.samplers.train.kwargs", "data.samplers.val.kwargs", "data.loaders.train", "data.loaders.val",
            "scheduler", "fidelity_schedule.init_from"}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if path in free:
            continue
        if key not in ref:
            raise ConfigError(f"unknown configuration key '{path}'; valid keys here: {', '.join(sorted(ref))}")
        if isinstance(value, dict) and isinstance(ref[key], dict):
            _check_unknown(value, ref[key], path + ".")


def normalize(cfg: Dict[str, Any]) -> Dict[str, Any]:
    data = cfg["data"]
    for key in FIDELITY_MAPS:
        data[key] = _int_keys(data.get(key), f"data.{key}")
    data["sae"]["energy"]["files"] = _int_keys(data["sae"]["energy"].get("files"), "data.sae.energy.files")
    cfg["fidelity_names"] = {k: str(v) for k, v in _int_keys(cfg.get("fidelity_names"), "fidelity_names").items()}
    fids = sorted(data["fidelity_datasets"])
    if not fids:
        raise ConfigError("no training data: set data.fidelity_datasets (e.g. data.fidelity_datasets.0=fid0.h5)")
    if fids != list(range(len(fids))):
        missing = sorted(set(range(max(fids) + 1)) - set(fids))
        raise ConfigError(f"data.fidelity_datasets has a gap: fidelity indices {fids}, missing {missing}; "
                          "fidelities must be numbered 0, 1, 2, ... without gaps")
    for key in ("val_fidelity_datasets", "fidelity_weights", "labels_include_dispersion", "dispersion"):
        extra = sorted(set(data[key]) - set(fids))
        if extra:
            raise ConfigError(f"data.{key} names fidelities {extra} that have no training data (have {fids})")
    extra = sorted(set(data["sae"]["energy"]["files"]) - set(fids))
    if extra:
        raise ConfigError(f"data.sae.energy.files names fidelities {extra} that have no training data (have {fids})")
    for mapping in (data["fidelity_datasets"], data["val_fidelity_datasets"], data["sae"]["energy"]["files"]):
        for k, v in mapping.items():
            mapping[k] = str(Path(str(v)).expanduser().resolve())
    for k, w in data["fidelity_weights"].items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise ConfigError(f"data.fidelity_weights.{k} must be a positive number, or 0 (validation only), "
                              f"got {w!r}")
    weights = [float(data["fidelity_weights"].get(k, 1.0)) for k in fids]
    if weights and max(weights) <= 0:
        raise ConfigError("data.fidelity_weights: every fidelity has weight 0; at least one must be drawn")
    if int(cfg["fidelity_offset"]) <= 118:
        raise ConfigError("fidelity_offset must exceed the largest atomic number (118)")
    return cfg


def num_fidelities(cfg: Dict[str, Any]) -> int:
    return len(cfg["data"]["fidelity_datasets"])


def dump_config(cfg: Dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
