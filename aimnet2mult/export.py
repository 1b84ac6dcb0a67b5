"""Checkpoint -> per-fidelity potential (in memory or TorchScript ``PREFIX_fid{K}.jpt``).

The potential of fidelity K = shared backbone + embedding block K + readout K + SAE_K (float64)
+ the chosen D3(BJ). Metadata (JSON) travels inside the TorchScript file as the extra file
``metadata.json``; ``torch.jit.load(path)`` needs nothing from aimnet2mult.

The flat-layout neighbour lists are built inside the file by the pure-TorchScript cell list by
default (``neighbor_list="torch"``), so a plain ``torch.jit.load`` in any process loads it.
``neighbor_list="vesin"`` uses vesin-torch instead; such a file loads only after
``import vesin_torch`` (recorded in the metadata's ``requires_extensions``; ``load_potential``
imports it).
"""

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from . import __version__, jit
from .checkpoint import (
    LABELLED_OUTPUTS,
    CheckpointError,
    checkpoint_hash,
    fidelity_index,
    load_checkpoint,
    trained_outputs,
)
from .elements import SYMBOLS
from .io_utils import atomic_write_bytes, serialized
from .nn.onednn import ONEDNN_PRODUCTS
from .potential import Potential

POTENTIAL_FORMAT = "aimnet2mult-potential"
METADATA_FILE = "metadata.json"
#: sentinel: use the dispersion recorded in the checkpoint for that fidelity
RECORDED = "recorded"


def single_fidelity_state(ckpt: Dict[str, Any], k: int) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """Model config and state dict of a one-fidelity network holding fidelity k of ``ckpt``."""
    cfg = copy.deepcopy(ckpt["model_config"])
    n_fid, off = int(cfg["num_fidelities"]), int(cfg["fidelity_offset"])
    if not 0 <= k < n_fid:
        raise CheckpointError(f"fidelity {k} is out of range: the checkpoint has {n_fid} fidelities (0..{n_fid - 1})")
    shared = not cfg["use_fidelity_readouts"]
    src = ckpt["state_dict"]
    state: Dict[str, torch.Tensor] = {}
    for key, value in src.items():
        if key == "backbone.embedding.weight":
            block = value[k * off:(k + 1) * off].clone()
            block[0] = 0.0
            state[key] = block
        elif key.startswith("readouts."):
            head, rest = key.split(".", 2)[1], key.split(".", 2)[2]
            if shared:
                state[f"readouts.0.{rest}"] = (value[k * off:(k + 1) * off].clone() if rest == "shifts"
                                               else value.clone())
            elif int(head) == k:
                state[f"readouts.0.{rest}"] = value.clone()
        else:
            state[key] = value.clone()
    cfg.update(num_fidelities=1, use_fidelity_readouts=True)
    return cfg, state


