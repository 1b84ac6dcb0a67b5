"""Loading per-fidelity potentials and evaluating them on one system.

Shared by the ASE calculator, the OpenMM forces and ``aimnet2mult md`` so that every MD consumer
resolves models, fidelities, layouts and errors the same way.

A *model* is any of

* a training checkpoint (``.pt``, path or the loaded dict): multi-fidelity, the fidelity must be
  chosen (index or name) unless the checkpoint has only one;
* a compiled per-fidelity potential (``.jpt``): single-fidelity, a given fidelity must match the
  file's metadata (its index in the source checkpoint or its name);
* an in-memory potential module (``aimnet2mult.export.build_potential`` or its scripted form);
* ``None``: the bundled default model (see :func:`default_model_path`).

Layouts: a periodic system is always evaluated in the flat (neighbour-list) layout with its cell;
a non-periodic one in the dense layout up to ``dense_max_atoms`` atoms and in the flat layout above.
The default 0 means always flat: on CPU it is faster than the dense layout at every size measured
(9-300 atoms, ``bench/bench_inference.py --flat``) and gives the same energies (D3 and the 'simple'
Coulomb sum every pair of an isolated molecule in both layouts).

Coulomb method (``coulomb=``, every consumer): ``None``/``'auto'`` (default) = the model's own method
for isolated molecules, and for periodic systems the model's method if it is periodic ('dsf' or
'ewald'), else :data:`PERIODIC_COULOMB_DEFAULT` ('dsf', damped shifted force, 15 Å cutoff). A
method name ('simple', 'dsf', 'ewald', 'none') or a dict ``{'method': 'ewald', 'ewald_accuracy':
1e-8, ...}`` (keys ``dsf_alpha``, ``dsf_rc``, ``ewald_accuracy``, ``ewald_rc``) forces that method for
every system ('ewald' on an isolated molecule is its non-periodic limit, 'simple'; 'simple' on a
periodic system is an error). A model trained without a Coulomb term ('none') has nothing to
switch: it runs as trained, and asking it for a Coulomb method is an error.
"""

import re
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..model_config import COULOMB_METHODS, PERIODIC_COULOMB_METHODS

#: non-periodic systems up to this many atoms use the dense (all-pairs) layout (0: always flat)
DENSE_MAX_ATOMS = 0

#: Coulomb method for periodic systems when the model's own method is for isolated molecules only
PERIODIC_COULOMB_DEFAULT = "dsf"
_COULOMB_PARAMS = ("dsf_alpha", "dsf_rc", "ewald_accuracy", "ewald_rc")

#: directory of the bundled default model (tests point it elsewhere)
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "resources" / "models"
#: the bundled default model: a multi-fidelity training checkpoint (first existing file wins)
_DEFAULT_MODEL_NAMES = ("default_model.pt", "default_model.jpt")


def default_model_path() -> Path:
    """Path of the bundled default model (``aimnet2mult/resources/models/default_model.pt``, a
    multi-fidelity checkpoint: choose a fidelity); a clear error while the package ships none."""
    root = Path(DEFAULT_MODEL_DIR)
    for name in _DEFAULT_MODEL_NAMES:
        if (root / name).is_file():
            return root / name
    raise ValueError(
        f"aimnet2mult ships no default model ({root / _DEFAULT_MODEL_NAMES[0]} is missing): pass "
        "model=PATH, either a training checkpoint (.pt, with fidelity=INDEX or NAME) or a compiled "
        "potential (.jpt from 'aimnet2mult compile'). The official AIMNet2 wB97M-D3 weights can be converted with "
        "'aimnet2mult import-aimnet2 aimnet2_wb97m-d3_ens.jpt --output model.pt'.")


def resolve_device(device: Any = None):
    """``None``/'auto' -> CUDA when available, else CPU."""
    import torch

    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_TS_NOISE = re.compile(r"^\s*(The following operation failed|Traceback of TorchScript|File \"|  File|"
                       r"~|\^|.*serialized code|.*most recent call last)")


