"""OpenMM-ML plugin: ``MLPotential('aimnet2mult', modelPath=..., fidelity=...)``.

Registered through the entry point group ``openmmml.potentials`` (name ``aimnet2mult``)::

    from openmmml import MLPotential
    potential = MLPotential("aimnet2mult", modelPath="model.pt", fidelity=0)   # or a .jpt
    system = potential.createSystem(topology, charge=0, multiplicity=1)
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms, charge=0, interpolate=True)

``createSystem``/``addForces`` keyword arguments: ``charge`` (total charge of the ML region, default
0), ``multiplicity`` (2S+1, default 1), ``fidelity`` (overrides the constructor's),
``implementation`` ('python' = ``openmm.PythonForce``, the default, works everywhere incl.
interpolation and serialisation; 'torch' = openmm-torch ``TorchForce``, faster on GPUs but it cannot
be copied or deserialised with the PyPI wheels, hence not with ``interpolate=True``), ``device``
(for 'python'), ``useCUDAGraphs`` (for 'torch'), ``coulomb`` ('auto' default: the model's method,
'dsf' for a fully periodic ML system; see ``aimnet2mult.calculators.runtime``). Unknown keyword
arguments are ignored. ``modelPath=None`` selects the bundled default model (a multi-fidelity
checkpoint: give ``fidelity``).

``getMLLongRange()`` is False: in a periodic ML/MM system (the only place OpenMM-ML asks) the ML
region is evaluated as an isolated cluster, made whole across the box, so the model's Coulomb term
couples only the ML atoms among themselves in one image; the mechanical embedding then leaves the
electrostatics between periodic images of the ML region (and with the MM atoms) to the MM force
field's PME. (A System that is ML throughout, from ``createSystem`` on a periodic topology, is
evaluated periodically with neighbour lists and a periodic Coulomb method, 'dsf' by default.)

OpenMM-ML imports every plugin module when ``openmmml`` is imported: this module only imports
openmmml itself at load time; torch, openmm-torch and the model are imported inside the methods.
"""

from openmmml.mlpotential import MLPotentialImpl, MLPotentialImplFactory


class AIMNet2MultPotentialImplFactory(MLPotentialImplFactory):
    """Creates :class:`AIMNet2MultPotentialImpl` objects."""

    def createImpl(self, name: str, modelPath=None, fidelity=None, **args) -> MLPotentialImpl:
        return AIMNet2MultPotentialImpl(name, modelPath, fidelity, **args)


class AIMNet2MultPotentialImpl(MLPotentialImpl):
    """One fidelity of an aimnet2mult model (checkpoint .pt or compiled .jpt) as an OpenMM-ML potential."""

    IMPLEMENTATIONS = ("python", "torch")

    def __init__(self, name: str, modelPath=None, fidelity=None, implementation: str = "python", device=None,
                 coulomb="auto", **args):
        self.name = name
        self.modelPath = None if modelPath is None else str(modelPath)
        self.fidelity = fidelity
        self.implementation = implementation
        self.device = device
        self.coulomb = coulomb
        self._check_implementation(implementation)

    def _check_implementation(self, implementation: str) -> None:
        if implementation not in self.IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {self.IMPLEMENTATIONS}, got {implementation!r}")

    def getMLLongRange(self) -> bool:
        return False

    def addForces(self, topology, system, atoms, forceGroup, charge=0, multiplicity=1, fidelity=None,
                  implementation=None, device=None, useCUDAGraphs=False, coulomb=None, **args):
        implementation = implementation or self.implementation
        coulomb = self.coulomb if coulomb is None else coulomb
        self._check_implementation(implementation)
        fidelity = self.fidelity if fidelity is None else fidelity
        model = self.modelPath
        if model is None:
            from ..calculators.runtime import default_model_path

            model = str(default_model_path())
        atoms = None if atoms is None else [int(i) for i in atoms]
        if implementation == "torch":
            if system.getNumParticles() == 0:
                # OpenMM-ML's interpolation builds the ML force in an empty System and deep-copies it
                raise ValueError("implementation='torch' (openmm-torch TorchForce) cannot be used here: this "
                                 "System is copied (e.g. createMixedSystem(interpolate=True)), and copying a "
                                 "TorchForce crashes with the PyPI openmm-torch wheels; use implementation='python'")
            from .torchforce import create_torch_force

            force = create_torch_force(model, fidelity, topology=topology, atoms=atoms, charge=charge,
                                       mult=multiplicity, force_group=forceGroup, use_cuda_graphs=useCUDAGraphs,
                                       coulomb=coulomb)
        else:
            from .pythonforce import create_python_force

            force = create_python_force(model, fidelity, topology=topology, atoms=atoms, charge=charge,
                                        mult=multiplicity, force_group=forceGroup,
                                        device=device if device is not None else self.device, coulomb=coulomb)
        system.addForce(force)