def resolve_dispersion(spec: Any, recorded: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """None/'none' -> no dispersion; 'recorded' -> the checkpoint's; a functional name -> its D3(BJ)
    parameters ('NAME-d4' -> its D4 parameters); a dict ``{"method": "d3bj" | "d4", "functional":
    NAME}`` or with s6/s8/a1/a2 (and optional s9, alp) -> those. D3(BJ) takes ATM only when asked
    (``atm: true``), D4 always unless ``atm: false`` (dftd4's default model)."""
    from .dispersion_params import custom_d3bj_parameters, custom_d4_parameters, d3bj_parameters, d4_parameters

    if isinstance(spec, str) and spec == RECORDED:
        spec = recorded
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name.endswith("-d4") and len(name) > 3:
            return {"method": "d4", "functional": name[:-3], **d4_parameters(name[:-3])}
        params = d3bj_parameters(spec)
        return {"method": "d3bj", "functional": name, **params}
    if isinstance(spec, dict):
        spec = dict(spec)
        method = str(spec.get("method", "d3bj")).lower()
        if method not in ("d3bj", "d4"):
            raise ValueError(f"unsupported dispersion method {spec.get('method')!r} (supported: d3bj, d4, none)")
        d4 = method == "d4"
        functional = spec.get("functional")
        if all(k in spec and spec[k] is not None for k in ("s6", "s8", "a1", "a2")):
            custom = custom_d4_parameters if d4 else custom_d3bj_parameters
            s9 = spec.get("s9")
            params = custom(float(spec["s6"]), float(spec["s8"]), float(spec["a1"]), float(spec["a2"]),
                            s9=float((1.0 if d4 else 0.0) if s9 is None else s9),
                            alp=float(spec.get("alp") or (16.0 if d4 else 14.0)))
        elif functional:
            if d4:
                params = d4_parameters(functional, atm=bool(spec.get("atm", True)))
            else:
                params = d3bj_parameters(functional, atm=bool(spec.get("atm", False)))
        else:
            raise ValueError(f"a {method} dispersion needs a functional name or all of s6, s8, a1, a2")
        out = {"method": method, "functional": functional, **params}
        if d4:
            for key in ("cutoff", "switch_width"):
                if spec.get(key) is not None:
                    raise ValueError(f"the d4 dispersion takes no {key!r}: it sums every pair of each isolated "
                                     "molecule with dftd4's cutoffs (see aimnet2mult.nn.d4)")
            return out
        # flat-layout cutoff (Å) and width of its smooth switch (Å); see aimnet2mult.nn.dispersion
        for key in ("cutoff", "switch_width"):
            if spec.get(key) is not None:
                out[key] = float(spec[key])
        return out
    raise ValueError(f"cannot interpret dispersion specification {spec!r}")


def resolve_coulomb(spec: Any, recorded: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Coulomb settings of a potential: 'recorded' -> the checkpoint's; None/'none' -> no Coulomb;
    a method name ('simple', 'dsf', 'ewald') -> that method with the recorded parameters; a dict
    -> the recorded settings updated by it. A model trained without Coulomb cannot get one."""
    from .model_config import validate_coulomb

    if isinstance(spec, str) and spec == RECORDED:
        return copy.deepcopy(recorded)
    if spec is None:
        spec = "none"
    if isinstance(spec, str):
        spec = {"method": spec.lower()}
    if not isinstance(spec, dict):
        raise ValueError(f"cannot interpret Coulomb specification {spec!r} (a method name or a dict)")
    base = dict(recorded) if recorded else {"method": "none"}
    merged = {**base, **{k: v for k, v in spec.items()}}
    validate_coulomb(merged, "coulomb")
    if merged["method"] != "none" and base.get("method", "none") == "none":
        raise ValueError("the model was trained without a Coulomb term (method 'none'): its network learned "
                         "the electrostatics, so a Coulomb method cannot be added at export")
    return merged


def build_potential(ckpt: Union[Dict[str, Any], str, Path], fidelity: Union[int, str],
                    dispersion: Any = RECORDED, coulomb: Any = RECORDED,
                    neighbor_list: str = "torch", terms: Optional[List[Dict[str, Any]]] = None) -> Potential:
    """In-memory potential of one fidelity (eval mode, not scripted).

    ``coulomb``: the Coulomb method and parameters (default: the checkpoint's model config), e.g.
    ``"dsf"``, ``{"method": "ewald", "ewald_accuracy": 1e-8}`` or ``"none"``; see ``resolve_coulomb``.
    ``neighbor_list``: builder of the flat-layout neighbour lists, ``"torch"`` (pure TorchScript
    cell list, default) or ``"vesin"`` (vesin-torch; exported files then need ``import vesin_torch``).
    ``terms``: further energy terms, ``[{"method": NAME, ...}]`` of registered terms
    (``aimnet2mult.nn.terms``; how to write one: ``docs/adding-a-term.md``).
    """
    from .nn.model import MultiFidelityAIMNet2
    from .nn.neighbors import make_neighbor_list
    from .nn.terms import build_term

    nblist = make_neighbor_list(neighbor_list)

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    k = fidelity_index(ckpt, fidelity)
    cfg, state = single_fidelity_state(ckpt, k)
    cfg["coulomb"] = resolve_coulomb(coulomb, cfg.get("coulomb"))
    model = MultiFidelityAIMNet2(cfg)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"fidelity {k} weights do not fit the model: missing {result.missing_keys[:8]}, "
                              f"unexpected {result.unexpected_keys[:8]}")
    entry = ckpt["fidelities"][k]
    off = int(cfg["fidelity_offset"])
    sae = torch.zeros(off, dtype=torch.float64)
    for z, v in entry["sae"].items():
        sae[int(z)] = float(v)
    supported = torch.zeros(off, dtype=torch.bool)
    supported[[int(z) for z in entry["elements"]]] = True
    disp = resolve_dispersion(dispersion, entry.get("dispersion"))
    specs = ([] if disp is None else [dict(disp, method=disp.get("method", "d3bj"))]) + [dict(t) for t in (terms or [])]
    modules = [build_term(spec) for spec in specs]
    pot = Potential(model, sae, supported, modules, k, entry["name"], SYMBOLS[:off] + [""] * max(0, off - len(SYMBOLS)),
                    neighbor_list=nblist, trained_outputs=trained_outputs(entry))
    pot.eval()
    # forces need gradients w.r.t. coordinates only: weights that require grad would make every
    # force call also compute the weight gradients (about 10-20 % of the time of a call)
    pot.requires_grad_(False)
    pot.metadata = potential_metadata(ckpt, k, disp, cfg.get("coulomb"),  # plain attribute, not scripted
                                      neighbor_library=nblist.library)
    pot.metadata["energy_terms"] = [{"method": spec["method"], "name": m.name, "cutoff": m.cutoff,
                                     "hand_written_gradient": hasattr(m, "energy_and_distance_grad")}
                                    for spec, m in zip(specs, modules)]
    pot.metadata["outputs"] += [f"{m.name}_energy" for m in modules if not m.is_dispersion]
    return pot


def potential_metadata(ckpt: Dict[str, Any], k: int, disp: Optional[Dict[str, Any]],
                       coulomb: Any = RECORDED, neighbor_library: str = "torch") -> Dict[str, Any]:
    from .model_config import coulomb_settings

    cfg = ckpt["model_config"]
    entry = ckpt["fidelities"][k]
    if isinstance(coulomb, str) and coulomb == RECORDED:
        coulomb = cfg.get("coulomb")
    coul = coulomb_settings({"coulomb": coulomb})
    if disp is not None:
        disp = dict(disp)
        disp.setdefault("method", "d3bj")
        if disp["method"] == "d4":  # every pair of each isolated molecule, dftd4's cutoffs (Bohr)
            disp.update(cutoff=None, switch_width=None, charges="eeq",
                        cutoffs_bohr={"cn": 30.0, "eeq_cn": 25.0, "two_body": 60.0, "three_body": 40.0})
        else:
            disp.setdefault("cutoff", 15.0)
            disp.setdefault("switch_width", 3.0)
    return {
        "format": POTENTIAL_FORMAT,
        "format_version": 1,
        "package_version": __version__,
        "fidelity": k,
        "fidelity_name": entry["name"],
        "num_fidelities_in_source": int(cfg["num_fidelities"]),
        "fidelity_offset": int(cfg["fidelity_offset"]),
        "elements": [int(z) for z in entry["elements"]],
        "element_symbols": [SYMBOLS[int(z)] for z in entry["elements"]],
        "cutoff": float(cfg["cutoff"]),
        "coulomb": coul if coul is not None else {"method": "none"},
        "open_shell": int(cfg["num_charge_channels"]) == 2,
        "shift_dtype": cfg["shift_dtype"],
        "dispersion": disp,
        "labels_include_dispersion": bool(entry.get("labels_include_dispersion", False)),
        "sae": {str(z): v for z, v in entry["sae"].items()},
        "units": {"coord": "angstrom", "energy": "eV", "forces": "eV/angstrom", "charges": "e",
                  "stress": "eV/angstrom^3"},
        "layouts": ["dense", "flat"],
        "inputs": {
            "dense": {"coord": "(B, N, 3) float, Å", "numbers": "(B, N) int, 0 = padding",
                      "charge": "(B,) float, optional (0)", "mult": "(B,) float, optional (1)"},
            "flat": {"coord": "(N, 3) float, Å", "numbers": "(N,) int, atomic numbers >= 1",
                     "charge": "() or (n_mol,) float, optional (0)", "mult": "() or (n_mol,) float, optional (1)",
                     "mol_idx": "(N,) int, sorted molecule index 0..n_mol-1, optional (one molecule)",
                     "cell": "(3, 3) float, Å, rows = lattice vectors, optional (periodic)",
                     "pbc": "(3,) bool, optional (all True when 'cell' is given)",
                     "nbmat, cell_shifts, pairs_lr, cell_shifts_lr": "optional cached neighbour lists "
                     "(neighbor_lists() / aimnet2mult.nn.neighbors.VerletNeighborList)"},
        },
        # untrained charges / spin charges stay internal (the Coulomb term uses them) and are not returned
        "trained_outputs": trained_outputs(entry),
        "outputs": ["energy", "forces"] + [o for o in LABELLED_OUTPUTS if o in trained_outputs(entry)
                                           and (o != "spin_charges" or int(cfg["num_charge_channels"]) == 2)]
        + ["dispersion_energy"]
        + ["stress (flat periodic input only, (3, 3) eV/Å^3, (1/V) dE/d(strain))"],
        "neighbor_list": {"library": neighbor_library,
                          "implementation": ("aimnet2mult.nn.neighbors.TorchCellList (pure TorchScript cell list)"
                                             if neighbor_library == "torch"
                                             else "aimnet2mult.nn.neighbors_vesin.VesinNeighbors (vesin-torch)"),
                          "short_range_cutoff": float(cfg["cutoff"]),
                          "dispersion_cutoff": None if disp is None else disp["cutoff"],
                          "dispersion_switch_width": None if disp is None else disp["switch_width"]},
        "requires_extensions": [] if neighbor_library == "torch" else [neighbor_library],
        # dense layers by oneDNN (aimnet2mult.nn.onednn.ONEDNN_PRODUCTS): loading needs a torch
        # build with oneDNN; export with AIMNET2MULT_ONEDNN=0 for one that loads anywhere
        "onednn_products": bool(ONEDNN_PRODUCTS),
        "source": ckpt.get("source", {}),
    }


def export_potential(ckpt: Union[Dict[str, Any], str, Path], fidelity: Union[int, str],
                     output: Union[str, Path], dispersion: Any = RECORDED,
                     source_hash: Optional[str] = None, coulomb: Any = RECORDED,
                     neighbor_list: str = "torch", terms: Optional[List[Dict[str, Any]]] = None) -> Path:
    """Script and save the potential of one fidelity. ``output`` ending in ``.jpt`` is used as
    given; otherwise it is a prefix and the file is ``{output}_fid{K}.jpt``. Written atomically.
    ``coulomb`` and ``neighbor_list`` (``"torch"``, default: loads with a plain
    ``torch.jit.load``; ``"vesin"``: needs ``import vesin_torch`` first) and ``terms`` as in
    ``build_potential``."""
    if not isinstance(ckpt, dict):
        source_hash = checkpoint_hash(ckpt)
        ckpt = load_checkpoint(ckpt)
    k = fidelity_index(ckpt, fidelity)
    pot = build_potential(ckpt, k, dispersion, coulomb, neighbor_list, terms)
    meta = dict(pot.metadata)
    del pot.metadata
    meta["source_checkpoint_sha256"] = source_hash
    scripted = jit.script(pot)
    output = str(output)
    path = Path(output if output.endswith(".jpt") else f"{output}_fid{k}.jpt")
    extra = {METADATA_FILE: json.dumps(meta, indent=1)}
    atomic_write_bytes(path, serialized(lambda buf: jit.save(scripted, buf, _extra_files=extra)))
    return path


def read_metadata(path: Union[str, Path]) -> Dict[str, Any]:
    """Metadata of an exported potential (without loading the TorchScript code)."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"potential file not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("extra/" + METADATA_FILE)]
            if not names:
                raise ValueError(f"{path}: TorchScript file without aimnet2mult metadata "
                                 "(not an aimnet2mult potential)")
            return json.loads(zf.read(names[0]))
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not a TorchScript potential file") from None


def load_potential(path: Union[str, Path], device: Union[str, torch.device] = "cpu"):
    """(scripted potential, metadata) of an exported ``.jpt``, with a clear error for other files."""
    meta = read_metadata(path)
    if meta.get("format") != POTENTIAL_FORMAT:
        raise ValueError(f"{path}: metadata format {meta.get('format')!r} is not {POTENTIAL_FORMAT!r}")
    for ext in meta.get("requires_extensions", []):
        __import__(ext)
    if meta.get("onednn_products") and not torch.backends.mkldnn.is_available():
        raise ValueError(f"{path}: the potential was exported with oneDNN dense-layer products, and this torch "
                         f"build ({torch.__version__}) has no oneDNN (torch.backends.mkldnn.is_available() is "
                         "False); export it again with AIMNET2MULT_ONEDNN=0 in the environment")
    try:
        module = jit.load(str(path), map_location=device)
    except RuntimeError as exc:
        if "Unknown type name" in str(exc):
            raise ValueError(f"{path}: the potential needs the extension(s) {meta.get('requires_extensions')} "
                             f"(import them before torch.jit.load): {str(exc).splitlines()[0]}") from None
        raise
    module.eval()
    for param in module.parameters():  # files written before weights were saved without requires_grad
        param.requires_grad_(False)
    return module, meta
