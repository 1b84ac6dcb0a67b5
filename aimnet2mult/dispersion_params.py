"""DFT-D3(BJ) and DFT-D4 damping parameters by functional name.

D3(BJ) values come from the parameter database that ships with the ``dftd3`` package
(simple-dftd3), ``<site-packages>/dftd3/parameters.toml``; D4 values from the one of the ``dftd4``
package, ``<site-packages>/dftd4/parameters.toml`` (its default model, the ``d4.bj-eeq-atm``
entries: rational damping, EEQ charges, ATM three-body term). Each is read once and cached.
Defaults that an entry does not override (s6, s9, alp) come from the database's
``[default.parameter]`` section (``d3.bj`` / ``d4.bj-eeq-atm``).

Returned dicts hold plain floats ``{"s6", "s8", "a1", "a2", "s9", "alp"}``: a1 is dimensionless,
a2 is in Bohr (as in the database), s9 scales the three-body Axilrod-Teller-Muto term and is 0.0
unless asked for.

Name lookup is deliberately strict: an exact database key (case-insensitive, surrounding blanks
ignored), an entry of the explicit alias table below, or one of those followed by a "-d3bj",
"-d3(bj)" or "-d3" suffix (D4: "-d4"). There is no substring or fuzzy matching (an earlier implementation
resolved "pbe0-d3" to PBE that way); close spellings are only *suggested* in the error message.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import math
import numbers
from pathlib import Path
from typing import Dict, List, Tuple

__all__ = [
    "DispersionParameterError",
    "d3bj_parameters",
    "custom_d3bj_parameters",
    "available_d3bj_functionals",
    "d4_parameters",
    "custom_d4_parameters",
    "available_d4_functionals",
]


class DispersionParameterError(ValueError):
    """Unknown functional, functional without D3(BJ) / D4 parameters, or invalid custom parameters."""


#: Common spellings -> database key. Values must be keys of the dftd3 database (checked lazily in
#: :func:`_aliases`, so a database without one of them simply drops that alias).
_ALIASES: Dict[str, str] = {
    "ωb97x": "wb97x",
    "ωb97m": "wb97m",
    "b97-3c": "b973c",
    "b97_3c": "b973c",
    "b97-d": "b97d",
    "b97-1": "b97_1",
    "b97-2": "b97_2",
    "pbe1pbe": "pbe0",
    "pbeh-3c": "pbeh3c",
    "hf-3c": "hf3c",
    "hf-3cv": "hf3cv",
    "b3-lyp": "b3lyp",
    "b3lyp/6-31gd": "b3lyp_631gd",
    "b3lyp/6-31g*": "b3lyp_631gd",
    "cam-b3lyp": "camb3lyp",
    "lc-wpbe": "lcwpbe",
    "lc-ωpbe": "lcwpbe",
    "lc-whpbe": "lc_whpbe",
    "lc-ωhpbe": "lc_whpbe",
    "b2-plyp": "b2plyp",
    "b2gp-plyp": "b2gpplyp",
    "mpw2-plyp": "mpw2plyp",
    "dsd-blyp": "dsdblyp",
    "dsd-pbep86": "dsdpbep86",
    "pwpb-95": "pwpb95",
    "r2scan-h": "r2scanh",
    "r2scan-0": "r2scan0",
    "r2scan-50": "r2scan50",
    "m05-2x": "m052x",
    "m06-2x": "m062x",
    "m06-l": "m06l",
    "m08-hx": "m08hx",
    "m11-l": "m11l",
    "mn12-l": "mn12l",
    "mn12-sx": "mn12sx",
    "mn15-l": "mn15l",
    "n12-sx": "n12sx",
    "sogga11-x": "sogga11x",
}

#: Suffixes naming the correction itself; stripped only when the rest is an exact name/alias.
_SUFFIXES: Dict[str, Tuple[str, ...]] = {"dftd3": ("-d3(bj)", "-d3bj", "-d3"), "dftd4": ("-d4",)}
_LABEL: Dict[str, str] = {"dftd3": "D3(BJ)", "dftd4": "D4"}

#: Damping keys of the database, for messages.
_DAMPING_NAMES: Dict[str, str] = {
    "bj": "rational/BJ",
    "zero": "zero",
    "bjm": "modified rational (BJM)",
    "zerom": "modified zero",
    "op": "optimized power",
    "cso": "C6-only (CSO)",
}


def _database_path(package: str = "dftd3") -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"The '{package}' package (its Python API) is required for the {_LABEL[package]} parameter "
            "database but is not installed."
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "parameters.toml"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{package} is installed but its parameter database 'parameters.toml' was not found in "
        f"{list(spec.submodule_search_locations)}."
    )


@functools.lru_cache(maxsize=2)
def _database(package: str = "dftd3") -> dict:
    """The parsed parameters.toml of ``package`` (dftd3 or dftd4; read once)."""
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    with open(_database_path(package), "rb") as fh:
        return tomllib.load(fh)


def _entries(package: str = "dftd3") -> Dict[str, dict]:
    return _database(package)["parameter"]


def _bj_defaults() -> dict:
    return _database()["default"]["parameter"]["d3"]["bj"]


@functools.lru_cache(maxsize=2)
def _aliases(package: str = "dftd3") -> Dict[str, str]:
    entries = _entries(package)
    return {alias: key for alias, key in _ALIASES.items() if key in entries}


def _lookup(name: str, package: str = "dftd3") -> str:
    """Exact database key or alias -> database key, or '' when neither."""
    if name in _entries(package):
        return name
    return _aliases(package).get(name, "")


def _resolve(functional: str, package: str = "dftd3") -> str:
    label = _LABEL[package]
    if not isinstance(functional, str):
        raise DispersionParameterError(
            f"Functional name must be a string, got {type(functional).__name__}."
        )
    name = functional.strip().lower()
    key = _lookup(name, package)
    if key:
        return key
    for suffix in _SUFFIXES[package]:
        if name.endswith(suffix) and len(name) > len(suffix):
            key = _lookup(name[: -len(suffix)], package)
            if key:
                return key
            break  # only the longest matching suffix is tried
    candidates = sorted(set(_entries(package)) | set(_aliases(package)))
    near = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Near matches: {', '.join(near)}." if near else ""
    short = "d3bj" if package == "dftd3" else "d4"
    raise DispersionParameterError(
        f"Unknown functional {functional!r} for {label} dispersion: not a name in the {package} "
        f"parameter database or the alias table.{hint} Use available_{short}_functionals() for the "
        f"full list, or custom_{short}_parameters(...) for explicit values."
    )


def _finite(name: str, value, label: str = "D3(BJ)") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DispersionParameterError(
            f"{label} parameter {name} must be a real number, got {value!r}."
        )
    value = float(value)
    if not math.isfinite(value):
        raise DispersionParameterError(f"{label} parameter {name} must be finite, got {value}.")
    return value


def _checked(label: str, s6, s8, a1, a2, s9, alp) -> Dict[str, float]:
    out = {k: _finite(k, v, label) for k, v in (("s6", s6), ("s8", s8), ("a1", a1), ("a2", a2),
                                                  ("s9", s9), ("alp", alp))}
    if out["s6"] < 0.0:
        raise DispersionParameterError(f"{label} parameter s6 must be >= 0, got {out['s6']}.")
    if out["a2"] < 0.0:
        raise DispersionParameterError(f"{label} parameter a2 (Bohr) must be >= 0, got {out['a2']}.")
    if out["alp"] <= 0.0:
        raise DispersionParameterError(f"{label} parameter alp must be > 0, got {out['alp']}.")
    return out


def custom_d3bj_parameters(
    s6: float, s8: float, a1: float, a2: float, s9: float = 0.0, alp: float = 14.0
) -> Dict[str, float]:
    """Validated explicit D3(BJ) parameters (a1 dimensionless, a2 in Bohr).

    All values must be finite real numbers; additionally s6 >= 0, a2 >= 0 and alp > 0. s8, a1
    and s9 may be negative (the database itself has negative s8/a1, e.g. SSB, B97M).
    """
    return _checked("D3(BJ)", s6, s8, a1, a2, s9, alp)


def d3bj_parameters(functional: str, atm: bool = False) -> Dict[str, float]:
    """D3(BJ) parameters of ``functional`` from the dftd3 database.

    Returns floats ``{"s6", "s8", "a1", "a2", "s9", "alp"}``; s9 is the database default
    (normally 1.0) when ``atm`` is True and 0.0 otherwise.

    Raises :class:`DispersionParameterError` for unknown names (listing near matches) and for
    functionals that the database knows only with other D3 damping schemes.
    """
    key = _resolve(functional)
    d3 = _entries()[key].get("d3", {})
    entry = d3.get("bj")
    if entry is None:
        have = [f"{_DAMPING_NAMES.get(k, k)} ('d3.{k}')" for k in d3]
        have_txt = ", ".join(have) if have else "none"
        raise DispersionParameterError(
            f"Functional {functional!r} (database key {key!r}) has no D3(BJ) (rational damping) "
            f"parameters in the dftd3 database; it only has these D3 dampings: {have_txt}. "
            "Choose another functional or pass explicit values via custom_d3bj_parameters(...)."
        )
    defaults = _bj_defaults()
    missing = [k for k in ("s8", "a1", "a2") if k not in entry]
    if missing:  # pragma: no cover - database sanity
        raise DispersionParameterError(
            f"D3(BJ) entry for {key!r} lacks {missing} in the dftd3 database."
        )
    return custom_d3bj_parameters(
        s6=entry.get("s6", defaults.get("s6", 1.0)),
        s8=entry["s8"],
        a1=entry["a1"],
        a2=entry["a2"],
        s9=float(entry.get("s9", defaults.get("s9", 1.0))) if atm else 0.0,
        alp=entry.get("alp", defaults.get("alp", 14.0)),
    )


def available_d3bj_functionals() -> List[str]:
    """Sorted database keys that have D3(BJ) parameters (aliases not included)."""
    return sorted(k for k, v in _entries().items() if "bj" in v.get("d3", {}))


def custom_d4_parameters(
    s6: float, s8: float, a1: float, a2: float, s9: float = 1.0, alp: float = 16.0
) -> Dict[str, float]:
    """Validated explicit D4 parameters (rational damping; a1 dimensionless, a2 in Bohr; s9 the
    ATM scaling, 1.0 as in dftd4's default model, 0 for two-body only). Same rules as D3(BJ):
    finite, s6 >= 0, a2 >= 0, alp > 0."""
    return _checked("D4", s6, s8, a1, a2, s9, alp)


def d4_parameters(functional: str, atm: bool = True) -> Dict[str, float]:
    """D4 parameters of ``functional`` from the dftd4 database (its ``d4.bj-eeq-atm`` entries).

    Returns floats ``{"s6", "s8", "a1", "a2", "s9", "alp"}``; s9 is the database default (1.0:
    dftd4 applies the ATM term by default) when ``atm`` is True and 0.0 otherwise.

    Raises :class:`DispersionParameterError` for unknown names (listing near matches) and for
    functionals that the database has without D4 parameters.
    """
    try:
        key = _resolve(functional, "dftd4")
    except DispersionParameterError as err:
        name = functional.strip().lower() if isinstance(functional, str) else ""
        known_d3 = name and (_lookup(name) or any(
            name.endswith(x) and _lookup(name[: -len(x)]) for x in _SUFFIXES["dftd4"] + _SUFFIXES["dftd3"]))
        if known_d3:
            raise DispersionParameterError(
                f"Functional {functional!r} has D3 parameters (dftd3 database) but no D4 parameters in the dftd4 "
                "database: use D3(BJ) for it, or pass explicit values via custom_d4_parameters(...)."
            ) from None
        raise err
    d4 = _entries("dftd4")[key].get("d4", {})
    entry = d4.get("bj-eeq-atm")
    if entry is None:
        have = ", ".join(f"'d4.{k}'" for k in d4) or "none"
        raise DispersionParameterError(
            f"Functional {functional!r} (database key {key!r}) has no D4 (rational damping, EEQ, ATM) "
            f"parameters in the dftd4 database (it has: {have}). Choose another functional or pass "
            "explicit values via custom_d4_parameters(...)."
        )
    defaults = _database("dftd4")["default"]["parameter"]["d4"]["bj-eeq-atm"]
    return custom_d4_parameters(
        s6=entry.get("s6", defaults.get("s6", 1.0)),
        s8=entry["s8"],
        a1=entry["a1"],
        a2=entry["a2"],
        s9=float(entry.get("s9", defaults.get("s9", 1.0))) if atm else 0.0,
        alp=entry.get("alp", defaults.get("alp", 16.0)),
    )


def available_d4_functionals() -> List[str]:
    """Sorted database keys of the dftd4 database that have D4 parameters (aliases not included)."""
    return sorted(k for k, v in _entries("dftd4").items() if "bj-eeq-atm" in v.get("d4", {}))
