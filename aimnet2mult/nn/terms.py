"""Energy terms: what an exported potential adds to the network's energy on its long-range pairs.

A term is an ``nn.Module`` (TorchScript-compilable) with

* ``name: str`` — its output is ``{name}_energy`` (n_mol,) eV, unless ``is_dispersion``: then it
  is summed into ``dispersion_energy``;
* ``is_dispersion: bool``;
* ``cutoff: float`` — Å, the reach of the pair list it needs in the flat layout (the potential
  builds one long-range list for the largest); isolated molecules given in the dense layout get
  every pair (``all_pairs``);
* ``forward(numbers, d_ij, pair_mask, data, pairs_key, all_pairs) -> (n_mol,) float64 eV``:
  ``numbers`` (A,) (dense: (B, N)), ``d_ij`` pair distances Å and ``pair_mask`` (True = no pair)
  of the list ``data[pairs_key]`` (the flat half list ``"pairs_lr"`` (2, P), or the neighbour
  matrix ``"nbmat"``; dense (B, N, N) when ``data`` is a dense batch, see ``nbops``);
  ``all_pairs``: the list holds every pair of isolated molecules (no cutoff switch needed);
* optionally ``energy_and_distance_grad(numbers, d_ij, data, pairs_key, all_pairs) ->
  (energy (n_mol,) eV, dE/dd_ij (P,) eV/Å)`` on the flat half list, run under no_grad, exported with
  ``@torch.jit.export``: the hand-written gradient. A term without it gets its forces from autograd
  (the potential then keeps autograd on for the call); with it, the whole call can run without.

Terms are built from specifications ``{"method": NAME, ...}`` by the factory registered under
NAME (:func:`register_term`); ``aimnet2mult.export.build_potential(..., terms=[spec, ...])`` adds
them to a fidelity's potential (D3(BJ) or D4 comes from the fidelity's recorded ``dispersion``).
A ``cutoff`` below 0 asks for every pair of each molecule (D4: its EEQ charges need them); such a
term refuses periodic input.
How to write one: ``docs/adding-a-term.md``.
"""

from typing import Any, Callable, Dict, List, Mapping

from torch import nn

TermFactory = Callable[[Dict[str, Any]], nn.Module]
_REGISTRY: Dict[str, TermFactory] = {}


def register_term(method: str, factory: TermFactory) -> None:
    """Make ``{"method": method, ...}`` build ``factory(spec)`` (the spec without ``method``)."""
    if not method or not isinstance(method, str):
        raise ValueError(f"a term needs a non-empty method name, got {method!r}")
    _REGISTRY[method.lower()] = factory


def registered_terms() -> List[str]:
    return sorted(_REGISTRY)


def build_term(spec: Mapping[str, Any]) -> nn.Module:
    """The term module of one specification ``{"method": NAME, ...parameters}``."""
    if not isinstance(spec, Mapping) or "method" not in spec:
        raise ValueError(f"an energy term is a mapping with a 'method' key, got {spec!r}")
    method = str(spec["method"]).lower()
    if method not in _REGISTRY:
        raise ValueError(f"unknown energy term {method!r}; registered: {', '.join(registered_terms()) or 'none'}")
    params = {k: v for k, v in spec.items() if k != "method"}
    term = _REGISTRY[method](params)
    for attr, kind in (("name", str), ("is_dispersion", bool), ("cutoff", float)):
        if not isinstance(getattr(term, attr, None), kind):
            raise TypeError(f"energy term {method!r}: attribute {attr!r} ({kind.__name__}) is missing")
    return term


def _d3bj(params: Dict[str, Any]) -> nn.Module:
    from .dispersion import D3BJ

    return D3BJ.from_params(params)


def _d4(params: Dict[str, Any]) -> nn.Module:
    from .d4 import D4

    return D4.from_params(params)


register_term("d3bj", _d3bj)
register_term("d4", _d4)
