"""Export a checkpoint as a metatomic atomistic model: one energy variant per fidelity.

    aimnet2mult metatomic --weights model.pt --output model.mta.pt [--fidelities 0,1]

    from metatomic_ase import MetatomicCalculator
    atoms.calc = MetatomicCalculator("model.mta.pt", variants={"energy": "b3lyp"})

Every engine with a metatomic interface (its LAMMPS and GROMACS builds, i-PI, eOn, PLUMED, ASE
through metatomic-ase, torch-sim) can then run any fidelity of the model. The outputs are
``energy/<variant>``, one per fidelity, the variant being the fidelity's name reduced to letters,
digits, ``_``, ``-`` and ``.`` (``b3lyp/6-31g*`` -> ``b3lyp_6-31g_``; ``aimnet2mult info`` and the
export's log list them). There is no plain ``energy`` output: the engine must choose a variant, so
a fidelity is never chosen silently. Tested with metatomic-torch 0.1.19 and metatomic-ase 0.1.4.

Each variant is the fidelity's exported potential (its SAE, dispersion and Coulomb as compiled by
``aimnet2mult compile``), which builds its own neighbour lists (it requests none from the engine)
and computes forces and stress with its hand-written gradients; the energy handed to the engine
carries them as its first derivatives with respect to positions and cell (a linear surrogate of
zero value: exact forces and virial, no second derivatives). Periodic systems need the
Coulomb method of the checkpoint to be periodic (``dsf`` or ``ewald``); the total charge of a
system is 0 (metatomic systems carry none here). ``interaction_range`` is the short-range cutoff
times the number of message passes (the reach of the network), or the dispersion / Coulomb
cutoff where that is larger; with ``simple`` Coulomb (every pair) a domain-decomposed engine must
hold the whole molecule.
"""

import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

try:
    from metatensor.torch import Labels, TensorBlock, TensorMap
    from metatomic.torch import AtomisticModel, ModelCapabilities, ModelMetadata, ModelOutput, System
except ImportError as exc:  # pragma: no cover - the optional dependency
    raise ImportError("aimnet2mult.engines.metatomic needs metatomic: pip install metatomic-torch metatomic-ase") \
        from exc


def variant_name(name: str) -> str:
    """A fidelity name as a metatomic variant: letters, digits, '_', '-', '.'; the rest '_'."""
    out = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name)).strip()
    if not out:
        raise ValueError(f"fidelity name {name!r} gives an empty metatomic variant")
    return out


class MetatomicPotentials(torch.nn.Module):
    """The metatomic ``ModelInterface``: output ``energy/<variant>`` from potential ``i``."""

    output_names: List[str]

    def __init__(self, potentials: List[torch.nn.Module], output_names: List[str]):
        super().__init__()
        self.potentials = torch.nn.ModuleList(potentials)
        self.output_names = list(output_names)

    def _energy(self, index: int, system: System) -> torch.Tensor:
        positions = system.positions
        periodic = bool(system.pbc.any())
        data: Dict[str, torch.Tensor] = {"coord": positions, "numbers": system.types.to(torch.long),
                                         "charge": torch.zeros(1, dtype=torch.float64, device=positions.device)}
        if periodic:
            data["cell"] = system.cell
            data["pbc"] = system.pbc
        res: Dict[str, torch.Tensor] = {}
        for i, pot in enumerate(self.potentials):
            if i == index:
                res = pot(data)
        energy = res["energy"].to(positions.dtype).reshape(1)
        grad_x = -res["forces"].to(positions.dtype)
        # value: the energy; first derivatives: dE/dx = -F and, periodic, dE/dcell from the virial
        lin = (grad_x * (positions - positions.detach())).sum()
        if periodic and "stress" in res:
            cell = system.cell
            virial = res["stress"].to(positions.dtype) * torch.abs(torch.linalg.det(cell.detach()))
            # strain derivative = x^T dE/dx + cell^T dE/dcell = V sigma
            grad_c = torch.linalg.solve(cell.detach().transpose(0, 1),
                                        virial - positions.detach().transpose(0, 1) @ grad_x)
            lin = lin + (grad_c * (cell - cell.detach())).sum()
        return energy + lin.reshape(1)

    def forward(self, systems: List[System], outputs: Dict[str, ModelOutput],
                selected_atoms: Optional[Labels]) -> Dict[str, TensorMap]:
        if selected_atoms is not None:
            raise ValueError("aimnet2mult metatomic models do not support selected_atoms (domain decomposition)")
        results: Dict[str, TensorMap] = {}
        for key, request in outputs.items():
            index = -1
            for i, name in enumerate(self.output_names):
                if name == key:
                    index = i
            if index < 0:
                raise ValueError("unknown output '" + key + "'; this model has: " + ", ".join(self.output_names))
            if request.sample_kind != "system":
                raise ValueError("output '" + key + "': only per-system energies are available")
            energies: List[torch.Tensor] = []
            for system in systems:
                energies.append(self._energy(index, system))
            values = torch.stack(energies).reshape(-1, 1)
            device = values.device
            block = TensorBlock(
                values=values,
                samples=Labels("system", torch.arange(len(systems), device=device).reshape(-1, 1)),
                components=[],
                properties=Labels("energy", torch.zeros(1, 1, dtype=torch.int32, device=device)),
            )
            results[key] = TensorMap(Labels("_", torch.zeros(1, 1, dtype=torch.int32, device=device)), [block])
        return results


