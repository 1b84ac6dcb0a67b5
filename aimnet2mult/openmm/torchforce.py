"""openmm-torch ``TorchForce`` for an aimnet2mult potential.

The force is a TorchScript module that wraps the scripted per-fidelity potential::

    forward(positions (N_system, 3) nm [, boxvectors (3, 3) nm]) -> (energy kJ/mol, forces (N_system, 3) kJ/mol/nm)

* ML atoms are selected inside the module with an index buffer (openmm-torch hands over every
  particle of the System); forces outside the ML atoms are exactly zero (``setOutputsForces(True)``).
* Input may be float32 (CUDA) or float64 (Reference/CPU); the energy is returned in float64,
  forces in the input dtype.
* Charge, multiplicity and fidelity are fixed when the force is built (buffers of the module).
* Periodic systems: when the ML atoms are the whole System, the potential is evaluated periodically
  (flat neighbour-list layout with the box). When the ML atoms are a subset of a periodic System
  (ML/MM), they are evaluated as an isolated cluster, made whole across the box with the minimum
  image convention relative to the first ML atom (the MM force field supplies the interactions
  with the environment and with periodic images; see ``mlpotential.getMLLongRange``).
* Coulomb method (``coulomb=``, fixed at build time): 'auto' (default) = the model's own method for
  an isolated molecule or an ML cluster, and for a periodic system the model's method if it is
  periodic, else 'dsf' (damped shifted force); 'ewald', 'dsf', ... or a dict select it explicitly
  (see ``aimnet2mult.calculators.runtime``). The module holds its own copy of the potential.

Units: 1 nm = 10 Å; 1 eV = ``aimnet2mult.units.EV_TO_KJ_PER_MOL`` kJ/mol (CODATA 2018, OpenMM's value).

Limitation of the PyPI openmm-torch 1.5 / torch 2.9 wheels (measured): ``XmlSerializer.deserialize``,
``copy.deepcopy`` of a ``TorchForce`` and a ``CustomCVForce`` wrapping one crash the process
(segmentation fault); ``serialize()`` works. Where a force must be copied (OpenMM-ML
``interpolate=True``), use the ``PythonForce`` builder (``aimnet2mult.openmm.pythonforce``).
"""

import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..calculators.runtime import DENSE_MAX_ATOMS, ModelSource, set_module_coulomb
from ..units import EV_TO_KJ_PER_MOL, NM_TO_ANGSTROM


def make_whole(pos: Tensor, box: Tensor) -> Tensor:
    """Minimum-image positions relative to the first atom (box rows = OpenMM's reduced vectors:
    a along x, b in the xy plane). Keeps a cluster smaller than half the box in one piece."""
    d = pos - pos[0:1]
    d = d - box[2].unsqueeze(0) * torch.round(d[:, 2:3] / box[2, 2])
    d = d - box[1].unsqueeze(0) * torch.round(d[:, 1:2] / box[1, 1])
    d = d - box[0].unsqueeze(0) * torch.round(d[:, 0:1] / box[0, 0])
    return pos[0:1] + d


