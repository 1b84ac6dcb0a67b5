"""OpenMM integration: openmm-torch ``TorchForce`` and ``PythonForce`` builders and the OpenMM-ML plugin.

Importing this package is cheap (no openmm, openmm-torch or torch import); the names below load on
first access::

    from aimnet2mult.openmm import create_torch_force, create_python_force
    force = create_torch_force("model.pt", fidelity=0, topology=topology, atoms=ml_atoms, charge=0)
    system.addForce(force)

    from openmmml import MLPotential        # plugin registered as 'aimnet2mult'
    system = MLPotential("aimnet2mult", modelPath="model.pt", fidelity=0).createSystem(topology)
"""

_LAZY = {
    "create_torch_force": "torchforce",
    "torch_force_module": "torchforce",
    "AIMNet2MultTorchForceModule": "torchforce",
    "create_python_force": "pythonforce",
    "AIMNet2MultCompute": "pythonforce",
    "AIMNet2MultPotentialImplFactory": "mlpotential",
    "AIMNet2MultPotentialImpl": "mlpotential",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