def clean_error(exc: BaseException) -> str:
    """The potential's own message, without TorchScript's interpreter traceback."""
    text = str(exc).strip()
    # scripted ``raise ValueError(msg)`` surfaces as "... builtins.ValueError: msg"
    match = re.search(r"(?:builtins\.)?(?:ValueError|RuntimeError|AssertionError|IndexError)\s*:\s*(.+)\Z",
                      text, flags=re.S)
    if match and ("Traceback" in text or "builtins." in text):
        text = match.group(1).strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and not _TS_NOISE.match(ln)]
    return " ".join(ln.strip() for ln in lines) if lines else str(exc)


def coulomb_spec(coulomb: Any) -> Optional[Dict[str, Any]]:
    """Normalise a ``coulomb=`` argument: None/'auto' -> None (automatic); a method name -> {'method':
    name}; a dict -> a checked copy (keys 'method' and ``dsf_alpha``, ``dsf_rc``, ``ewald_accuracy``,
    ``ewald_rc``)."""
    if coulomb is None or (isinstance(coulomb, str) and coulomb.strip().lower() == "auto"):
        return None
    if isinstance(coulomb, str):
        coulomb = {"method": coulomb}
    if not isinstance(coulomb, dict):
        raise ValueError(f"coulomb must be None/'auto', a method name ({', '.join(COULOMB_METHODS)}) or a dict "
                         f"with a 'method' key, not {coulomb!r}")
    spec = dict(coulomb)
    method = str(spec.get("method", "")).strip().lower()
    if method not in COULOMB_METHODS:
        raise ValueError(f"unknown Coulomb method {spec.get('method')!r}; choose one of "
                         f"{', '.join(COULOMB_METHODS)} (or 'auto')")
    spec["method"] = method
    unknown = sorted(set(spec) - {"method", *_COULOMB_PARAMS})
    if unknown:
        raise ValueError(f"unknown Coulomb parameter(s) {unknown}; valid: {', '.join(_COULOMB_PARAMS)}")
    for key in _COULOMB_PARAMS:
        if key in spec:
            if spec[key] is None and key == "ewald_rc":
                spec[key] = 0.0  # automatic
            if isinstance(spec[key], bool) or not isinstance(spec[key], (int, float)) or spec[key] < 0:
                raise ValueError(f"Coulomb parameter {key} must be a non-negative number, got {spec[key]!r}")
            spec[key] = float(spec[key])
    return spec


def set_module_coulomb(module, setting: Optional[Dict[str, Any]]) -> None:
    """Configure the Coulomb term of a potential module (eager or TorchScript) from a full setting
    (``LoadedPotential.coulomb_setting``); None leaves it alone."""
    if setting is None:
        return
    if not hasattr(module, "set_coulomb"):
        raise ValueError("this potential module has no set_coulomb(): its Coulomb method cannot be chosen")
    module.set_coulomb(setting["method"], float(setting["dsf_alpha"]), float(setting["dsf_rc"]),
                       float(setting["ewald_accuracy"]), float(setting["ewald_rc"]))


