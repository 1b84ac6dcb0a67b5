"""Model hyper-parameters: packaged defaults, YAML loading and validation."""

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Union

import yaml

#: multi-fidelity keys, set by the training configuration
FIDELITY_KEYS = ("num_fidelities", "fidelity_offset", "use_fidelity_readouts")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid (the message says which)."""


def default_model_config() -> Dict[str, Any]:
    text = resources.files("aimnet2mult.resources.config").joinpath("default_model.yaml").read_text()
    cfg = yaml.safe_load(text)
    cfg.update(num_fidelities=1, fidelity_offset=200, use_fidelity_readouts=True)
    return cfg


def read_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def model_config(source: Union[None, str, Path, Dict[str, Any]] = None,
                 **overrides: Any) -> Dict[str, Any]:
    """Defaults, updated by a YAML file or dict, then by keyword overrides; validated."""
    cfg = default_model_config()
    where = "model configuration"
    if isinstance(source, (str, Path)):
        where = str(source)
        update = read_yaml(source)
        # the seed's model.yaml may nest the architecture under 'model'
        if set(update) == {"model"} and isinstance(update["model"], dict):
            update = update["model"]
    else:
        update = dict(source or {})
    if "lrcoulomb" in update:
        if "coulomb" in update:
            raise ConfigError(f"{where}: give either 'coulomb' or the seed's 'lrcoulomb' block, not both")
        update = dict(update)
        update["coulomb"] = coulomb_from_lrcoulomb(update.pop("lrcoulomb"), where)
    for key, value in list(update.items()) + list(overrides.items()):
        if key not in cfg:
            raise ConfigError(f"{where}: unknown model key '{key}'; valid keys: {', '.join(sorted(cfg))}")
        if value is not None:
            cfg[key] = copy.deepcopy(value)
    return validate_model_config(cfg, where)


#: class names accepted in the seed's ``lrcoulomb`` block
LRCOULOMB_CLASSES = ("aimnet2mult.modules.LRCoulomb", "aimnet2.modules.LRCoulomb", "LRCoulomb")


def coulomb_from_lrcoulomb(block: Any, where: str) -> Dict[str, Any]:
    """The seed's ``lrcoulomb: {class, kwargs: {key_in, key_out, method, rc, dsf_alpha, dsf_rc}}``
    block as this package's ``coulomb`` mapping (Coulomb of the predicted charges added to the
    energy)."""
    if not isinstance(block, dict) or not isinstance(block.get("kwargs", {}), dict):
        raise ConfigError(f"{where}: 'lrcoulomb' must be a mapping with 'class' and 'kwargs'")
    cls = block.get("class", LRCOULOMB_CLASSES[0])
    if cls not in LRCOULOMB_CLASSES:
        raise ConfigError(f"{where}: 'lrcoulomb.class' {cls!r} is not supported; use {LRCOULOMB_CLASSES[0]}")
    unknown = sorted(set(block) - {"class", "kwargs"})
    if unknown:
        raise ConfigError(f"{where}: unknown 'lrcoulomb' key(s) {unknown}; valid keys: class, kwargs")
    kwargs = dict(block.get("kwargs") or {})
    for key, expected in (("key_in", "charges"), ("key_out", "energy")):
        value = kwargs.pop(key, expected)
        if value != expected:
            raise ConfigError(f"{where}: 'lrcoulomb.kwargs.{key}' must be {expected!r}, got {value!r}")
    coul = {"method": kwargs.pop("method", "simple")}
    coul.update(kwargs)
    validate_coulomb(coul, f"{where}: lrcoulomb.kwargs")
    return coul


def validate_model_config(cfg: Dict[str, Any], where: str = "model configuration") -> Dict[str, Any]:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: {msg}")

    need(float(cfg["cutoff"]) > float(cfg["shell_start"]) >= 0, "need cutoff > shell_start >= 0")
    for key in ("num_shells", "num_features", "num_combinations", "aim_size", "num_fidelities",
                "fidelity_offset"):
        need(isinstance(cfg[key], int) and cfg[key] > 0, f"'{key}' must be a positive integer, got {cfg[key]!r}")
    need(cfg["num_charge_channels"] in (1, 2), "'num_charge_channels' must be 1 (closed shell) or 2 (open shell)")
    need(isinstance(cfg["passes"], list) and len(cfg["passes"]) >= 2
         and all(isinstance(p, list) and p and all(isinstance(h, int) and h > 0 for h in p) for p in cfg["passes"]),
         "'passes' must be a list of at least two non-empty lists of positive layer widths")
    need(isinstance(cfg["energy_head"], list) and all(isinstance(h, int) and h > 0 for h in cfg["energy_head"]),
         "'energy_head' must be a list of positive layer widths")
    need(cfg["shift_dtype"] in ("float32", "float64"), "'shift_dtype' must be float32 or float64")
    need(cfg["fidelity_offset"] > 118, "'fidelity_offset' must exceed the largest atomic number (118)")
    need(isinstance(cfg["use_fidelity_readouts"], bool), "'use_fidelity_readouts' must be true or false")
    coul = cfg.get("coulomb")
    if coul is not None:
        validate_coulomb(coul, where)
    return cfg


#: Coulomb settings and their defaults (Å, 1/Å); see aimnet2mult.nn.coulomb for the formulas
COULOMB_DEFAULTS = {"method": "simple", "rc": 4.6, "dsf_alpha": 0.2, "dsf_rc": 15.0,
                    "ewald_accuracy": 1e-8, "ewald_rc": None}
COULOMB_METHODS = ("simple", "dsf", "ewald", "none")
#: the methods defined for periodic systems (``simple`` sums the pairs of isolated molecules)
PERIODIC_COULOMB_METHODS = ("dsf", "ewald")


def validate_coulomb(coul: Any, where: str = "model configuration") -> None:
    """Check a ``coulomb`` mapping: method simple|dsf|ewald|none and its parameters."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: {msg}")

    need(isinstance(coul, dict), "'coulomb' must be a mapping with a 'method' key")
    need(coul.get("method") in COULOMB_METHODS,
         f"'coulomb.method' must be one of {', '.join(COULOMB_METHODS)}, got {coul.get('method')!r}")
    unknown = sorted(set(coul) - set(COULOMB_DEFAULTS))
    need(not unknown, f"unknown 'coulomb' key(s) {unknown}; valid keys: {', '.join(COULOMB_DEFAULTS)}")

    def number(key: str) -> float:
        value = coul.get(key, COULOMB_DEFAULTS[key])
        need(isinstance(value, (int, float)) and not isinstance(value, bool),
             f"'coulomb.{key}' must be a number, got {value!r}")
        return float(value)

    rc = number("rc")
    need(rc > 0, "'coulomb.rc' must be positive")
    need(number("dsf_alpha") >= 0, "'coulomb.dsf_alpha' must be >= 0 (1/Å)")
    need(number("dsf_rc") >= rc, "'coulomb.dsf_rc' must be at least 'coulomb.rc' (the short-range switch radius)")
    acc = number("ewald_accuracy")
    need(0 < acc < 1, "'coulomb.ewald_accuracy' must lie in (0, 1), e.g. 1e-8")
    if coul.get("ewald_rc") is not None:
        need(number("ewald_rc") >= rc, "'coulomb.ewald_rc' must be at least 'coulomb.rc' (or null = automatic)")


def coulomb_settings(cfg: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Full Coulomb settings (defaults filled in; ewald_rc 0.0 = automatic) or None for 'none'."""
    coul = cfg.get("coulomb")
    if not coul or coul.get("method", "none") == "none":
        return None
    out = dict(COULOMB_DEFAULTS)
    out.update({k: v for k, v in coul.items() if v is not None})
    for key in ("rc", "dsf_alpha", "dsf_rc", "ewald_accuracy"):
        out[key] = float(out[key])
    out["ewald_rc"] = float(out["ewald_rc"] or 0.0)
    return out
