"""aimnet2mult as a torch-sim model: many systems in one flat batch, the fidelity fixed at construction.

    import torch_sim as ts
    from aimnet2mult.engines.torchsim import AIMNet2MultModel

    model = AIMNet2MultModel("model.pt", fidelity=0)          # or a compiled .jpt, or None (bundled)
    state = ts.initialize_state(list_of_ase_atoms, model.device, model.dtype)
    final = ts.integrate(state, model, integrator=ts.nvt_langevin, n_steps=1000, temperature=300,
                         timestep=0.0005)

Tested with torch-sim-atomistic 0.3.0 (the newest version pip installs beside torch 2.9 here).
Isolated systems (``state.pbc`` False) are evaluated in ONE call of the potential: the flat layout
with the state's ``system_idx`` as molecule index (every pair of each molecule, none between
molecules). Periodic states are evaluated system by system (the potential takes one cell per
call), with the stress when ``compute_stress``. ``charge`` / ``mult``: one value for every system or
one per system. Units are torch-sim's metal units, which are aimnet2mult's (Å, eV).
"""

from typing import Any, Dict, Optional, Sequence, Union

import torch

try:
    from torch_sim.models.interface import ModelInterface
except ImportError as exc:  # pragma: no cover - the optional dependency
    raise ImportError("aimnet2mult.engines.torchsim needs torch-sim: pip install torch-sim-atomistic") from exc


class AIMNet2MultModel(ModelInterface):
    """torch-sim ``ModelInterface`` of one fidelity of an aimnet2mult checkpoint or compiled file.

    Args: model (checkpoint / .jpt path, or None for the bundled model), fidelity (index or name;
    required for a multi-fidelity checkpoint: without it, an error lists the fidelities), charge,
    mult (scalars or per-system sequences), device, dtype (of the returned tensors; the potential
    computes in its own float32 with float64 energy sums), compute_stress.
    """

    def __init__(self, model: Any = None, fidelity: Union[int, str, None] = None,
                 charge: Union[float, Sequence[float]] = 0.0, mult: Union[int, Sequence[int]] = 1,
                 device: Optional[torch.device] = None, dtype: torch.dtype = torch.float64,
                 compute_stress: bool = False):
        super().__init__()
        from ..calculators.runtime import ModelSource

        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._dtype = dtype
        self._compute_stress = bool(compute_stress)
        self._compute_forces = True
        self._memory_scales_with = "n_atoms_x_density"
        self.potential = ModelSource(model, self._device).potential(fidelity)
        self.fidelity = self.potential.fidelity
        self.charge = charge
        self.mult = mult

    def _per_system(self, value: Union[float, Sequence[float]], n_sys: int, name: str) -> torch.Tensor:
        values = [float(value)] * n_sys if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(values) != n_sys:
            raise ValueError(f"{name}: {len(values)} values for {n_sys} systems")
        return torch.tensor(values, dtype=torch.float64, device=self._device)

    def forward(self, state: Any, **kwargs) -> Dict[str, torch.Tensor]:
        """energy (n_systems,) eV, forces (n_atoms, 3) eV/Å, stress (n_systems, 3, 3) eV/Å³."""
        get = state.get if isinstance(state, dict) else (lambda key: getattr(state, key))
        positions = get("positions")
        numbers = get("atomic_numbers").to(torch.long)
        system_idx = get("system_idx")
        if system_idx is None:
            system_idx = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
        n_sys = int(system_idx.max()) + 1 if system_idx.numel() else 0
        self.potential.check_elements(numbers.tolist())
        charge = self._per_system(self.charge, n_sys, "charge")
        mult = self._per_system(self.mult, n_sys, "mult")
        pbc = get("pbc")
        periodic = bool(pbc.any()) if isinstance(pbc, torch.Tensor) else bool(pbc)
        out: Dict[str, torch.Tensor] = {}
        if not periodic:
            res = self.potential.call_module({"coord": positions.to(torch.float64), "numbers": numbers,
                                              "mol_idx": system_idx.to(torch.long), "charge": charge, "mult": mult},
                                             False)
            out["energy"] = res["energy"].to(self._dtype)
            out["forces"] = res["forces"].to(self._dtype)
            if self._compute_stress:
                raise ValueError("stress of isolated systems is not defined (state.pbc is False)")
            return out
        cell = get("row_vector_cell") if not isinstance(state, dict) else state["cell"].transpose(-1, -2)
        energies, forces, stresses = [], torch.zeros_like(positions, dtype=self._dtype), []
        for s in range(n_sys):
            mask = system_idx == s
            inp = {"coord": positions[mask].to(torch.float64), "numbers": numbers[mask],
                   "cell": cell[s].to(torch.float64), "charge": charge[s:s + 1], "mult": mult[s:s + 1]}
            res = self.potential.call_module(inp, True)
            energies.append(res["energy"].reshape(()))
            forces[mask] = res["forces"].to(self._dtype)
            if self._compute_stress:
                stresses.append(res["stress"])
        out["energy"] = torch.stack(energies).to(self._dtype)
        out["forces"] = forces
        if self._compute_stress:
            out["stress"] = torch.stack(stresses).to(self._dtype)
        return out