def _is_potential_file(path: Path) -> bool:
    """True for a TorchScript zip carrying aimnet2mult potential metadata."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("extra/metadata.json") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _reduced_widths(cell: np.ndarray) -> np.ndarray:
    """Perpendicular widths of a cell (rows = lattice vectors): V / |b x c| etc."""
    volume = abs(float(np.linalg.det(cell)))
    widths = []
    for i in range(3):
        cross = np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])
        norm = float(np.linalg.norm(cross))
        widths.append(volume / norm if norm > 0 else 0.0)
    return np.array(widths)


class LoadedPotential:
    """One per-fidelity potential on a device, callable on a single system (Å, e)."""

    def __init__(self, module, metadata: Dict[str, Any], device, source: str):
        self.module = module
        self.metadata = metadata
        self.device = device
        self.source = source
        self.fidelity = int(metadata.get("fidelity", getattr(module, "fidelity", 0)))
        self.fidelity_name = str(metadata.get("fidelity_name", getattr(module, "fidelity_name", "")))
        self.open_shell = bool(metadata.get("open_shell", getattr(module, "open_shell", False)))
        self.cutoff = float(metadata["cutoff"]) if "cutoff" in metadata else float(module.model.cutoff)
        self.elements = self._elements(module, metadata)
        self.coulomb_method, self._coulomb_params = self._coulomb_state(module, metadata)
        self.trained_outputs = self._trained_outputs(module, metadata)
        #: where else the output can be had (set by ModelSource for checkpoints), for messages
        self.trained_elsewhere: Dict[str, List[str]] = {}
        self._lock = threading.RLock()

    @staticmethod
    def _trained_outputs(module, metadata) -> List[str]:
        """Outputs trained for this fidelity. Files that do not record it report energy and forces
        only (nothing says their charges were trained); a bare module says by its flags."""
        if "trained_outputs" in metadata:
            return [str(o) for o in metadata["trained_outputs"]]
        if not metadata and hasattr(module, "report_charges"):
            return ["energy", "forces"] + (["charges"] if bool(module.report_charges) else []) + \
                (["spin_charges"] if bool(getattr(module, "report_spin_charges", False)) else [])
        return ["energy", "forces"]

    def untrained(self, output: str) -> Optional[str]:
        """None when ``output`` ('charges', 'spin_charges') was trained for this fidelity, else the
        reason it is not reported."""
        if output in self.trained_outputs:
            return None
        what = {"charges": "partial charges (and the dipole from them)",
                "spin_charges": "spin charges (magnetic moments)"}.get(output, output)
        label = {"charges": "charge", "spin_charges": "spin-charge"}.get(output, output)
        if "trained_outputs" not in self.metadata and self.metadata:
            why = (f"{self.source} does not record which outputs were trained (written by an older "
                   "aimnet2mult); re-export it from a checkpoint trained with this version")
        else:
            why = (f"fidelity {self.fidelity} ('{self.fidelity_name}') was trained without {label} labels: its "
                   f"{what} are internal variables of the energy model (its Coulomb term), not predictions")
        elsewhere = self.trained_elsewhere.get(output)
        hint = (f"; fidelities trained for them: {', '.join(elsewhere)}" if elsewhere else "")
        return f"{what} not available: {why}{hint}"

    @staticmethod
    def _coulomb_state(module, metadata) -> Tuple[Optional[str], Dict[str, float]]:
        """(the model's own Coulomb method as loaded, its parameters); method None if unknown."""
        params = {"dsf_alpha": 0.2, "dsf_rc": 15.0, "ewald_accuracy": 1e-8, "ewald_rc": 0.0}
        recorded = metadata.get("coulomb") if isinstance(metadata.get("coulomb"), dict) else {}
        params.update({k: float(recorded[k] or 0.0) for k in _COULOMB_PARAMS if k in recorded})
        method = recorded.get("method")
        try:
            method = str(module.coulomb_method())
            params.update({k: float(v) for k, v in module.model.coulomb.settings().items() if k in _COULOMB_PARAMS})
        except (AttributeError, RuntimeError):
            pass
        return method, params

    def coulomb_setting(self, periodic: bool, coulomb: Any = None) -> Optional[Dict[str, Any]]:
        """The full Coulomb setting (method + parameters) for a periodic or isolated system, or None
        when there is nothing to choose (see the module docstring)."""
        spec = coulomb_spec(coulomb)
        own = self.coulomb_method
        if own == "none":
            if spec is not None and spec["method"] != "none":
                raise ValueError(f"this potential has no Coulomb term (its model was trained with Coulomb method "
                                 f"'none': the network learned the electrostatics), so coulomb={coulomb!r} cannot "
                                 "be used; leave coulomb at 'auto'")
            return None
        if own is None:  # a module that does not say: leave it as it is
            if spec is not None:
                raise ValueError("this potential module does not expose its Coulomb method (no coulomb_method()); "
                                 f"coulomb={coulomb!r} cannot be applied")
            return None
        setting = dict(self._coulomb_params)
        if spec is None:
            setting["method"] = own if (not periodic or own in PERIODIC_COULOMB_METHODS) else PERIODIC_COULOMB_DEFAULT
        else:
            setting.update(spec)
        if periodic and setting["method"] == "simple":
            raise ValueError("Coulomb method 'simple' sums all pairs of an isolated molecule and cannot be used for "
                             "a periodic system: choose coulomb='dsf' or 'ewald' (or 'auto')")
        return setting

    @staticmethod
    def _elements(module, metadata) -> List[int]:
        if "elements" in metadata:
            return [int(z) for z in metadata["elements"]]
        supported = getattr(module, "supported", None)
        if supported is None:
            return []
        return [int(z) for z in np.nonzero(supported.detach().cpu().numpy())[0]]

    def __repr__(self) -> str:
        return f"LoadedPotential(fidelity={self.fidelity} '{self.fidelity_name}', source={self.source})"

    def check_elements(self, numbers: Sequence[int]) -> None:
        """Fail early (at set-up time) on elements the potential does not support."""
        from ..elements import format_elements

        if not self.elements:
            return
        bad = sorted(set(int(z) for z in numbers) - set(self.elements))
        if bad:
            raise ValueError(f"element(s) {format_elements(bad)} not supported by fidelity {self.fidelity} "
                             f"('{self.fidelity_name}'); supported elements: {format_elements(self.elements)}")

    def check_cell(self, cell: np.ndarray, pbc: Sequence[bool]) -> None:
        """A periodic direction narrower than the cutoff would let an atom meet its own image."""
        if abs(float(np.linalg.det(cell))) < 1e-9:
            raise ValueError(f"periodic system with a degenerate cell (volume 0): {cell.tolist()}")
        widths = _reduced_widths(cell)
        for axis in range(3):
            if pbc[axis] and widths[axis] < self.cutoff:
                raise ValueError(
                    f"periodic cell too small for the cutoff: the width along lattice vector {axis} is "
                    f"{widths[axis]:.3f} Å, less than the potential's cutoff {self.cutoff:.3f} Å; use a larger "
                    "(super)cell")

    def _autograd_free(self, flat: bool, periodic: bool) -> bool:
        """Whether this call takes its forces without autograd (flat layout, hand-written
        gradients; see ``Potential.autograd_free``), so that it can run under inference mode.
        Files exported before that method existed answer False."""
        return flat and hasattr(self.module, "autograd_free") and bool(self.module.autograd_free(periodic))

    def call_module(self, inp: Dict[str, Any], periodic: bool, coulomb: Any = None) -> Dict[str, Any]:
        """One call of the potential module on a prepared input dict (torch tensors): the Coulomb
        method for this system, inference mode where the call needs no autograd, errors of a
        scripted file as a plain ValueError. Outputs are detached tensors usable anywhere."""
        import torch

        setting = self.coulomb_setting(periodic, coulomb)
        free = False
        try:
            with self._lock:  # the Coulomb method is module state, shared by all users of this potential
                set_module_coulomb(self.module, setting)
                # after the Coulomb method is set: periodic Ewald needs autograd
                free = self._autograd_free(inp["coord"].dim() == 2, periodic)
                with torch.inference_mode(free):
                    out = self.module(inp)
        except (ValueError, RuntimeError, AssertionError, IndexError, torch.jit.Error) as exc:
            # a scripted potential raises torch.jit.Error, whose text carries the interpreter traceback
            raise ValueError(clean_error(exc)) from None
        if free:  # inference tensors cannot be modified in place outside inference mode: plain copies
            out = {key: value.clone() for key, value in out.items()}
        return out

    def __call__(self, positions, numbers, charge: float = 0.0, mult: float = 1.0,
                 cell: Optional[np.ndarray] = None, pbc: Optional[Sequence[bool]] = None,
                 dense_max_atoms: int = DENSE_MAX_ATOMS, coulomb: Any = None) -> Dict[str, np.ndarray]:
        """Evaluate one system. positions (N,3) Å, numbers (N,), cell (3,3) Å (rows) with pbc (3,);
        ``coulomb`` as in the module docstring (default automatic).

        Returns numpy arrays: energy (float64 scalar, eV), forces (N,3) eV/Å, charges (N,) where
        this fidelity was trained on charges, spin_charges (N,) where trained on them (open-shell
        models), stress (3,3) eV/Å³ for periodic systems.
        """
        import torch

        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        num = np.asarray(numbers, dtype=np.int64).reshape(-1)
        periodic = pbc is not None and bool(np.any(pbc))
        coord = torch.as_tensor(pos, device=self.device)
        z = torch.as_tensor(num, device=self.device)
        inp: Dict[str, torch.Tensor] = {
            "charge": torch.tensor([float(charge)], dtype=torch.float64, device=self.device),
            "mult": torch.tensor([float(mult)], dtype=torch.float64, device=self.device),
        }
        if periodic:
            cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
            pbc_arr = np.asarray(pbc, dtype=bool).reshape(3)
            self.check_cell(cell, pbc_arr)
            inp.update(coord=coord, numbers=z, cell=torch.as_tensor(cell, device=self.device),
                       pbc=torch.as_tensor(pbc_arr, device=self.device))
        elif len(num) <= dense_max_atoms:
            inp.update(coord=coord.unsqueeze(0), numbers=z.unsqueeze(0))
        else:
            inp.update(coord=coord, numbers=z)
        out = self.call_module(inp, periodic, coulomb)
        n = len(num)
        res = {
            "energy": np.float64(out["energy"].detach().to(torch.float64).sum().cpu().item()),
            "forces": out["forces"].detach().to(torch.float64).reshape(n, 3).cpu().numpy(),
        }
        if "charges" in out and self.untrained("charges") is None:
            res["charges"] = out["charges"].detach().to(torch.float64).reshape(n).cpu().numpy()
        if "spin_charges" in out and self.untrained("spin_charges") is None:
            res["spin_charges"] = out["spin_charges"].detach().to(torch.float64).reshape(n).cpu().numpy()
        if "stress" in out:
            res["stress"] = out["stress"].detach().to(torch.float64).reshape(3, 3).cpu().numpy()
        return res


_CACHE: Dict[Tuple, LoadedPotential] = {}
_CACHE_LOCK = threading.Lock()


class ModelSource:
    """A model as the user gave it; hands out :class:`LoadedPotential` objects per fidelity."""

    def __init__(self, model: Any = None, device: Any = None, cache: bool = True):
        import torch

        self.device = resolve_device(device)
        self.cache = cache
        self._potentials: Dict[int, LoadedPotential] = {}
        self._ckpt: Optional[Dict[str, Any]] = None
        self._fixed: Optional[LoadedPotential] = None  # .jpt file or module: one fidelity only
        self.path: Optional[Path] = None
        if model is None:
            model = default_model_path()
        if isinstance(model, (str, Path)):
            path = Path(model).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"model file not found: {path}")
            self.path = path.resolve()
            if _is_potential_file(self.path):
                self._fixed = self._load_jpt(self.path)
            else:
                from ..checkpoint import load_checkpoint

                self._ckpt = load_checkpoint(self.path)
        elif isinstance(model, dict):
            from ..checkpoint import validate_checkpoint

            self._ckpt = validate_checkpoint(model, "<checkpoint dict>")
        elif isinstance(model, torch.nn.Module):
            meta = dict(getattr(model, "metadata", {}) or {})
            module = model.to(self.device)
            module.eval()
            self._fixed = LoadedPotential(module, meta, self.device, f"<{type(model).__name__}>")
        else:
            raise TypeError(f"model must be a path, a checkpoint dict or a potential module, "
                            f"not {type(model).__name__}")

    def __reduce__(self):
        """Pickling / deep copies (multiprocessing, some OpenMM paths): a model given by path is
        reloaded from that path, a checkpoint dict travels as it is; a module given in memory cannot."""
        if self.path is not None:
            return (ModelSource, (str(self.path), str(self.device), self.cache))
        if self._ckpt is not None:
            return (ModelSource, (self._ckpt, str(self.device), self.cache))
        raise TypeError("a calculator or ModelSource built from a potential module in memory cannot be pickled or "
                        "copied; give the model as a file path (.pt or .jpt) instead")

    @property
    def checkpoint(self) -> Optional[Dict[str, Any]]:
        """The checkpoint dict (None for a compiled potential or a module)."""
        return self._ckpt

    # ------------------------------------------------------------------ fidelities
    @property
    def fidelities(self) -> List[Tuple[int, str]]:
        if self._ckpt is not None:
            return [(int(f["index"]), f["name"]) for f in self._ckpt["fidelities"]]
        return [(self._fixed.fidelity, self._fixed.fidelity_name)]

    def _choices(self) -> str:
        return ", ".join(f"{k} ('{name}')" for k, name in self.fidelities)

    def resolve_fidelity(self, fidelity: Union[int, str, None]) -> int:
        if self._ckpt is not None:
            from ..checkpoint import fidelity_index

            if fidelity is None and len(self._ckpt["fidelities"]) == 1:
                return 0
            return fidelity_index(self._ckpt, fidelity)
        pot = self._fixed
        from ..checkpoint import check_fidelity_value

        fidelity = check_fidelity_value(fidelity, self._choices())
        if fidelity is None:
            return pot.fidelity
        if isinstance(fidelity, str) and not fidelity.strip().lstrip("-").isdigit():
            if fidelity.strip().lower() == pot.fidelity_name.lower():
                return pot.fidelity
        elif int(fidelity) == pot.fidelity:
            return pot.fidelity
        raise ValueError(f"fidelity {fidelity!r} does not match this compiled single-fidelity potential, "
                         f"which holds fidelity {self._choices()}; compile the wanted fidelity from the "
                         "checkpoint or pass the checkpoint (.pt) instead")

    def potential(self, fidelity: Union[int, str, None] = None) -> LoadedPotential:
        k = self.resolve_fidelity(fidelity)
        if self._fixed is not None:
            return self._fixed
        if k not in self._potentials:
            self._potentials[k] = self._build(k)
        return self._potentials[k]

    # ------------------------------------------------------------------ loading
    def _cache_key(self, k: int):
        if not self.cache or self.path is None:
            return None
        st = self.path.stat()
        return (str(self.path), st.st_mtime_ns, st.st_size, k, str(self.device))

    def _load_jpt(self, path: Path) -> LoadedPotential:
        from ..export import load_potential

        key = self._cache_key(-1)
        with _CACHE_LOCK:
            if key is not None and key in _CACHE:
                return _CACHE[key]
            module, meta = load_potential(path, device=self.device)
            pot = LoadedPotential(module, meta, self.device, str(path))
            if key is not None:
                _CACHE[key] = pot
            return pot

    def _build(self, k: int) -> LoadedPotential:
        from ..export import build_potential

        key = self._cache_key(k)
        with _CACHE_LOCK:
            if key is not None and key in _CACHE:
                return _CACHE[key]
            module = build_potential(self._ckpt, k)
            meta = dict(module.metadata)
            module = module.to(self.device)
            pot = LoadedPotential(module, meta, self.device, str(self.path) if self.path else "<checkpoint dict>")
            from ..checkpoint import fidelities_with

            pot.trained_elsewhere = {o: fidelities_with(self._ckpt, o) for o in ("charges", "spin_charges")}
            if key is not None:
                _CACHE[key] = pot
            return pot

    def scripted(self, fidelity: Union[int, str, None] = None):
        """(TorchScript potential, metadata) of one fidelity, for openmm-torch."""
        import torch

        pot = self.potential(fidelity)
        module = pot.module
        if not isinstance(module, torch.jit.ScriptModule):
            from .. import jit

            module = jit.script(module)
        return module, pot.metadata


def load_model(model: Any = None, fidelity: Union[int, str, None] = None, device: Any = None) -> LoadedPotential:
    """The potential of one fidelity of ``model`` (see the module docstring for what a model is)."""
    return ModelSource(model, device).potential(fidelity)
