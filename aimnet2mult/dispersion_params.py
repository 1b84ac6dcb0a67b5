"""DFT-D3(BJ) damping parameters by functional name.

The values come from the parameter database that ships with the ``dftd3`` package (simple-dftd3),
``<site-packages>/dftd3/parameters.toml``; it is read once and cached. Only rational
(Becke-Johnson) damping, the ``d3.bj`` entries, is served here. Defaults that an entry does not
override (s6, s9, alp) come from the database's ``[default.parameter] d3.bj`` section.

Returned dicts hold plain floats ``{"s6", "s8", "a1", "a2", "s9", "alp"}``: a1 is dimensionless,
a2 is in Bohr (as in the database), s9 scales the three-body Axilrod-Teller-Muto term and is 0.0
unless asked for.

Name lookup is deliberately strict: an exact database key (case-insensitive, surrounding blanks
ignored), an entry of the explicit alias table below, or one of those followed by a "-d3bj",
"-d3(bj)" or "-d3" suffix. There is no substring or fuzzy matching (an earlier implementation
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
]


class DispersionParameterError(ValueError):
    """Unknown functional, functional without D3(BJ) parameters, or invalid custom parameters."""


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
_SUFFIXES: Tuple[str, ...] = ("-d3(bj)", "-d3bj", "-d3")

#: Damping keys of the database, for messages.
_DAMPING_NAMES: Dict[str, str] = {
    "bj": "rational/BJ",
    "zero": "zero",
    "bjm": "modified rational (BJM)",
    "zerom": "modified zero",
    "op": "optimized power",
    "cso": "C6-only (CSO)",
}


def _database_path() -> Path:
    spec = importlib.util.find_spec("dftd3")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The 'dftd3' package (simple-dftd3 Python API) is required for the D3 parameter "
            "database but is not installed."
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "parameters.toml"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "dftd3 is installed but its parameter database 'parameters.toml' was not found in "
        f"{list(spec.submodule_search_locations)}."
    )


@functools.lru_cache(maxsize=1)
def _database() -> dict:
    """The parsed dftd3 parameters.toml (read once)."""
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    with open(_database_path(), "rb") as fh:
        return tomllib.load(fh)


def _entries() -> Dict[str, dict]:
    return _database()["parameter"]


def _bj_defaults() -> dict:
    return _database()["default"]["parameter"]["d3"]["bj"]


@functools.lru_cache(maxsize=1)
def _aliases() -> Dict[str, str]:
    entries = _entries()
    return {alias: key for alias, key in _ALIASES.items() if key in entries}


def _lookup(name: str) -> str:
    """Exact database key or alias -> database key, or '' when neither."""
    if name in _entries():
        return name
    return _aliases().get(name, "")


def _resolve(functional: str) -> str:
    if not isinstance(functional, str):
        raise DispersionParameterError(
            f"Functional name must be a string, got {type(functional).__name__}."
        )
    name = functional.strip().lower()
    key = _lookup(name)
    if key:
        return key
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            key = _lookup(name[: -len(suffix)])
            if key:
                return key
            break  # only the longest matching suffix is tried
    candidates = sorted(set(_entries()) | set(_aliases()))
    near = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Near matches: {', '.join(near)}." if near else ""
    raise DispersionParameterError(
        f"Unknown functional {functional!r} for D3(BJ) dispersion: not a name in the dftd3 "
        f"parameter database or the alias table.{hint} Use available_d3bj_functionals() for the "
        "full list, or custom_d3bj_parameters(...) for explicit values."
    )


def _finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DispersionParameterError(
            f"D3(BJ) parameter {name} must be a real number, got {value!r}."
        )
    value = float(value)
    if not math.isfinite(value):
        raise DispersionParameterError(f"D3(BJ) parameter {name} must be finite, got {value}.")
    return value


def custom_d3bj_parameters(
    s6: float, s8: float, a1: float, a2: float, s9: float = 0.0, alp: float = 14.0
) -> Dict[str, float]:
    """Validated explicit D3(BJ) parameters (a1 dimensionless, a2 in Bohr).

    All values must be finite real numbers; additionally s6 >= 0, a2 >= 0 and alp > 0. s8, a1
    and s9 may be negative (the database itself has negative s8/a1, e.g. SSB, B97M).
    """
    out = {
        "s6": _finite("s6", s6),
        "s8": _finite("s8", s8),
        "a1": _finite("a1", a1),
        "a2": _finite("a2", a2),
        "s9": _finite("s9", s9),
        "alp": _finite("alp", alp),
    }
    if out["s6"] < 0.0:
        raise DispersionParameterError(f"D3(BJ) parameter s6 must be >= 0, got {out['s6']}.")
    if out["a2"] < 0.0:
        raise DispersionParameterError(
            f"D3(BJ) parameter a2 (Bohr) must be >= 0, got {out['a2']}."
        )
    if out["alp"] <= 0.0:
        raise DispersionParameterError(f"D3(BJ) parameter alp must be > 0, got {out['alp']}.")
    return out


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