class AIMNet2MultTorchForceModule(nn.Module):
    """TorchScript module for openmm-torch (see the module docstring)."""

    periodic: bool
    cluster: bool
    dense: bool
    energy_scale: float
    force_scale: float
    length_scale: float
    cutoff: float

    def __init__(self, potential: nn.Module, indices: Sequence[int], numbers: Sequence[int], charge: float,
                 mult: float, periodic: bool, cluster: bool, dense: bool, cutoff: float):
        super().__init__()
        self.potential = potential
        self.register_buffer("indices", torch.tensor(list(indices), dtype=torch.long))
        self.register_buffer("numbers", torch.tensor(list(numbers), dtype=torch.long))
        self.register_buffer("charge", torch.tensor([float(charge)], dtype=torch.float64))
        self.register_buffer("mult", torch.tensor([float(mult)], dtype=torch.float64))
        self.register_buffer("pbc", torch.ones(3, dtype=torch.bool))
        self.periodic = bool(periodic)
        self.cluster = bool(cluster)
        self.dense = bool(dense)
        self.length_scale = NM_TO_ANGSTROM
        self.energy_scale = EV_TO_KJ_PER_MOL
        self.force_scale = EV_TO_KJ_PER_MOL * NM_TO_ANGSTROM
        self.cutoff = float(cutoff)

    def forward(self, positions: Tensor, boxvectors: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if self.indices.shape[0] > 0 and int(self.indices.max()) >= positions.shape[0]:
            raise ValueError("this aimnet2mult TorchForce was built for a topology whose ML atoms reach particle "
                             "index {}, but the System has only {} particles: build the force from the "
                             "System's own topology".format(int(self.indices.max()), positions.shape[0]))
        pos = positions.to(torch.float64)[self.indices] * self.length_scale
        inp: Dict[str, Tensor] = {"charge": self.charge, "mult": self.mult}
        if boxvectors is not None:
            box = boxvectors.to(torch.float64) * self.length_scale
            if self.cluster:
                pos = make_whole(pos, box)
            elif self.periodic:
                if bool((torch.diagonal(box) < self.cutoff).any()):
                    raise ValueError("periodic box too small for the cutoff: a box width is below the "
                                     "potential's cutoff of {} Å".format(self.cutoff))
                inp["cell"] = box
                inp["pbc"] = self.pbc
        if self.dense and "cell" not in inp:
            inp["coord"] = pos.unsqueeze(0)
            inp["numbers"] = self.numbers.unsqueeze(0)
        else:
            inp["coord"] = pos
            inp["numbers"] = self.numbers
        out = self.potential(inp)
        energy = out["energy"].to(torch.float64).sum() * self.energy_scale
        f_ml = out["forces"].reshape(-1, 3).to(torch.float64) * self.force_scale
        forces = torch.zeros(positions.shape, dtype=torch.float64, device=positions.device)
        forces = forces.index_copy(0, self.indices, f_ml)
        return energy, forces.to(positions.dtype)


class _DropSimtkWarning:
    def filter(self, record) -> bool:
        return "simtk.openmm" not in record.getMessage()


def _reload_torch_plugins() -> None:
    """If ``openmm`` was imported before ``torch``, OpenMM failed to load openmm-torch's platform
    plugins (libtorch's CUDA runtime libraries were not loaded yet) and no Context could run a
    TorchForce ("No Platform supports all the requested kernels"). Load them now that torch is."""
    import re

    import openmm

    for failure in openmm.Platform.getPluginLoadFailures():
        match = re.match(r"Error loading library (\S*libOpenMMTorch\w*\.so)\S*:", failure)
        if not match or "OpenCL" in match.group(1) or match.group(1) in _RELOADED:
            continue
        _RELOADED.add(match.group(1))
        try:
            openmm.Platform.loadPluginLibrary(match.group(1))
        except Exception:  # a platform this machine cannot run (e.g. CUDA without a driver)
            pass


_RELOADED: set = set()


def import_openmmtorch():
    """``import openmmtorch`` after torch (it needs torch's libraries loaded first), without the
    'simtk.openmm is deprecated' warning that openmmtorch 1.5 triggers on the root logger, and with
    openmm-torch's platform plugins loaded even if ``openmm`` was imported before ``torch``."""
    import logging

    _reload_torch_plugins()
    root = logging.getLogger()
    flt = _DropSimtkWarning()
    root.addFilter(flt)
    try:
        import openmmtorch
    finally:
        root.removeFilter(flt)
    return openmmtorch


def _element_numbers(topology, indices: Sequence[int]) -> List[int]:
    all_atoms = list(topology.atoms())
    out = []
    for i in indices:
        atom = all_atoms[i]
        if atom.element is None:
            raise ValueError(f"atom {atom.index} ({atom.name}) has no element (a virtual site?): it cannot be "
                             "part of the ML region")
        out.append(int(atom.element.atomic_number))
    return out


def ml_region(topology=None, system=None, atoms: Optional[Sequence[int]] = None,
              numbers: Optional[Sequence[int]] = None, periodic: Optional[bool] = None):
    """(indices, numbers, n_system, periodic, cluster) of the ML region.

    ``atoms``: indices of the ML atoms (None = every particle). Atomic numbers come from
    ``numbers`` (one per ML atom) or the ``topology``. The System size is that of the topology,
    else of ``system``, else the largest index + 1. ``periodic`` None = from the topology's box
    (else from the System). A subset of a periodic system is a cluster (see the module docstring).
    """
    if topology is None and numbers is None:
        raise ValueError("give either a topology or the atomic numbers of the ML atoms")
    if topology is not None:
        n_system = topology.getNumAtoms()
    elif system is not None and system.getNumParticles() > 0:
        n_system = system.getNumParticles()
    else:
        n_system = None
    if atoms is None:
        indices = list(range(n_system if n_system is not None else len(numbers)))
    else:
        indices = [int(i) for i in atoms]
    if not indices:
        raise ValueError("the ML region is empty")
    if len(set(indices)) != len(indices):
        raise ValueError("the ML atom indices contain duplicates")
    if n_system is None:
        n_system = max(indices) + 1
    if min(indices) < 0 or max(indices) >= n_system:
        raise ValueError(f"ML atom indices must lie in 0..{n_system - 1}, got {min(indices)}..{max(indices)}")
    nums = [int(z) for z in numbers] if numbers is not None else _element_numbers(topology, indices)
    if len(nums) != len(indices):
        raise ValueError(f"{len(indices)} ML atoms but {len(nums)} atomic numbers")
    if periodic is None:
        if topology is not None:
            periodic = topology.getPeriodicBoxVectors() is not None
        else:
            periodic = bool(system is not None and system.usesPeriodicBoundaryConditions())
    whole = sorted(indices) == list(range(n_system))
    cluster = bool(periodic) and not whole
    return indices, nums, n_system, bool(periodic), cluster


def torch_force_module(model: Any = None, fidelity: Union[int, str, None] = None, *, topology=None, system=None,
                       atoms: Optional[Sequence[int]] = None, numbers: Optional[Sequence[int]] = None,
                       charge: float = 0.0, mult: float = 1.0, periodic: Optional[bool] = None,
                       dense_max_atoms: int = DENSE_MAX_ATOMS, device: Any = "cpu", coulomb: Any = "auto"):
    """(scripted ``AIMNet2MultTorchForceModule``, info dict). ``model`` as for the ASE calculator."""
    source = model if isinstance(model, ModelSource) else ModelSource(model, device)
    pot = source.potential(fidelity)
    indices, nums, n_system, periodic, cluster = ml_region(topology, system, atoms, numbers, periodic)
    pot.check_elements(nums)
    if mult != 1 and not pot.open_shell:
        raise ValueError(f"this potential is closed-shell (no spin channel): multiplicity must be 1, got {mult}")
    setting = pot.coulomb_setting(periodic and not cluster, coulomb)
    scripted, meta = source.scripted(fidelity)
    # an own copy: the Coulomb method is module state, and the loaded potential is shared (cache)
    scripted = copy.deepcopy(scripted)
    try:
        set_module_coulomb(scripted, setting)
    except (RuntimeError, torch.jit.Error) as exc:
        from ..calculators.runtime import clean_error

        raise ValueError(clean_error(exc)) from None
    dense = len(nums) <= dense_max_atoms
    wrapper = AIMNet2MultTorchForceModule(scripted, indices, nums, charge, mult, periodic, cluster, dense, pot.cutoff)
    info = {"indices": indices, "numbers": nums, "num_particles": n_system, "periodic": periodic,
            "cluster": cluster, "fidelity": pot.fidelity, "fidelity_name": pot.fidelity_name, "metadata": meta,
            "coulomb": str(scripted.coulomb_method()) if hasattr(scripted, "coulomb_method") else None}
    from .. import jit

    return jit.script(wrapper), info


def create_torch_force(model: Any = None, fidelity: Union[int, str, None] = None, *, topology=None, system=None,
                       atoms: Optional[Sequence[int]] = None, numbers: Optional[Sequence[int]] = None,
                       charge: float = 0.0, mult: float = 1.0, periodic: Optional[bool] = None,
                       force_group: int = 0, use_cuda_graphs: bool = False, cuda_graph_warmup_steps: int = 10,
                       dense_max_atoms: int = DENSE_MAX_ATOMS, properties: Optional[Dict[str, str]] = None,
                       coulomb: Any = "auto"):
    """An openmm-torch ``TorchForce`` for one fidelity of ``model`` applied to ``atoms`` (None = all).

    The atomic numbers come from ``topology`` (or ``numbers``); the System size from ``topology``
    (or ``system``). ``use_cuda_graphs``/``cuda_graph_warmup_steps`` set openmm-torch's
    ``useCUDAGraphs``/``CUDAGraphWarmupSteps`` properties (CUDA platform only; the potential's input
    checks synchronise with the host, so graphs bring little). ``coulomb``: see the module
    docstring. Add the force with ``system.addForce(force)``. The module is built on the CPU;
    openmm-torch moves it to the platform's device (CUDA when the Context runs there).
    """
    openmmtorch = import_openmmtorch()
    module, info = torch_force_module(model, fidelity, topology=topology, system=system, atoms=atoms,
                                      numbers=numbers, charge=charge, mult=mult, periodic=periodic,
                                      dense_max_atoms=dense_max_atoms, coulomb=coulomb)
    props = {"useCUDAGraphs": "true" if use_cuda_graphs else "false",
             "CUDAGraphWarmupSteps": str(int(cuda_graph_warmup_steps))}
    props.update(properties or {})
    force = openmmtorch.TorchForce(module, props)
    force.setOutputsForces(True)
    force.setUsesPeriodicBoundaryConditions(info["periodic"])
    force.setForceGroup(int(force_group))
    force.setName(f"AIMNet2Mult fidelity {info['fidelity']} ({info['fidelity_name']})")
    return force
