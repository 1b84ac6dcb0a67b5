"""ASE calculator for aimnet2mult potentials.

    from aimnet2mult import AIMNet2Mult
    atoms.calc = AIMNet2Mult("model.pt", fidelity=0)          # or a compiled .jpt
    atoms.info["charge"] = -1                                  # overrides the keyword argument
    atoms.get_potential_energy(), atoms.get_forces()

Units are ASE's: Å, eV, e. Results per calculation:

* ``energy`` = ``free_energy`` (eV), ``forces`` (N,3) eV/Å, ``charges`` (N,) e: one model call;
* ``dipole`` (3,) e·Å = Σ q_i (r_i − R_cm), R_cm the centre of mass (for a neutral molecule the
  origin does not matter; for an ion it does, and the centre of mass is used); only for
  non-periodic systems (a dipole of a periodic cell is not defined by the charges alone);
* ``magmoms`` (N,) = predicted spin charges and ``magmom`` = their sum, for open-shell models;
* charges, dipole and magnetic moments only for a fidelity trained on such labels (the
  checkpoint's ``trained_outputs``): for any other, asking for them raises
  ``PropertyNotImplementedError`` saying why and which fidelities have them;
* ``stress`` (6,) Voigt, eV/Å³, = (1/V) ∂E/∂ε from the potential, for periodic systems only;
* ensembles (a list of models): means, plus ``energy_std`` and ``forces_std`` (unbiased, ddof=1).

``atoms.info['charge']``, ``atoms.info['mult']`` (alias ``'spin'``, the multiplicity 2S+1) and
``atoms.info['fidelity']`` take precedence over the keyword arguments; changing them invalidates
cached results like a change of positions does.

Periodic systems (any ``atoms.pbc``) are evaluated with neighbour lists and a periodic Coulomb
method: ``coulomb='auto'`` (default) keeps the model's own method for molecules and uses damped
shifted force ('dsf', 15 Å) for periodic systems unless the model's method is already periodic;
``coulomb='ewald'`` (or a dict such as ``{'method': 'ewald', 'ewald_accuracy': 1e-8}``, or
``{'method': 'dsf', 'dsf_rc': 12.0}``) selects the method for every system. A model trained without
a Coulomb term has nothing to switch. See ``aimnet2mult.calculators.runtime``.

The device defaults to CUDA when ``torch.cuda.is_available()``, else the CPU; inputs and results
move between numpy and the device inside the calculator.
"""

from typing import Any, Dict, List, Union

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .runtime import DENSE_MAX_ATOMS, ModelSource, coulomb_spec

_MISSING = object()


