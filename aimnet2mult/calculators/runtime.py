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
a non-periodic one in the dense layout up to ``dense_max_atoms`` atoms (fast for molecules) and in
the flat layout above (O(N)).
"""

import re
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

#: non-periodic systems up to this many atoms use the dense (all-pairs) layout
DENSE_MAX_ATOMS = 256

#: where a bundled default model would live (first existing file wins)
_DEFAULT_MODEL_NAMES = ("default_model.jpt", "default_model.pt")


def default_model_path() -> Path:
    """Path of the bundled default model; a clear error while the package ships none."""
    root = Path(__file__).resolve().parent.parent / "resources" / "models"
    for name in _DEFAULT_MODEL_NAMES:
        if (root / name).is_file():
            return root / name
    raise ValueError(
        "aimnet2mult does not ship a default model yet: pass model=PATH, either a training "
        "checkpoint (.pt, with fidelity=INDEX or NAME) or a compiled potential (.jpt from "
        "'aimnet2mult compile'). The official AIMNet2 wB97M-D3 weights can be converted with "
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

    def __call__(self, positions, numbers, charge: float = 0.0, mult: float = 1.0,
                 cell: Optional[np.ndarray] = None, pbc: Optional[Sequence[bool]] = None,
                 dense_max_atoms: int = DENSE_MAX_ATOMS) -> Dict[str, np.ndarray]:
        """Evaluate one system. positions (N,3) Å, numbers (N,), cell (3,3) Å (rows) with pbc (3,).

        Returns numpy arrays: energy (float64 scalar, eV), forces (N,3) eV/Å, charges (N,),
        spin_charges (N,) for open-shell models, stress (3,3) eV/Å³ for periodic systems.
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
        try:
            out = self.module(inp)
        except (ValueError, RuntimeError, AssertionError, IndexError, torch.jit.Error) as exc:
            # a scripted potential raises torch.jit.Error, whose text carries the interpreter traceback
            raise ValueError(clean_error(exc)) from None
        n = len(num)
        res = {
            "energy": np.float64(out["energy"].detach().to(torch.float64).sum().cpu().item()),
            "forces": out["forces"].detach().to(torch.float64).reshape(n, 3).cpu().numpy(),
            "charges": out["charges"].detach().to(torch.float64).reshape(n).cpu().numpy(),
        }
        if "spin_charges" in out:
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
            raise TypeError(f"model must be a path, a checkpoint dict or a potential module, not {type(model).__name__}")

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
            if key is not None:
                _CACHE[key] = pot
            return pot

    def scripted(self, fidelity: Union[int, str, None] = None):
        """(TorchScript potential, metadata) of one fidelity, for openmm-torch."""
        import torch

        pot = self.potential(fidelity)
        module = pot.module
        if not isinstance(module, torch.jit.ScriptModule):
            module = torch.jit.script(module)
        return module, pot.metadata


def load_model(model: Any = None, fidelity: Union[int, str, None] = None, device: Any = None) -> LoadedPotential:
    """The potential of one fidelity of ``model`` (see the module docstring for what a model is)."""
    return ModelSource(model, device).potential(fidelity)
