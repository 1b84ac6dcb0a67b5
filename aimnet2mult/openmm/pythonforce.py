"""OpenMM ``PythonForce`` (OpenMM >= 8.5; ``setParticles`` since 8.6) for an aimnet2mult potential.

The computation is :class:`AIMNet2MultCompute`, a top-level picklable callable: it stores the model
*path* (or checkpoint dict), fidelity, atomic numbers, charge and multiplicity, and loads the
potential lazily on first use; ``__getstate__`` drops the loaded model. Hence ``copy.deepcopy``,
``XmlSerializer`` round trips, ``CustomCVForce`` and OpenMM-ML's ``interpolate=True`` all work
(unlike openmm-torch's ``TorchForce`` with the PyPI wheels, whose deserialisation crashes).
Copies in one process share the loaded potential (a cache keyed by file, fidelity and device).

With ``setParticles`` the State holds only the ML atoms. Periodic handling is that of the
``TorchForce`` builder: the whole System periodic -> periodic evaluation with the box; a subset
of a periodic System -> an isolated cluster made whole with the minimum image convention.
The Coulomb method (``coulomb=``) is chosen as for the ASE calculator ('auto': periodic -> 'dsf'
unless the model's method is periodic; see ``aimnet2mult.calculators.runtime``).
"""

import copy
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..calculators.runtime import DENSE_MAX_ATOMS, ModelSource, coulomb_spec
from ..units import EV_TO_KJ_PER_MOL, NM_TO_ANGSTROM


class AIMNet2MultCompute:
    """``PythonForce`` computation: State (nm) -> (energy kJ/mol, forces (n, 3) kJ/mol/nm)."""

    def __init__(self, model: Any, fidelity: Union[int, str, None], numbers: Sequence[int], charge: float = 0.0,
                 mult: float = 1.0, periodic: bool = False, cluster: bool = False, device: Any = None,
                 dense_max_atoms: int = DENSE_MAX_ATOMS, coulomb: Any = "auto"):
        if isinstance(model, (str, Path)):
            model = str(Path(model).expanduser().resolve())
        elif model is not None and not isinstance(model, dict):
            raise TypeError("a PythonForce needs a picklable model: a file path or a checkpoint dict "
                            f"(not {type(model).__name__})")
        self.model = model
        self.fidelity = fidelity
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.charge = float(charge)
        self.mult = float(mult)
        self.periodic = bool(periodic)
        self.cluster = bool(cluster)
        self.device = None if device is None else str(device)
        self.dense_max_atoms = int(dense_max_atoms)
        self.coulomb = copy.deepcopy(coulomb_spec(coulomb))  # None (auto) or a plain dict: picklable
        self._potential = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_potential"] = None
        return state

    def __setstate__(self, state):
        state.setdefault("coulomb", None)
        self.__dict__.update(state)

    @property
    def potential(self):
        if self._potential is None:
            self._potential = ModelSource(self.model, self.device).potential(self.fidelity)
        return self._potential

    def __call__(self, state):
        import torch
        from openmm.unit import nanometer

        from .torchforce import make_whole

        pos = np.asarray(state.getPositions(asNumpy=True).value_in_unit(nanometer), dtype=np.float64) * NM_TO_ANGSTROM
        if pos.shape[0] != len(self.numbers):
            raise ValueError(f"the PythonForce received {pos.shape[0]} positions for {len(self.numbers)} ML atoms: "
                             "call setParticles with the ML atom indices")
        cell = pbc = None
        if self.periodic or self.cluster:
            box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(nanometer),
                             dtype=np.float64) * NM_TO_ANGSTROM
            if self.cluster:
                pos = make_whole(torch.as_tensor(pos), torch.as_tensor(box)).numpy()
            else:
                cell, pbc = box, (True, True, True)
        res = self.potential(pos, self.numbers, self.charge, self.mult, cell=cell, pbc=pbc,
                             dense_max_atoms=self.dense_max_atoms, coulomb=self.coulomb)
        return res["energy"] * EV_TO_KJ_PER_MOL, res["forces"] * (EV_TO_KJ_PER_MOL * NM_TO_ANGSTROM)


def create_python_force(model: Any = None, fidelity: Union[int, str, None] = None, *, topology=None, system=None,
                        atoms: Optional[Sequence[int]] = None, numbers: Optional[Sequence[int]] = None,
                        charge: float = 0.0, mult: float = 1.0, periodic: Optional[bool] = None,
                        force_group: int = 0, device: Any = None, dense_max_atoms: int = DENSE_MAX_ATOMS,
                        coulomb: Any = "auto"):
    """An ``openmm.PythonForce`` for one fidelity of ``model`` (a path or a checkpoint dict; None =
    the bundled default) applied to ``atoms`` (None = every particle), via ``setParticles``.
    ``coulomb``: see the module docstring."""
    import openmm

    from ..calculators.runtime import default_model_path
    from .torchforce import ml_region

    if model is None:
        model = default_model_path()
    indices, nums, n_system, periodic, cluster = ml_region(topology, system, atoms, numbers, periodic)
    compute = AIMNet2MultCompute(model, fidelity, nums, charge, mult, periodic=periodic and not cluster,
                                 cluster=cluster, device=device, dense_max_atoms=dense_max_atoms, coulomb=coulomb)
    pot = compute.potential  # load now: bad files, fidelities and elements fail at set-up time
    pot.check_elements(nums)
    pot.coulomb_setting(compute.periodic, compute.coulomb)  # a Coulomb method the model cannot take
    if mult != 1 and not pot.open_shell:
        raise ValueError(f"this potential is closed-shell (no spin channel): multiplicity must be 1, got {mult}")
    compute.fidelity = pot.fidelity if compute.fidelity is None else compute.fidelity
    force = openmm.PythonForce(compute)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    if atoms is not None:
        force.setParticles([int(i) for i in indices])
    force.setForceGroup(int(force_group))
    force.setName(f"AIMNet2Mult fidelity {pot.fidelity} ({pot.fidelity_name})")
    return force
