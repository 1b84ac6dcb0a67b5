"""A self-contained potential for ONE fidelity: network + SAE + dispersion + forces (+ stress).

``Potential`` is what ships: standard atomic numbers in, total energy (residual network energy +
Σ SAE + Coulomb + the fidelity's D3(BJ)) in float64 eV, forces by autograd inside the module, and
clear errors for bad input. It is TorchScript-compatible; ``aimnet2mult.export`` saves it as a
``.jpt`` with JSON metadata. The layout is picked from the rank of ``coord``.

Dense contract (padded batch of isolated molecules, all pairs)::

    out = potential({'coord': (B, N, 3) Å, 'numbers': (B, N) int (0 = padding),
                     'charge': (B,) e [optional, 0], 'mult': (B,) [optional, 1]})
    out['energy'] (B,) float64 eV, out['forces'] (B, N, 3) eV/Å, out['charges'] (B, N) e,
    out['spin_charges'] (B, N) for open-shell models, out['dispersion_energy'] (B,) float64 eV

Flat contract (neighbour lists, O(N); large and periodic systems)::

    out = potential({'coord': (N, 3) Å, 'numbers': (N,) int (all real atoms),
                     'charge': () or (n_mol,) e [optional, 0], 'mult': () or (n_mol,) [optional, 1],
                     'mol_idx': (N,) int, sorted 0..n_mol-1 [optional: one molecule],
                     'cell': (3, 3) Å, rows = lattice vectors [optional], 'pbc': (3,) bool
                     [optional; all True when a cell is given]})
    out['energy'] (n_mol,) float64 eV, out['forces'] (N, 3), out['charges'] (N,),
    out['dispersion_energy'] (n_mol,), out['spin_charges'] (N,) (open shell),
    out['stress'] (3, 3) eV/Å³ for periodic input (σ = (1/V) ∂E/∂ε, the strain derivative,
    ASE's sign convention) whenever the cell has a volume.

A periodic input is one system (one molecule index). Neighbour lists are built inside the module
by a swappable builder submodule (``aimnet2mult.nn.neighbors``): the pure-TorchScript cell list
``TorchCellList`` by default (an exported file then needs nothing but torch), or vesin-torch
(``VesinNeighbors``, ``export_potential(..., neighbor_list="vesin")``). An MD caller can pass cached Verlet lists
(``nbmat``, ``cell_shifts``, ``pairs_lr``, ``cell_shifts_lr`` from
``VerletNeighborList``/``neighbor_lists``) instead. ``set_coulomb`` switches the Coulomb method
(simple | dsf | ewald | none) of a built or loaded potential.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .nn import nbops
from .nn.geometry import flat_geometry_vjp, min_real_distance
from .nn.keys import Key
from .nn.model import MultiFidelityAIMNet2
from .nn.neighbors import TorchCellList
from .nn.onednn import PackedWeights
from .units import MIN_ATOM_DISTANCE

#: closer than this (Å), two atoms are taken to be at the same position: an input error
MIN_DISTANCE = MIN_ATOM_DISTANCE
#: a periodic cutoff sphere reaching more periodic images than this means the cell is too small
MAX_IMAGES = 50000
#: dense input larger than B * N * N pair slots is refused (about 2,000 atoms in one molecule):
#: the flat layout handles large systems in O(N) memory
DENSE_MAX_PAIRS = 4_000_000


def _rounded(x: float, digits: int) -> float:
    """x rounded to ``digits`` decimals (TorchScript's str.format knows only '{}')."""
    scale = 10.0 ** digits
    return math.floor(x * scale + 0.5) / scale


class Potential(nn.Module):
    fidelity: int
    fidelity_name: str
    open_shell: bool
    symbols: List[str]
    min_distance: float
    max_images: int
    dense_max_pairs: int
    report_charges: bool
    report_spin_charges: bool

    def __init__(self, model: MultiFidelityAIMNet2, sae: Tensor, supported: Tensor,
                 terms: List[nn.Module], fidelity: int, fidelity_name: str, symbols: List[str],
                 neighbor_list: Optional[nn.Module] = None, trained_outputs: Optional[List[str]] = None):
        """model: single-fidelity network; sae: (offset,) float64 eV per element; supported:
        (offset,) bool; terms: the energy terms on the long-range pairs, e.g. [D3BJ] (see
        ``aimnet2mult.nn.terms``); neighbor_list: the flat-layout neighbour-list
        builder (default ``TorchCellList``; see ``aimnet2mult.nn.neighbors.make_neighbor_list``);
        trained_outputs: the outputs trained for this fidelity (default all): charges and spin
        charges not in it are used inside (Coulomb) but not returned."""
        super().__init__()
        if model.num_fidelities != 1:
            raise ValueError("Potential wraps a single-fidelity network (see aimnet2mult.export)")
        self.model = model
        self.register_buffer("sae", sae.to(torch.float64))
        self.register_buffer("supported", supported.to(torch.bool))
        self.terms = nn.ModuleList(terms)
        self.fidelity = int(fidelity)
        self.fidelity_name = fidelity_name
        self.open_shell = model.num_charge_channels == 2
        self.report_charges = trained_outputs is None or Key.CHARGES.value in trained_outputs
        self.report_spin_charges = self.open_shell and (trained_outputs is None
                                                        or Key.SPIN_CHARGES.value in trained_outputs)
        self.symbols = list(symbols)
        self.min_distance = MIN_DISTANCE
        self.max_images = MAX_IMAGES
        self.dense_max_pairs = DENSE_MAX_PAIRS
        self.neighbor_list = neighbor_list if neighbor_list is not None else TorchCellList()
        model.manual_forces = True
        # the weights of a potential never change: its dense layers may keep oneDNN-packed copies
        self.set_packed_weights(True)

    @torch.jit.export
    def set_packed_weights(self, enabled: bool) -> None:
        """The network's dense layers with oneDNN-packed weight copies on CPU in float32 (default,
        faster) or plain weights (see ``aimnet2mult.nn.onednn.PackedWeights``)."""
        for layer in self.model.modules():
            if isinstance(layer, PackedWeights):
                layer.enabled = enabled
                layer.clear()

    @torch.jit.export
    def set_manual_forces(self, enabled: bool) -> None:
        """Forces of the flat layout by the network's hand-written VJP (default, faster) or by
        autograd through the whole network (the reference the tests compare against)."""
        self.model.manual_forces = enabled

    # ------------------------------------------------------------------------------ settings
    @torch.jit.export
    def set_coulomb(self, method: str, dsf_alpha: float = -1.0, dsf_rc: float = -1.0,
                    ewald_accuracy: float = -1.0, ewald_rc: float = -1.0) -> None:
        """Switch the Coulomb method (simple | dsf | ewald | none) at evaluation time; a negative
        parameter keeps its value (``ewald_rc`` 0 = automatic)."""
        self.model.coulomb.configure(method, dsf_alpha, dsf_rc, ewald_accuracy, ewald_rc)

    @torch.jit.export
    def coulomb_method(self) -> str:
        return self.model.coulomb.method

    @torch.jit.export
    def neighbor_list_library(self) -> str:
        """Which builder makes the flat-layout neighbour lists: 'torch' or 'vesin_torch'."""
        return self.neighbor_list.library

    # ------------------------------------------------------------------------------ validation
    def _element_list(self) -> str:
        names: List[str] = []
        for z in range(self.supported.shape[0]):
            if bool(self.supported[z]):
                names.append(self.symbols[z] if z < len(self.symbols) else str(z))
        return ", ".join(names)

    def _check_elements(self, numbers: Tensor) -> None:
        numbers = numbers.to(torch.long)  # int8/uint8 input: compare without overflow
        if bool((numbers < 0).any()) or bool((numbers >= self.supported.shape[0]).any()):
            raise ValueError("atomic numbers must lie in 0..{} (0 = padding)".format(self.supported.shape[0] - 1))
        ok = self.supported[numbers.to(torch.long)] | (numbers == 0)
        if not bool(ok.all()):
            z = int(numbers[~ok][0])
            name = self.symbols[z] if z < len(self.symbols) else str(z)
            raise ValueError("element {} (Z={}) is not supported by fidelity {} ('{}'); supported elements: {}".format(
                name, z, self.fidelity, self.fidelity_name, self._element_list()))

    def _check_mult(self, mult: Tensor) -> None:
        mult = mult.to(torch.float64)
        if not self.open_shell and bool((mult != 1.0).any()):
            bad = float(mult[mult != 1.0][0])
            raise ValueError("this potential is closed-shell (no spin channel): 'mult' must be 1, got {}".format(bad))
        if bool((mult < 1.0).any()) or bool((mult != torch.round(mult)).any()):
            raise ValueError("'mult' must be a positive integer (2S+1)")

    def _validate(self, data: Dict[str, Tensor]) -> None:
        coord = data[Key.COORD.value]
        numbers = data[Key.NUMBERS.value]
        if coord.dim() != 3 or coord.shape[-1] != 3:
            raise ValueError("'coord' must have shape (B, N, 3) (dense batch) or (N, 3) (flat / periodic "
                             "system), in Å; got {}".format(list(coord.shape)))
        if not coord.is_floating_point():
            raise ValueError("'coord' must be a floating-point tensor, got {}".format(coord.dtype))
        if numbers.is_floating_point() or numbers.dtype == torch.bool:
            raise ValueError("'numbers' must be an integer tensor, got {}".format(numbers.dtype))
        if numbers.shape != coord.shape[:2]:
            raise ValueError("'numbers' must have shape (B, N) = {}, got {}".format(
                list(coord.shape[:2]), list(numbers.shape)))
        b = coord.shape[0]
        if b * coord.shape[1] * coord.shape[1] > self.dense_max_pairs:
            raise ValueError("dense input of {} x {} atoms needs {} pair slots (more than {}), which would exhaust "
                             "memory: give large systems in the flat layout, 'coord' (N, 3) and 'numbers' (N,) "
                             "(with 'mol_idx' for several molecules)".format(b, coord.shape[1],
                                                                             b * coord.shape[1] * coord.shape[1],
                                                                             self.dense_max_pairs))
        if b == 0 or coord.shape[1] == 0:
            raise ValueError("the batch is empty: 'coord' has shape {}; give at least one molecule with at "
                             "least one atom".format(list(coord.shape)))
        for key in [Key.CHARGE.value, Key.MULT.value]:
            if key in data and data[key].shape != torch.Size([b]):
                raise ValueError("'{}' must have shape (B,) = [{}], got {}".format(key, b, list(data[key].shape)))
        if bool((numbers != 0).sum(1).eq(0).any()):
            raise ValueError("a molecule of the batch has no atoms (all numbers are 0)")

    def _per_molecule(self, data: Dict[str, Tensor], key: str, n_mol: int, default: float,
                      dtype: torch.dtype, device: torch.device) -> Tensor:
        if key not in data:
            return torch.full((n_mol,), default, dtype=dtype, device=device)
        value = data[key]
        if value.dim() == 0 or (value.dim() == 1 and value.shape[0] == 1 and n_mol == 1):
            value = value.reshape(1).expand(n_mol)
        if value.shape != torch.Size([n_mol]):
            raise ValueError("'{}' must be a scalar or have shape (n_mol,) = [{}], got {}".format(
                key, n_mol, list(value.shape)))
        if not bool(torch.isfinite(value.to(torch.float64)).all()):
            raise ValueError("'{}' contains NaN or infinite values".format(key))
        return value.to(dtype)

    def _validate_flat(self, data: Dict[str, Tensor]) -> Tuple[Tensor, int]:
        """Checks the flat input; returns (mol_idx (N,) int64, n_mol)."""
        coord = data[Key.COORD.value]
        numbers = data[Key.NUMBERS.value]
        if not coord.is_floating_point():
            raise ValueError("'coord' must be a floating-point tensor, got {}".format(coord.dtype))
        if numbers.is_floating_point() or numbers.dtype == torch.bool:
            raise ValueError("'numbers' must be an integer tensor, got {}".format(numbers.dtype))
        n = coord.shape[0]
        if numbers.shape != torch.Size([n]):
            raise ValueError("flat input: 'numbers' must have shape (N,) = [{}] to match 'coord' (N, 3), got {}".format(
                n, list(numbers.shape)))
        if n == 0:
            raise ValueError("the system has no atoms")
        if not bool(torch.isfinite(coord).all()):
            raise ValueError("'coord' contains NaN or infinite values")
        if bool((numbers == 0).any()):
            raise ValueError("flat input: 'numbers' must be atomic numbers >= 1 (no padding; use 'mol_idx' "
                             "for several molecules)")
        self._check_elements(numbers)
        if Key.MOL_IDX.value in data:
            mol_idx = data[Key.MOL_IDX.value]
            if mol_idx.is_floating_point() or mol_idx.dtype == torch.bool or mol_idx.shape != torch.Size([n]):
                raise ValueError("'mol_idx' must be an integer tensor of shape (N,) = [{}]".format(n))
            mol_idx = mol_idx.to(torch.long)
            steps = mol_idx[1:] - mol_idx[:-1]
            if int(mol_idx[0]) != 0 or bool(((steps != 0) & (steps != 1)).any()):
                raise ValueError("'mol_idx' must be sorted molecule indices 0, 0, ..., 1, 1, ... (atoms of a "
                                 "molecule contiguous, molecules numbered from 0 without gaps)")
        else:
            mol_idx = torch.zeros(n, dtype=torch.long, device=coord.device)
        n_mol = int(mol_idx[-1]) + 1
        return mol_idx, n_mol

    def _periodicity(self, data: Dict[str, Tensor], n_mol: int, dtype: torch.dtype,
                     device: torch.device) -> Tuple[Tensor, Tensor, bool]:
        """(cell (3, 3) in dtype, pbc (3,) bool, periodic) of a flat input; zeros/False if isolated."""
        has_cell = Key.CELL.value in data
        pbc = torch.zeros(3, dtype=torch.bool, device=device)
        if Key.PBC.value in data:
            p = data[Key.PBC.value]
            if p.is_floating_point() or (p.dim() != 0 and p.shape != torch.Size([3])):
                raise ValueError("'pbc' must be a bool tensor of shape (3,) (or a scalar bool)")
            pbc = (p.reshape(-1) != 0).expand(3).to(device)
            if bool(pbc.any()) and not has_cell:
                raise ValueError("'pbc' marks a periodic direction but no 'cell' (3, 3) was given")
        elif has_cell:
            pbc = torch.ones(3, dtype=torch.bool, device=device)
        periodic = bool(pbc.any())
        cell = torch.zeros(3, 3, dtype=dtype, device=device)
        if has_cell and periodic:
            c = data[Key.CELL.value]
            if c.shape != torch.Size([3, 3]) or not c.is_floating_point():
                raise ValueError("'cell' must be a floating-point (3, 3) tensor in Å (rows = lattice vectors), "
                                 "got {} {}".format(list(c.shape), c.dtype))
            if not bool(torch.isfinite(c).all()):
                raise ValueError("'cell' contains NaN or infinite values")
            cell = c.detach().to(dtype)
            c64 = c.detach().to(torch.float64)
            rows = c64[pbc]
            gram = rows @ rows.transpose(0, 1)
            norms = torch.linalg.norm(rows, dim=1)
            rel = torch.sqrt(torch.clamp(torch.linalg.det(gram), min=0.0)) / torch.clamp(norms.prod(), min=1e-300)
            if bool((norms < 1e-6).any()) or float(rel) < 1e-6:
                raise ValueError("'cell' is singular (volume {} Å³): its periodic lattice vectors are zero "
                                 "or linearly dependent; the rows of 'cell' must be three independent lattice "
                                 "vectors in Å".format(_rounded(float(torch.linalg.det(c64)), 6)))
            if n_mol > 1:
                raise ValueError("a periodic input is one system: 'mol_idx' must be all zeros (got {} "
                                 "molecules)".format(n_mol))
            if self.model.coulomb.method == "simple":
                raise ValueError("Coulomb method 'simple' sums all pairs of an isolated molecule and cannot be "
                                 "used for a periodic system: choose 'dsf' or 'ewald' (set_coulomb, or "
                                 "coulomb=... at export)")
            if self.model.coulomb.method == "ewald" and not bool(pbc.all()):
                raise ValueError("Coulomb method 'ewald' needs a cell periodic in all three directions, got "
                                 "pbc = [{}, {}, {}]; use 'dsf' for partially periodic systems".format(
                                     bool(pbc[0]), bool(pbc[1]), bool(pbc[2])))
        return cell, pbc, periodic

    def _check_cell_size(self, cell: Tensor, pbc: Tensor, cutoff: float, what: str) -> None:
        """Refuse cells so small that the cutoff sphere reaches an absurd number of images."""
        c = cell.detach().to(torch.float64)
        n_images = 1
        for axis in range(3):
            if bool(pbc[axis]):
                # width = component of a_axis orthogonal to the other periodic lattice vectors
                v = c[axis].clone()
                basis: List[Tensor] = []
                for other in range(3):
                    if other != axis and bool(pbc[other]):
                        u = c[other].clone()
                        for e in basis:
                            u = u - (u * e).sum() * e
                        basis.append(u / torch.linalg.norm(u))
                for e in basis:
                    v = v - (v * e).sum() * e
                width = float(torch.linalg.norm(v))
                reach = int(math.ceil(cutoff / max(width, 1e-12)))
                n_images = n_images * (2 * reach + 1)
                if n_images > self.max_images:
                    raise ValueError(
                        "periodic cell too small for {}: the width along lattice vector {} is {} Å, so its "
                        "{} Å cutoff reaches more than {} periodic images; use a larger (super)cell".format(
                            what, axis, _rounded(width, 3), _rounded(cutoff, 2), self.max_images))

    # ------------------------------------------------------------------------------ neighbour lists
    def _long_range_cutoff(self, n_atoms: int, volume: float, periodic: bool,
                           all_pairs: bool = False) -> Tuple[float, str]:
        """(cutoff, what): -1 = all pairs of each molecule, 0 = no long-range terms. ``all_pairs``
        (isolated molecules given in the dense layout): every long-range term sums all pairs of
        each molecule, as the dense contract promises."""
        cut = 0.0
        what = "the network"
        if self.model.coulomb.method != "none":
            cut = self.model.coulomb.pair_cutoff(n_atoms, volume, periodic)
            what = "Coulomb method '{}'".format(self.model.coulomb.method)
        every_pair = False
        for term in self.terms:
            if term.cutoff < 0.0:  # the term needs every pair of each molecule (e.g. D4's EEQ charges)
                if periodic:
                    raise ValueError("the energy term '{}' supports isolated molecules only (it needs every pair "
                                     "of each molecule); the input is periodic".format(term.name))
                every_pair = True
                what = "the energy term '{}'".format(term.name)
            elif cut >= 0.0 and term.cutoff > cut:
                cut = term.cutoff
                what = "the energy term '{}'".format(term.name)
        if every_pair:
            cut = -1.0
        if all_pairs and not periodic and cut != 0.0:
            cut = -1.0
        return cut, what

    def _lists(self, coord: Tensor, cell: Tensor, pbc: Tensor, periodic: bool, mol_idx: Tensor,
               n_mol: int, skin: float, all_pairs: bool = False) -> Dict[str, Tensor]:
        n = coord.shape[0]
        volume = 0.0
        if periodic:
            volume = abs(float(torch.linalg.det(cell.detach().to(torch.float64))))
        sr = self.model.cutoff + skin
        lr, what = self._long_range_cutoff(n, volume, periodic, all_pairs)
        if lr > 0.0:
            lr = lr + skin
        if periodic:
            if lr > sr:
                self._check_cell_size(cell, pbc, lr, what)
            else:
                self._check_cell_size(cell, pbc, sr, "the network")
        return self.neighbor_list(coord, cell, pbc, mol_idx, n_mol, sr, lr)

    @torch.jit.export
    def neighbor_lists(self, coord: Tensor, cell: Optional[Tensor] = None, pbc: Optional[Tensor] = None,
                       mol_idx: Optional[Tensor] = None, skin: float = 0.0) -> Dict[str, Tensor]:
        """Neighbour lists of a flat system with every cutoff enlarged by ``skin`` Å (Verlet lists;
        see ``aimnet2mult.nn.neighbors.VerletNeighborList``). Pass the result with the input."""
        data: Dict[str, Tensor] = {Key.COORD.value: coord,
                                   Key.NUMBERS.value: torch.ones(coord.shape[0], dtype=torch.long, device=coord.device)}
        if cell is not None:
            data[Key.CELL.value] = cell
        if pbc is not None:
            data[Key.PBC.value] = pbc
        if mol_idx is not None:
            data[Key.MOL_IDX.value] = mol_idx
        if coord.dim() != 2 or coord.shape[-1] != 3:
            raise ValueError("neighbour lists are for flat input: 'coord' must be (N, 3)")
        mol, n_mol = self._validate_flat(data)
        dtype = self.model.backbone.embedding.weight.dtype
        cell_t, pbc_t, periodic = self._periodicity(data, n_mol, dtype, coord.device)
        return self._lists(coord.detach().to(dtype), cell_t, pbc_t, periodic, mol, n_mol, skin)

    def _given_lists(self, data: Dict[str, Tensor], n: int, need_lr: bool) -> Dict[str, Tensor]:
        """Neighbour lists passed with the input (e.g. Verlet lists), checked."""
        out: Dict[str, Tensor] = {}
        nbmat = data[Key.NBMAT.value]
        if nbmat.dim() != 2 or nbmat.shape[0] != n + 1 or nbmat.is_floating_point():
            raise ValueError("'nbmat' must be an integer (N+1, M) neighbour matrix (N = {})".format(n))
        if bool((nbmat < 0).any()) or bool((nbmat > n).any()):
            raise ValueError("'nbmat' holds indices outside 0..N")
        want = torch.Size([nbmat.shape[0], nbmat.shape[1], 3])
        if Key.CELL_SHIFTS.value not in data or data[Key.CELL_SHIFTS.value].shape != want:
            raise ValueError("'nbmat' needs 'cell_shifts' of shape (N+1, M, 3)")
        out[Key.NBMAT.value] = nbmat.to(torch.long)
        out[Key.CELL_SHIFTS.value] = data[Key.CELL_SHIFTS.value]
        if Key.PAIRS_LR.value in data:
            pairs = data[Key.PAIRS_LR.value]
            if pairs.dim() != 2 or pairs.shape[0] != 2 or pairs.is_floating_point():
                raise ValueError("'pairs_lr' must be an integer (2, P) pair list")
            if pairs.numel() > 0 and (bool((pairs < 0).any()) or bool((pairs >= n).any())):
                raise ValueError("'pairs_lr' holds indices outside 0..N-1")
            want_lr = torch.Size([pairs.shape[1], 3])
            if Key.CELL_SHIFTS_LR.value not in data or data[Key.CELL_SHIFTS_LR.value].shape != want_lr:
                raise ValueError("'pairs_lr' needs 'cell_shifts_lr' of shape (P, 3)")
            out[Key.PAIRS_LR.value] = pairs.to(torch.long)
            out[Key.CELL_SHIFTS_LR.value] = data[Key.CELL_SHIFTS_LR.value]
        elif need_lr:
            raise ValueError("the input has 'nbmat' but no long-range list 'pairs_lr' (needed for Coulomb / "
                             "dispersion): pass all lists from neighbor_lists()")
        return out

    # ------------------------------------------------------------------------------ forward
    def forward(self, data: Dict[str, Tensor]) -> Dict[str, Tensor]:
        for key in [Key.COORD.value, Key.NUMBERS.value]:
            if key not in data:
                raise ValueError("input lacks '{}': the potential needs 'coord' ((B, N, 3) or (N, 3), Å) and "
                                 "'numbers' ((B, N) or (N,))".format(key))
        coord = data[Key.COORD.value]
        if coord.dim() == 2 and coord.shape[-1] == 3:
            return self._forward_flat(data)
        return self._forward_dense(data)

    def _forward_dense(self, data: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Dense batch (B, N) -> the flat path on its real atoms (padding dropped, ``mol_idx`` from
        the batch row, every long-range pair of each molecule summed), results scattered back to
        (B, N, ...) with zeros at padding: one evaluation path, the fast one, for both layouts."""
        self._validate(data)
        numbers = data[Key.NUMBERS.value].to(torch.long)
        b, n_pad = numbers.shape[0], numbers.shape[1]
        index = (numbers != 0).reshape(-1).nonzero().squeeze(-1)
        rows = torch.arange(b, device=numbers.device).unsqueeze(1).expand(b, n_pad).reshape(-1)
        flat: Dict[str, Tensor] = {Key.COORD.value: data[Key.COORD.value].reshape(-1, 3)[index],
                                   Key.NUMBERS.value: numbers.reshape(-1)[index], Key.MOL_IDX.value: rows[index]}
        for key in [Key.CHARGE.value, Key.MULT.value]:
            if key in data:
                flat[key] = data[key]
        out = self._forward_flat(flat, True)
        result: Dict[str, Tensor] = {}
        for key, value in out.items():
            if key.endswith("energy"):  # per molecule: energy, dispersion_energy, {term}_energy
                result[key] = value
        forces = out[Key.FORCES.value]
        result[Key.FORCES.value] = torch.zeros(b * n_pad, 3, dtype=forces.dtype, device=forces.device).index_copy(
            0, index, forces).view(b, n_pad, 3)
        for key in [Key.CHARGES.value, Key.SPIN_CHARGES.value]:
            if key in out:
                atomic = out[key]
                result[key] = torch.zeros(b * n_pad, dtype=atomic.dtype, device=atomic.device).index_copy(
                    0, index, atomic).view(b, n_pad)
        return result

    def _forces_by_hand(self, has_lr_pairs: bool, periodic: bool) -> bool:
        """Whether forces and stress of a flat-layout call come from ``flat_geometry_vjp`` with the
        hand-written gradients: the model's manual path (exported potentials, eval mode), long-range
        terms on the half pair list (or none at all) and no periodic Ewald sum (its reciprocal part
        keeps autograd). A term without a hand-written gradient then gets its dE/dd by a local
        autograd call."""
        if not self.model.takes_manual_forces() or (self.model.coulomb.method == "ewald" and periodic):
            return False
        return has_lr_pairs or (len(self.terms) == 0 and self.model.coulomb.method == "none")

    @torch.jit.export
    def autograd_free(self, periodic: bool) -> bool:
        """Whether a flat-layout call (coord (N, 3), neighbour lists built here) of an isolated
        (``periodic`` False) or periodic system takes energy, forces and stress without autograd.
        Such calls may run under ``torch.inference_mode()``, which skips autograd's bookkeeping
        in every operator (the calculators do; 5-7 % of a call at 9-100 atoms)."""
        model = self.model
        for term in self.terms:
            if not hasattr(term, "energy_and_distance_grad"):
                return False  # that term's gradient is taken by autograd (see _forward_flat)
        return model.takes_manual_forces() and not (model.coulomb.method == "ewald" and periodic)

    def _autograd_forces(self, energy: Tensor, out: Dict[str, Tensor], g_lr: Optional[Tensor],
                         leaves: List[Tensor]) -> List[Optional[Tensor]]:
        """dE/d(leaves) by ONE autograd call: the energy's own graph plus the hand-written
        gradients of the model (d_ij, u_ij) and of the long-range terms (d_ij_lr) as seeds."""
        outputs: List[Tensor] = []
        seeds: List[Optional[Tensor]] = []
        if energy.requires_grad:  # not when the network's gradient is all in the VJP
            outputs.append(energy.sum())
            seeds.append(torch.ones_like(outputs[0]))
        if Key.VJP_DISTANCE_GRAD.value in out:
            # the network's hand-written gradient with respect to the pair geometry (see the model)
            outputs.append(out[Key.D_IJ.value])
            seeds.append(out[Key.VJP_DISTANCE_GRAD.value])
            outputs.append(out[Key.U_IJ.value])
            seeds.append(out[Key.VJP_DIRECTION_GRAD.value])
        if g_lr is not None:
            outputs.append(out[Key.D_IJ_LR.value])
            seeds.append(g_lr)
        return torch.autograd.grad(outputs, leaves, grad_outputs=seeds, allow_unused=True)

    def _forward_flat(self, data: Dict[str, Tensor], all_pairs: bool = False) -> Dict[str, Tensor]:
        mol_idx, n_mol = self._validate_flat(data)
        dtype = self.model.backbone.embedding.weight.dtype
        coord = data[Key.COORD.value].detach()
        if coord.dtype != dtype and Key.NBMAT.value not in data:
            # as in the dense layout: per-molecule centroids to the origin before the float32 cast
            # (a uniform shift of each molecule, or of the one periodic system, changes no pair vector)
            sums = torch.zeros(n_mol, 3, dtype=coord.dtype, device=coord.device).index_add_(0, mol_idx, coord)
            counts = torch.bincount(mol_idx, minlength=n_mol).to(coord.dtype).unsqueeze(-1)
            coord = coord - (sums / counts)[mol_idx]
        coord = coord.to(dtype)
        device = coord.device
        n = coord.shape[0]
        numbers = data[Key.NUMBERS.value].to(torch.long)
        charge = self._per_molecule(data, Key.CHARGE.value, n_mol, 0.0, dtype, device)
        mult = self._per_molecule(data, Key.MULT.value, n_mol, 1.0, dtype, device)
        if Key.MULT.value in data:
            self._check_mult(mult)
        cell, pbc, periodic = self._periodicity(data, n_mol, dtype, device)
        volume = 0.0
        if periodic:
            volume = abs(float(torch.linalg.det(cell.to(torch.float64))))
        lr_cut, what = self._long_range_cutoff(n, volume, periodic, all_pairs)
        if Key.NBMAT.value in data:
            lists = self._given_lists(data, n, lr_cut != 0.0)
        else:
            lists = self._lists(coord, cell, pbc, periodic, mol_idx, n_mol, 0.0, all_pairs)

        hand = self._forces_by_hand(Key.PAIRS_LR.value in lists, periodic)
        grad_was_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(not hand)
        leaves = [coord]
        pos = coord
        cell_s = cell
        if not hand:
            coord.requires_grad_(True)
        if periodic and not hand:
            # strain derivative: positions and cell deformed by (I + ε); σ = (1/V) ∂E/∂ε at ε = 0
            strain = torch.zeros(3, 3, dtype=dtype, device=device)
            strain.requires_grad_(True)
            leaves.append(strain)
            pos = coord + coord @ strain
            cell_s = cell + cell @ strain
        zero_i = torch.zeros(1, dtype=torch.long, device=device)
        numbers_a = torch.cat([numbers, zero_i])
        inp: Dict[str, Tensor] = {
            Key.COORD.value: torch.cat([pos, torch.zeros(1, 3, dtype=dtype, device=device)]),
            Key.NUMBERS.value: numbers_a,
            Key.MOL_IDX.value: torch.cat([mol_idx, mol_idx[-1:]]),
            Key.CHARGE.value: charge,
            Key.MULT.value: mult,
            Key.NBMAT.value: lists[Key.NBMAT.value],
            Key.SHIFTS.value: lists[Key.CELL_SHIFTS.value].to(dtype) @ cell_s,
        }
        lr_key = Key.NBMAT.value
        if Key.PAIRS_LR.value in lists:
            inp[Key.PAIRS_LR.value] = lists[Key.PAIRS_LR.value]
            inp[Key.SHIFTS_LR.value] = lists[Key.CELL_SHIFTS_LR.value].to(dtype) @ cell_s
            lr_key = Key.PAIRS_LR.value
        if periodic:
            inp[Key.CELL.value] = cell_s
        # isolated molecules with every pair listed: D3 sums them all, without its cutoff switch,
        # exactly as the dense layout does
        all_lr = lr_cut < 0.0 and not periodic
        out = self.model(inp, hand)
        energy = out[Key.ENERGY.value] + nbops.mol_sum(self.sae[numbers_a], out)
        e_disp = torch.zeros(n_mol, dtype=torch.float64, device=device)
        term_energies: Dict[str, Tensor] = {}
        g_lr: Optional[Tensor] = None  # dE/dd of the long-range pairs (energy terms, Coulomb), by hand
        for term in self.terms:
            if lr_key == Key.PAIRS_LR.value:
                d_lr = out[Key.D_IJ_LR.value]
                e_t = torch.zeros(n_mol, dtype=torch.float64, device=device)
                by_hand = False
                if hasattr(term, "energy_and_distance_grad"):
                    if self.model.manual_forces:
                        # the term's hand-written dE/dd, applied below with the others'
                        with torch.no_grad():
                            e_t, g_t = term.energy_and_distance_grad(numbers_a, d_lr, out, Key.PAIRS_LR.value, all_lr)
                        g_lr = g_t if g_lr is None else g_lr + g_t
                        by_hand = True
                if not by_hand and hand:
                    # no hand-written gradient: dE/dd of this term alone by a local autograd call, so
                    # that the network and the other terms keep their hand-written path
                    torch.set_grad_enabled(True)
                    d_leaf = d_lr.detach().requires_grad_(True)
                    e_t = term(numbers_a, d_leaf, out[Key.PAIR_MASK_LR.value], out, Key.PAIRS_LR.value, all_lr)
                    g_auto = torch.autograd.grad([e_t.sum()], [d_leaf], allow_unused=True)[0]
                    torch.set_grad_enabled(False)
                    e_t = e_t.detach()
                    if g_auto is not None:
                        g_lr = g_auto if g_lr is None else g_lr + g_auto
                elif not by_hand:
                    e_t = term(numbers_a, d_lr, out[Key.PAIR_MASK_LR.value], out, Key.PAIRS_LR.value, all_lr)
            else:
                e_t = term(numbers_a, out[Key.D_IJ.value], out[Key.PAIR_MASK.value], out, Key.NBMAT.value, all_lr)
            if term.is_dispersion:
                e_disp = e_disp + e_t
            else:
                key = term.name + "_energy"
                term_energies[key] = e_t if key not in term_energies else term_energies[key] + e_t
            energy = energy + e_t
        if Key.VJP_LR_DISTANCE_GRAD.value in out:  # the Coulomb term's hand-written dE/dd (see the model)
            g_coul = out[Key.VJP_LR_DISTANCE_GRAD.value]
            g_lr = g_coul if g_lr is None else g_lr + g_coul
        if hand:
            if Key.VJP_DISTANCE_GRAD.value not in out:
                raise RuntimeError("internal: the model did not take its hand-written gradient path")
            g_x, virial = flat_geometry_vjp(out, out[Key.VJP_DISTANCE_GRAD.value],
                                            out[Key.VJP_DIRECTION_GRAD.value], g_lr, periodic)
            grads: List[Optional[Tensor]] = [g_x[:n], virial]
        else:
            grads = self._autograd_forces(energy, out, g_lr, leaves)
        torch.set_grad_enabled(grad_was_enabled)
        if float(min_real_distance(out[Key.D_IJ.value].detach(), out[Key.PAIR_MASK.value])) < self.min_distance:
            raise ValueError("two atoms are closer than {} Å (coincident atoms, or an atom and its periodic "
                             "image): check the coordinates and the cell".format(self.min_distance))
        forces = grads[0]
        if forces is None:
            forces = torch.zeros_like(coord)
        result: Dict[str, Tensor] = {
            Key.ENERGY.value: energy.detach(),
            Key.FORCES.value: -forces.detach(),
            Key.DISPERSION_ENERGY.value: e_disp.detach(),
        }
        for key, value in term_energies.items():
            result[key] = value.detach()
        if self.report_charges:
            result[Key.CHARGES.value] = out[Key.CHARGES.value][:n].detach()
        if self.report_spin_charges:
            result[Key.SPIN_CHARGES.value] = out[Key.SPIN_CHARGES.value][:n].detach()
        if periodic and volume > 1e-9:
            g = grads[1]
            if g is None:
                g = torch.zeros(3, 3, dtype=dtype, device=device)
            result[Key.STRESS.value] = g.detach() / volume
        return result
