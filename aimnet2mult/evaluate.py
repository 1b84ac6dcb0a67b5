"""Errors of one fidelity of a model against the labels of an HDF5 dataset (seed format).

    aimnet2mult evaluate DATA.h5 [DATA2.h5 ...] --model model.pt --fidelity 0 [--json out.json]

The model is a training checkpoint or a compiled potential (``.jpt``). Energies are compared as
the dataset's labels are defined: when the labels exclude dispersion (the fidelity's
``labels_include_dispersion`` is false) but the potential adds D3(BJ) or D4, the dispersion energy
and forces are removed from the prediction first. For a checkpoint the potential is simply built
without dispersion; for a compiled file they are computed with the reference package (``dftd3``,
or ``dftd4`` with the molecule's total charge) with the parameters recorded in the file's metadata.

Metrics (per file): energy MAE / RMSE in kcal/mol (per molecule), force MAE / RMSE in kcal/mol/Å
(per component), charge MAE in e, with the number of molecules that carry each label.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .units import ANGSTROM_TO_BOHR, EV_TO_KCAL_PER_MOL, HARTREE_IN_EV

__all__ = ["evaluate_file", "evaluate_files", "reference_d3", "reference_d4", "reference_dispersion"]


def reference_d3(numbers: np.ndarray, coord: np.ndarray, params: Dict[str, Any]) -> Tuple[float, np.ndarray]:
    """D3(BJ) energy (eV) and forces (N, 3) eV/Å of one molecule from the reference ``dftd3``
    package with explicit damping parameters (s6, s8, a1, a2, s9)."""
    from dftd3.interface import DispersionModel, RationalDampingParam

    model = DispersionModel(np.asarray(numbers, dtype=np.int64),
                            np.asarray(coord, dtype=np.float64) * ANGSTROM_TO_BOHR)
    param = RationalDampingParam(s6=float(params["s6"]), s8=float(params["s8"]), a1=float(params["a1"]),
                                 a2=float(params["a2"]), s9=float(params.get("s9", 0.0)),
                                 alp=float(params.get("alp", 14.0)))
    res = model.get_dispersion(param, grad=True)
    energy = float(res["energy"]) * HARTREE_IN_EV
    forces = -np.asarray(res["gradient"]) * HARTREE_IN_EV * ANGSTROM_TO_BOHR
    return energy, forces


def reference_d4(numbers: np.ndarray, coord: np.ndarray, params: Dict[str, Any],
                 charge: float = 0.0) -> Tuple[float, np.ndarray]:
    """D4 energy (eV) and forces (N, 3) eV/Å of one molecule from the reference ``dftd4`` package
    (EEQ charges for the total ``charge``) with explicit damping parameters (s6, s8, a1, a2, s9, alp)."""
    from dftd4.interface import DampingParam, DispersionModel

    model = DispersionModel(np.asarray(numbers, dtype=np.int64),
                            np.asarray(coord, dtype=np.float64) * ANGSTROM_TO_BOHR, charge=float(charge))
    param = DampingParam(s6=float(params["s6"]), s8=float(params["s8"]), a1=float(params["a1"]),
                         a2=float(params["a2"]), s9=float(params.get("s9", 1.0)), alp=float(params.get("alp", 16.0)))
    res = model.get_dispersion(param, grad=True)
    energy = float(res["energy"]) * HARTREE_IN_EV
    forces = -np.asarray(res["gradient"]) * HARTREE_IN_EV * ANGSTROM_TO_BOHR
    return energy, forces


def reference_dispersion(numbers: np.ndarray, coord: np.ndarray, params: Dict[str, Any],
                         charge: float = 0.0) -> Tuple[float, np.ndarray]:
    """The recorded dispersion (``params["method"]``: d3bj or d4) by its reference package."""
    if params.get("method", "d3bj") == "d4":
        return reference_d4(numbers, coord, params, charge)
    return reference_d3(numbers, coord, params)


def _potential(model: Any, fidelity: Union[int, str, None], device: Any):
    """(callable module, metadata, dispersion params to subtract or None)."""
    from .calculators.runtime import ModelSource

    source = ModelSource(model, device=device, cache=False)
    ckpt = source.checkpoint
    if ckpt is not None:
        from .export import build_potential

        k = source.resolve_fidelity(fidelity)
        entry = ckpt["fidelities"][k]
        disp: Any = "recorded" if entry.get("labels_include_dispersion", False) else None
        pot = build_potential(ckpt, k, dispersion=disp)
        meta = dict(pot.metadata)
        return pot, meta, None
    loaded = source.potential(fidelity)
    meta = loaded.metadata
    subtract = None
    if meta.get("dispersion") and not meta.get("labels_include_dispersion", False):
        subtract = meta["dispersion"]
    return loaded.module, meta, subtract


def evaluate_file(path: Union[str, Path], module, meta: Dict[str, Any], subtract_d3: Optional[Dict[str, Any]],
                  batch_size: int = 64, device: Any = "cpu") -> Dict[str, Any]:
    """Metrics of one potential on one dataset file (see the module docstring)."""
    import torch

    from .data.h5dataset import SizeGroupedDataset

    ds = SizeGroupedDataset(path, in_memory=True)
    by_size: Dict[int, List[int]] = defaultdict(list)
    for i, n in enumerate(ds.n_atoms):
        by_size[int(n)].append(i)
    de: List[float] = []
    df: List[np.ndarray] = []
    dq: List[np.ndarray] = []
    n_f = n_q = 0
    pred_e: List[float] = []
    ref_e: List[float] = []
    for n, idx in sorted(by_size.items()):
        for start in range(0, len(idx), batch_size):
            items = [ds[i] for i in idx[start:start + batch_size]]
            inp = {"coord": torch.tensor(np.stack([s["coord"] for s in items]), dtype=torch.float32, device=device),
                   "numbers": torch.tensor(np.stack([s["numbers"] for s in items]), device=device),
                   "charge": torch.tensor([float(s["charge"]) for s in items], device=device),
                   "mult": torch.tensor([float(s["mult"]) for s in items], device=device)}
            out = module(inp)
            energy = out["energy"].detach().to(torch.float64).cpu().numpy()
            forces = out["forces"].detach().to(torch.float64).cpu().numpy()
            # charges only where this fidelity was trained on them (else the output is absent)
            charges = out["charges"].detach().to(torch.float64).cpu().numpy() if "charges" in out else None
            for b, s in enumerate(items):
                e, f = float(energy[b]), forces[b]
                if subtract_d3 is not None:
                    e_d3, f_d3 = reference_dispersion(s["numbers"], s["coord"], subtract_d3, float(s["charge"]))
                    e, f = e - e_d3, f - f_d3
                pred_e.append(e)
                ref_e.append(float(s["energy"]))
                de.append(e - float(s["energy"]))
                if "forces" in s:
                    df.append((f - s["forces"]).reshape(-1))
                    n_f += 1
                if "charges" in s and charges is not None:
                    dq.append((charges[b] - s["charges"]).reshape(-1))
                    n_q += 1
    ds.close()
    de_arr = np.asarray(de) * EV_TO_KCAL_PER_MOL
    result: Dict[str, Any] = {
        "file": str(path), "fidelity": int(meta.get("fidelity", 0)), "fidelity_name": meta.get("fidelity_name", ""),
        "n_molecules": len(de), "E_mae": float(np.abs(de_arr).mean()), "E_rmse": float(np.sqrt((de_arr ** 2).mean())),
        "n_forces": n_f, "n_charges": n_q, "units": {"E": "kcal/mol", "F": "kcal/mol/Å", "q": "e"},
        "energy_pred_eV": pred_e, "energy_ref_eV": ref_e,
    }
    if df:
        f_arr = np.concatenate(df) * EV_TO_KCAL_PER_MOL
        result["F_mae"] = float(np.abs(f_arr).mean())
        result["F_rmse"] = float(np.sqrt((f_arr ** 2).mean()))
    if dq:
        q_arr = np.concatenate(dq)
        result["q_mae"] = float(np.abs(q_arr).mean())
    return result


def evaluate_files(paths: Sequence[Union[str, Path]], model: Any, fidelity: Union[int, str, None],
                   device: Any = "cpu", batch_size: int = 64) -> List[Dict[str, Any]]:
    module, meta, subtract = _potential(model, fidelity, device)
    return [evaluate_file(p, module, meta, subtract, batch_size, device) for p in paths]


def format_row(r: Dict[str, Any]) -> str:
    f = f"{r['F_mae']:10.3f}" if "F_mae" in r else f"{'-':>10}"
    q = f"{r['q_mae']:9.4f}" if "q_mae" in r else f"{'-':>9}"
    return (f"{Path(r['file']).name:<26}{r['fidelity']:>4}  {r['n_molecules']:>6}"
            f"{r['E_mae']:10.3f}{r['E_rmse']:10.3f}{f}{q}")


HEADER = f"{'file':<26}{'fid':>4}  {'n_mol':>6}{'E MAE':>10}{'E RMSE':>10}{'F MAE':>10}{'q MAE':>9}"
UNITS_LINE = "(E in kcal/mol, F in kcal/mol/Å per component, q in e)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", help="HDF5 dataset file(s) in the size-grouped format")
    parser.add_argument("--model", help="checkpoint (.pt) or compiled potential (.jpt); default: the bundled model")
    parser.add_argument("--fidelity", help="fidelity index or name (required for a multi-fidelity checkpoint)")
    parser.add_argument("--json", help="write the metrics (and per-molecule energies) to this JSON file")
    parser.add_argument("--batch-size", type=int, default=64)


def run(args) -> int:
    from .io_utils import atomic_write_text, refuse_to_overwrite_inputs

    if args.json:
        refuse_to_overwrite_inputs([args.json], list(args.data) + [args.model], "evaluate --json")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    fid: Union[int, str, None] = args.fidelity
    if isinstance(fid, str) and fid.lstrip("-").isdigit():
        fid = int(fid)
    rows = evaluate_files(args.data, args.model, fid, batch_size=args.batch_size)
    print(HEADER)
    for r in rows:
        print(format_row(r))
    print(UNITS_LINE)
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1))
    return 0