class AIMNet2Mult(Calculator):
    """ASE calculator for one fidelity of an aimnet2mult model (or an ensemble of models).

    Parameters
    ----------
    model: path of a checkpoint (.pt) or a compiled potential (.jpt), a checkpoint dict, a potential
        module, or a list of those (ensemble). ``None`` selects the bundled default model.
    fidelity: index or name; required for a multi-fidelity checkpoint, checked against a .jpt.
    charge, mult: total charge (e) and spin multiplicity 2S+1, unless ``atoms.info`` says otherwise.
    device: torch device; default CUDA when available, else CPU.
    dense_max_atoms: non-periodic systems up to this size use the dense layout, larger ones the
        neighbour-list layout; periodic systems always use the neighbour-list layout.
    coulomb: 'auto' (default), 'simple', 'dsf', 'ewald', 'none' or a dict with 'method' and
        parameters (see the module docstring).
    """

    implemented_properties = ["energy", "free_energy", "forces", "charges", "dipole", "magmoms", "magmom",
                              "stress", "energy_std", "forces_std"]
    default_parameters = {"charge": 0, "mult": 1, "fidelity": None, "coulomb": "auto"}
    # charge, multiplicity, fidelity and Coulomb method all change the result: set() resets it
    discard_results_on_any_change = True

    def __init__(self, model: Any = None, fidelity: Union[int, str, None] = None, charge: float = 0,
                 mult: int = 1, device: Any = None, dense_max_atoms: int = DENSE_MAX_ATOMS,
                 coulomb: Any = "auto", **kwargs):
        coulomb_spec(coulomb)  # a bad method or parameter fails here
        super().__init__(charge=charge, mult=mult, fidelity=fidelity, coulomb=coulomb, **kwargs)
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.sources = [m if isinstance(m, ModelSource) else ModelSource(m, device) for m in models]
        self.dense_max_atoms = int(dense_max_atoms)
        # resolve the default fidelity now, so that a missing or unknown one fails at construction
        self._check_settings(fidelity, coulomb)

    def _check_settings(self, fidelity, coulomb) -> None:
        """The fidelity resolves in every model (the same one: an ensemble never averages levels of
        theory) and the Coulomb method fits each."""
        coulomb_spec(coulomb)
        seen = []
        for src in self.sources:
            pot = src.potential(fidelity)
            pot.coulomb_setting(False, coulomb)  # e.g. a Coulomb method for a model without one
            seen.append((pot.fidelity, pot.fidelity_name, pot.source))
        if len({(k, name.lower()) for k, name, _ in seen}) > 1:
            raise ValueError("an ensemble must hold one fidelity (level of theory); the models give " +
                             ", ".join(f"{src}: fidelity {k} ('{name}')" for k, name, src in seen) +
                             ": averaging different levels of theory is meaningless")

    def set(self, **kwargs):
        """As ASE's ``set``; a new fidelity or Coulomb method is checked at once, and any change of
        charge, mult, fidelity or coulomb discards the cached results."""
        if hasattr(self, "sources") and ("fidelity" in kwargs or "coulomb" in kwargs):
            self._check_settings(kwargs.get("fidelity", self.parameters.get("fidelity")),
                                 kwargs.get("coulomb", self.parameters.get("coulomb", "auto")))
        return super().set(**kwargs)

    @property
    def device(self):
        return self.sources[0].device

    # ------------------------------------------------------------------ system settings
    def system_settings(self, atoms) -> Dict[str, Any]:
        """Charge, multiplicity and fidelity for ``atoms``: atoms.info first, then the parameters."""
        info = atoms.info if atoms is not None else {}
        charge = info.get("charge", self.parameters.get("charge", 0))
        mult = info.get("mult", _MISSING)
        spin = info.get("spin", _MISSING)
        if mult is not _MISSING and spin is not _MISSING and float(mult) != float(spin):
            raise ValueError(f"atoms.info has mult={mult} and spin={spin}: 'spin' is an alias of the "
                             "multiplicity 'mult' (2S+1); give one")
        if mult is _MISSING:
            mult = spin if spin is not _MISSING else self.parameters.get("mult", 1)
        fidelity = info.get("fidelity", self.parameters.get("fidelity"))
        return {"charge": float(charge), "mult": float(mult), "fidelity": fidelity}

    def check_state(self, atoms, tol=1e-15):
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and not changes:
            keys = ("charge", "mult", "spin", "fidelity")
            if any(self.atoms.info.get(k, _MISSING) != atoms.info.get(k, _MISSING) for k in keys):
                changes = list(changes) + ["info"]
        return changes

    # ------------------------------------------------------------------ calculation
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(np.any(atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress is defined only for periodic systems (atoms.pbc is all False)")
        settings = self.system_settings(atoms)
        if len(self.sources) > 1:
            self._check_settings(settings["fidelity"], self.parameters.get("coulomb", "auto"))
        # outputs this fidelity does not provide are refused before any model call
        first = self.sources[0].potential(settings["fidelity"])
        if "magmoms" in properties or "magmom" in properties:
            if not first.open_shell:
                raise PropertyNotImplementedError("magnetic moments need an open-shell model (spin charges); "
                                                  "this potential is closed-shell")
            if first.untrained("spin_charges"):
                raise PropertyNotImplementedError(first.untrained("spin_charges"))
        if ("charges" in properties or "dipole" in properties) and first.untrained("charges"):
            raise PropertyNotImplementedError(first.untrained("charges"))
        runs = []
        for src in self.sources:
            pot = src.potential(settings["fidelity"])
            runs.append(pot(atoms.positions, atoms.numbers, settings["charge"], settings["mult"],
                            cell=np.asarray(atoms.cell) if periodic else None,
                            pbc=atoms.pbc if periodic else None, dense_max_atoms=self.dense_max_atoms,
                            coulomb=self.parameters.get("coulomb", "auto")))
        self.results = self._combine(runs, atoms, periodic)

    @staticmethod
    def _combine(runs: List[Dict[str, np.ndarray]], atoms, periodic: bool) -> Dict[str, Any]:
        energies = np.array([r["energy"] for r in runs], dtype=np.float64)
        forces = np.stack([r["forces"] for r in runs])
        results: Dict[str, Any] = {
            "energy": float(energies.mean()),
            "free_energy": float(energies.mean()),
            "forces": forces.mean(0),
        }
        has_charges = all("charges" in r for r in runs)
        if has_charges:
            charges = np.mean([r["charges"] for r in runs], axis=0)
            results["charges"] = charges
        if len(runs) > 1:
            results["energy_std"] = float(energies.std(ddof=1))
            results["forces_std"] = forces.std(0, ddof=1)
        if not periodic and has_charges:
            origin = atoms.get_center_of_mass()
            results["dipole"] = (charges[:, None] * (atoms.positions - origin)).sum(0)
        if all("spin_charges" in r for r in runs):
            magmoms = np.mean([r["spin_charges"] for r in runs], axis=0)
            results["magmoms"] = magmoms
            results["magmom"] = float(magmoms.sum())
        if periodic:
            if "stress" not in runs[0]:
                raise PropertyNotImplementedError("the potential returned no stress for a periodic system "
                                                  "(it predates periodic support)")
            results["stress"] = full_3x3_to_voigt_6_stress(np.mean([r["stress"] for r in runs], axis=0))
        return results