def export_metatomic(ckpt: Any, output: str, fidelities: Optional[List[Any]] = None,
                     coulomb: Any = "recorded") -> Dict[str, Any]:
    """Write ``output`` (a metatomic model file) with one ``energy/<variant>`` per fidelity
    (default: all), each with the Coulomb method ``coulomb`` (default: the checkpoint's; e.g.
    "dsf" for periodic systems); returns {"path", "variants": {variant: fidelity index}}."""
    from ..checkpoint import fidelity_index, load_checkpoint
    from ..export import RECORDED, build_potential
    from ..jit import script

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    ks = [fidelity_index(ckpt, f) for f in (fidelities if fidelities else range(len(ckpt["fidelities"])))]
    potentials, names, variants, elements = [], [], {}, set()
    reach = 0.0
    for k in ks:
        pot = build_potential(ckpt, k, coulomb=RECORDED if coulomb == "recorded" else coulomb)
        variant = variant_name(ckpt["fidelities"][k]["name"])
        if variant in variants:
            raise ValueError(f"fidelities {variants[variant]} and {k} give the same metatomic variant {variant!r}")
        variants[variant] = k
        names.append(f"energy/{variant}")
        potentials.append(script(pot))
        elements |= set(int(z) for z in ckpt["fidelities"][k]["elements"])
        meta = pot.metadata
        passes = len(ckpt["model_config"]["passes"])  # one MLP per message pass
        reach = max(reach, float(meta["cutoff"]) * max(passes, 1),
                    float((meta.get("dispersion") or {}).get("cutoff") or 0.0))
    module = MetatomicPotentials(potentials, names).eval()
    outputs = {name: ModelOutput(quantity="energy", unit="eV", sample_kind="system",
                                 description=f"fidelity {k} ('{ckpt['fidelities'][k]['name']}') of aimnet2mult")
               for name, k in zip(names, ks)}
    capabilities = ModelCapabilities(outputs=outputs, atomic_types=sorted(elements), interaction_range=reach,
                                     length_unit="angstrom", supported_devices=["cpu", "cuda"], dtype="float64")
    metadata = ModelMetadata(name="aimnet2mult", description="multi-fidelity AIMNet2 potential; variants: "
                             + ", ".join(f"{v} (fidelity {k})" for v, k in variants.items()))
    model = AtomisticModel(module, metadata, capabilities)
    path = Path(output)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        model.save(str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path), "variants": variants}


def run(args) -> int:
    """``aimnet2mult metatomic`` (its arguments are defined in aimnet2mult/cli.py, which must not
    import metatomic to build its parser)."""
    fids = None
    if args.fidelities:
        fids = [int(f) if f.strip().isdigit() else f.strip() for f in args.fidelities.split(",")]
    res = export_metatomic(args.weights, args.output, fids, args.coulomb or "recorded")
    listed = ", ".join(f"energy/{v} (fidelity {k})" for v, k in res["variants"].items())
    print(f"wrote {res['path']}: outputs {listed}")
    return 0
