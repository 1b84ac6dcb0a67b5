"""Scale (issue 4): flat neighbour-list layout, pure-torch cell lists, periodic systems, DSF and
Ewald Coulomb, stress, a 12k-atom water box, bad periodic input, and exported files.

References are independent of the code under test: the dense all-pairs layout, the vesin
library's neighbour lists, finite differences, the textbook rock-salt Madelung constant.
"""

import json
import subprocess
import sys

import molecules
import numpy as np
import pytest
import torch
from helpers import small_checkpoint

from aimnet2mult.export import build_potential, export_potential, load_potential, read_metadata
from aimnet2mult.nn.coulomb import DSFCoulomb, EwaldCoulomb
from aimnet2mult.nn.geometry import long_range_geometry
from aimnet2mult.nn.neighbors import TorchCellList, cell_list_pairs
from aimnet2mult.nn.neighbors_vesin import same_molecule, vesin_pairs
from aimnet2mult.tools.water import water_box, water_cell
from aimnet2mult.units import COULOMB_CONSTANT

D3 = {"method": "d3bj", "functional": "wb97m"}
DEFAULT_ARCH = dict(passes=[[512, 380], [512, 380], [512, 380, 380]], aim_size=256, energy_head=[128, 128])
MADELUNG_NACL = 1.747565


@pytest.fixture(scope="module")
def ckpt():
    return small_checkpoint(1, dispersion=D3)[0]


@pytest.fixture(scope="module")
def pots(ckpt):
    """In-memory float32 potentials by Coulomb method."""
    return {m: build_potential(ckpt, 0, coulomb=m) for m in ("simple", "dsf", "ewald")}


@pytest.fixture(scope="module")
def pots64(ckpt):
    """The same potentials in float64 (for finite-difference checks of the math)."""
    return {m: build_potential(ckpt, 0, coulomb=m).double() for m in ("dsf", "ewald")}


@pytest.fixture(scope="module")
def official(wb97m_file):
    from aimnet2mult.import_official import official_member_checkpoint

    return official_member_checkpoint(wb97m_file, 0)


# ------------------------------------------------------------------------------------ helpers
def dense_input(names, dtype=torch.float32):
    coord, numbers, charge = molecules.batch(names)
    return {"coord": torch.tensor(coord, dtype=dtype), "numbers": torch.tensor(numbers),
            "charge": torch.tensor(charge, dtype=dtype)}


def flat_from_dense(inp):
    real = inp["numbers"] != 0
    mol = torch.arange(real.shape[0]).unsqueeze(1).expand_as(real)[real]
    return {"coord": inp["coord"][real], "numbers": inp["numbers"][real], "charge": inp["charge"],
            "mol_idx": mol}, real


def compare_layouts(pot, names, e_tol=1e-5, f_tol=1e-5, q_tol=1e-5):
    dense_in = dense_input(names)
    flat_in, real = flat_from_dense(dense_in)
    dense = pot(dict(dense_in))
    flat = pot(dict(flat_in))
    de = (dense["energy"] - flat["energy"]).abs().max().item()
    df = (dense["forces"][real] - flat["forces"]).abs().max().item()
    dq = (dense["charges"][real] - flat["charges"]).abs().max().item()
    assert flat["energy"].shape == (len(names),) and flat["energy"].dtype == torch.float64
    assert de < e_tol, f"{names}: energy dense vs flat {de:.2e} eV"
    assert df < f_tol, f"{names}: forces dense vs flat {df:.2e} eV/Å"
    assert dq < q_tol, f"{names}: charges dense vs flat {dq:.2e} e"
    dd = (dense["dispersion_energy"] - flat["dispersion_energy"]).abs().max().item()
    assert dd < 1e-6


def periodic_input(atoms, dtype=torch.float32):
    return {"coord": torch.tensor(atoms.positions, dtype=dtype), "numbers": torch.tensor(atoms.numbers),
            "cell": torch.tensor(np.array(atoms.cell), dtype=dtype)}


def sheared_water(n_side=3, seed=0):
    """A water cell with a triclinic (sheared) cell holding the same periodic system."""
    atoms = water_cell(n_side, seed)
    cell = np.array(atoms.cell)
    new = cell.copy()
    new[1] = cell[1] + cell[0]  # same lattice, skewed basis
    new[2] = cell[2] - cell[0] + cell[1]
    atoms.set_cell(new, scale_atoms=False)
    return atoms


def canonical(i, j, s, full):
    out = set()
    for a, b, c in zip(i.tolist(), j.tolist(), [tuple(x) for x in s.tolist()]):
        if not full and (a > b or (a == b and tuple(-x for x in c) > c)):
            a, b, c = b, a, tuple(-x for x in c)
        out.add((a, b, c))
    assert len(out) == len(i), "duplicate pairs"
    return out


def lists_to_sets(lists, n):
    nbmat, sh = lists["nbmat"], lists["cell_shifts"]
    rows, cols = torch.nonzero(nbmat[:n] != n, as_tuple=True)
    sr = canonical(rows, nbmat[rows, cols], sh[rows, cols], True)
    lr = canonical(lists["pairs_lr"][0], lists["pairs_lr"][1], lists["cell_shifts_lr"], False)
    return sr, lr


# ------------------------------------------------------------------------------------ dense vs flat
def test_dense_and_flat_layouts_agree_small_model(pots):
    compare_layouts(pots["simple"], ["CH3CH2OH", "OH-", "C6H6", "CH3Cl", "NH4+"])
    compare_layouts(pots["simple"], ["CH3COOH"])
    compare_layouts(pots["dsf"], ["CH3CH2OH", "OH-", "H2O"])


def test_dense_and_flat_layouts_agree_open_shell():
    ckpt, _ = small_checkpoint(1, dispersion=D3, num_charge_channels=2)
    pot = build_potential(ckpt, 0)
    dense_in = dense_input(["CH3CH2OH", "OH-", "CH4"])
    dense_in["mult"] = torch.tensor([1.0, 3.0, 2.0])
    flat_in, real = flat_from_dense(dense_in)
    flat_in["mult"] = dense_in["mult"]
    d, f = pot(dict(dense_in)), pot(dict(flat_in))
    assert (d["energy"] - f["energy"]).abs().max() < 1e-5
    assert (d["forces"][real] - f["forces"]).abs().max() < 1e-5
    assert (d["spin_charges"][real] - f["spin_charges"]).abs().max() < 1e-5


def test_dense_and_flat_layouts_agree_official_parity_molecules(official, tmp_path):
    pot = build_potential(official, 0)
    for name in molecules.PARITY_SET[:4]:
        compare_layouts(pot, [name])
    compare_layouts(pot, molecules.PARITY_SET)  # padded batch of all 13 vs 13 molecules flat
    jpt, meta = load_potential(export_potential(official, 0, tmp_path / "official"))
    assert meta["requires_extensions"] == [] and meta["neighbor_list"]["library"] == "torch"
    compare_layouts(jpt, molecules.PARITY_SET)


# ------------------------------------------------------------------------------------ cell list
def test_cell_list_matches_vesin():
    builder = torch.jit.script(TorchCellList(all_pairs_max_atoms=0))  # the cell list, also when isolated
    small_all_pairs = torch.jit.script(TorchCellList())  # isolated systems here (< 40 atoms): all pairs
    chunked = torch.jit.script(TorchCellList(bins_per_cutoff=2, max_candidates=64, all_pairs_max_atoms=0))
    fine = TorchCellList(bins_per_cutoff=3, max_candidates=1000, all_pairs_max_atoms=0)
    g = torch.Generator().manual_seed(0)
    kinds = ["cubic", "triclinic", "small", "partial", "isolated", "molecules"]
    n_checked = 0
    for trial in range(36):
        kind = kinds[trial % len(kinds)]
        n = int(torch.randint(1, 40, (1,), generator=g))
        size = 3.0 + 9.0 * torch.rand(3, generator=g, dtype=torch.float64)
        if kind == "small":
            size = 1.2 + 2.0 * torch.rand(3, generator=g, dtype=torch.float64)  # much narrower than the cutoff
        cell = torch.diag(size)
        if kind in ("triclinic", "small", "partial"):
            cell = cell + (torch.rand(3, 3, generator=g, dtype=torch.float64) - 0.5) * 0.8 * size.min()
        pbc = torch.ones(3, dtype=torch.bool)
        if kind == "partial":
            pbc = torch.tensor([[True, False, True], [False, True, False], [True, True, False]][trial % 3])
        if kind in ("isolated", "molecules"):
            pbc = torch.zeros(3, dtype=torch.bool)
        x = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 3.0 - 1.0) @ cell  # atoms outside the cell too
        mol = torch.zeros(n, dtype=torch.long)
        if kind == "molecules":
            mol = torch.sort(torch.randint(0, 4, (n,), generator=g))[0]
            mol = torch.unique(mol, return_inverse=True)[1]
        cutoff = float(1.0 + 6.0 * torch.rand(1, generator=g))
        for full in (True, False):
            ref = same_molecule(*vesin_pairs(x, cell, pbc, cutoff, full), mol)
            expected = canonical(*ref, full)
            for b in (builder, small_all_pairs, chunked, fine):
                got = b.pairs(x, cell, pbc, mol, cutoff, full)
                assert got[2].dtype == torch.int32
                assert canonical(*got, full) == expected, (trial, kind, full, cutoff)
            n_checked += 1
    assert n_checked == 72


@pytest.mark.parametrize("sizes", [[1], [9], [3, 1, 4]])
def test_all_pairs_half_lists_every_pair_of_each_molecule_once(sizes):
    """The long-range list of isolated molecules: every pair i < j within each molecule, row-major
    (one molecule takes a shortcut; several the general path), against a plain loop."""
    from aimnet2mult.nn.neighbors import all_pairs_half

    mol_idx = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(sizes)])
    pairs, shifts = all_pairs_half(mol_idx, len(sizes))
    expected = [(i, j) for i in range(len(mol_idx)) for j in range(i + 1, len(mol_idx)) if mol_idx[i] == mol_idx[j]]
    assert pairs.tolist() == ([[i for i, _ in expected], [j for _, j in expected]] if expected else [[], []])
    assert shifts.shape == (len(expected), 3) and shifts.dtype == torch.int32 and not shifts.any()


@pytest.mark.parametrize("n_atoms, n_mol", [(1, 1), (2, 1), (9, 1), (40, 3), (120, 2)])
def test_all_pairs_neighbor_matrix_equals_the_pair_list_route(n_atoms, n_mol):
    """Small isolated systems build the short-range matrix straight from the all-pairs mask; it
    must equal the pair list (all_pairs_within) packed by padded_neighbor_matrix, slot for slot."""
    from aimnet2mult.nn.neighbors import all_pairs_neighbor_matrix, all_pairs_within, padded_neighbor_matrix

    gen = torch.Generator().manual_seed(n_atoms)
    x = torch.rand(n_atoms, 3, dtype=torch.float64, generator=gen) * 2.5 * n_atoms ** (1 / 3)
    mol = torch.sort(torch.randint(0, n_mol, (n_atoms,), generator=gen))[0]
    i, j = all_pairs_within(x, mol, 5.0, True)
    nbmat, shifts = padded_neighbor_matrix(i, j, torch.zeros(i.shape[0], 3, dtype=torch.int32), n_atoms)
    direct, direct_shifts = all_pairs_neighbor_matrix(x, mol, 5.0)
    assert torch.equal(direct, nbmat) and torch.equal(direct_shifts, shifts)


def test_atom_paired_with_its_own_images():
    # one atom in a 2 Å cubic cell, 4.5 Å cutoff: its images at 2, 2√2, 2√3, 4 Å ...
    x = torch.zeros(1, 3, dtype=torch.float64)
    cell = 2.0 * torch.eye(3, dtype=torch.float64)
    i, j, s = cell_list_pairs(x, cell, torch.ones(3, dtype=torch.bool), torch.zeros(1, dtype=torch.long), 4.5, False)
    expected = {v for v in __import__("itertools").product(range(-2, 3), repeat=3)
                if 0 < 4.0 * sum(c * c for c in v) < 4.5 ** 2}
    assert len(i) == len(expected) // 2 and bool((i == 0).all() and (j == 0).all())
    got = {tuple(v) for v in s.tolist()} | {tuple(-c for c in v) for v in s.tolist()}
    assert got == expected


def test_potential_lists_torch_equal_vesin(ckpt):
    torch_pot = build_potential(ckpt, 0, coulomb="dsf")
    vesin_pot = build_potential(ckpt, 0, coulomb="dsf", neighbor_list="vesin")
    assert torch_pot.neighbor_list_library() == "torch" and vesin_pot.neighbor_list_library() == "vesin_torch"
    for atoms in (water_cell(3, seed=3), sheared_water(2, seed=4)):
        inp = periodic_input(atoms)
        n = len(atoms)
        a = lists_to_sets(torch_pot.neighbor_lists(inp["coord"], inp["cell"]), n)
        b = lists_to_sets(vesin_pot.neighbor_lists(inp["coord"], inp["cell"]), n)
        assert a == b
        e1, e2 = torch_pot(dict(inp)), vesin_pot(dict(inp))
        assert abs(float(e1["energy"] - e2["energy"])) < 1e-4
        assert (e1["forces"] - e2["forces"]).abs().max() < 1e-4
    # a batch of isolated molecules with a skin (Verlet lists)
    flat, _ = flat_from_dense(dense_input(["CH3CH2OH", "C6H6", "OH-"]))
    a = lists_to_sets(torch_pot.neighbor_lists(flat["coord"], None, None, flat["mol_idx"], 1.0), len(flat["numbers"]))
    b = lists_to_sets(vesin_pot.neighbor_lists(flat["coord"], None, None, flat["mol_idx"], 1.0), len(flat["numbers"]))
    assert a == b


# ------------------------------------------------------------------------------------ periodic physics
@pytest.mark.parametrize("method", ["dsf", "ewald"])
def test_periodic_invariance(pots, method):
    pot = pots[method]
    atoms = sheared_water(3, seed=1)  # 81 atoms, cell narrower than the 15 Å cutoffs
    ref = pot(periodic_input(atoms))
    cell = np.array(atoms.cell)
    rng = np.random.default_rng(0)
    moved = atoms.copy()
    moved.positions += rng.integers(-2, 3, size=(len(atoms), 3)) @ cell  # lattice translations per atom
    wrapped = atoms.copy()
    wrapped.wrap()
    shifted = atoms.copy()
    shifted.positions += np.array([0.37, -1.21, 2.05])  # rigid translation
    for variant in (moved, wrapped, shifted):
        out = pot(periodic_input(variant))
        assert abs(float(out["energy"] - ref["energy"])) < 2e-4
        assert (out["forces"] - ref["forces"]).abs().max() < 2e-4
        assert (out["charges"] - ref["charges"]).abs().max() < 1e-5
        assert (out["stress"] - ref["stress"]).abs().max() < 1e-6


@pytest.mark.parametrize("name", ["CH3CH2OH", "OH-"])
def test_molecule_in_large_box_equals_isolated_dsf(pots, name):
    pot = pots["dsf"]
    atoms, charge = molecules.get(name)
    iso = {"coord": torch.tensor(atoms.positions, dtype=torch.float32), "numbers": torch.tensor(atoms.numbers),
           "charge": torch.tensor(float(charge))}
    ref = pot(dict(iso))
    dense = pot(dense_input([name]))
    assert abs(float(dense["energy"][0] - ref["energy"][0])) < 1e-5
    for cell in (torch.eye(3) * 40.0, torch.tensor([[40.0, 0, 0], [12.0, 38.0, 0], [-7.0, 5.0, 41.0]])):
        out = pot(dict(iso, cell=cell, coord=iso["coord"] + torch.tensor([3.0, 17.0, 29.0])))
        assert abs(float(out["energy"][0] - ref["energy"][0])) < 1e-5
        assert (out["forces"] - ref["forces"]).abs().max() < 1e-5
        assert (out["charges"] - ref["charges"]).abs().max() < 1e-6


def test_neutral_molecule_in_large_box_equals_isolated_ewald(pots64):
    # Ewald without a cell is the isolated sum; a neutral molecule's periodic images interact as
    # dipoles, ~2π μ²/(3V) ≈ 1e-6 eV in a 100 Å box
    pot = pots64["ewald"]
    atoms, _ = molecules.get("CH3CH2OH")
    iso = {"coord": torch.tensor(atoms.positions), "numbers": torch.tensor(atoms.numbers)}
    ref = pot(dict(iso))
    out = pot(dict(iso, cell=torch.eye(3, dtype=torch.float64) * 100.0))
    assert abs(float(out["energy"][0] - ref["energy"][0])) < 1e-5
    assert (out["forces"] - ref["forces"]).abs().max() < 1e-5


@pytest.mark.parametrize("method", ["dsf", "ewald"])
def test_forces_and_stress_equal_finite_differences(pots64, method):
    pot = pots64[method]
    atoms = sheared_water(2, seed=2)  # 24 atoms in a triclinic 6.2 Å cell
    inp = periodic_input(atoms, torch.float64)
    out = pot(dict(inp))
    h = 1e-4

    def energy(coord, cell):
        return float(pot(dict(inp, coord=coord, cell=cell))["energy"].sum())

    for atom, axis in ((0, 0), (1, 2), (5, 1), (23, 0)):
        step = torch.zeros_like(inp["coord"])
        step[atom, axis] = h
        fd = -(energy(inp["coord"] + step, inp["cell"]) - energy(inp["coord"] - step, inp["cell"])) / (2 * h)
        assert abs(fd - float(out["forces"][atom, axis])) < 1e-5, (atom, axis, fd)
    volume = abs(float(torch.linalg.det(inp["cell"])))
    fd_stress = torch.zeros(3, 3, dtype=torch.float64)
    for a in range(3):
        for b in range(3):
            eps = torch.zeros(3, 3, dtype=torch.float64)
            eps[a, b] = h
            plus = energy(inp["coord"] @ (torch.eye(3) + eps), inp["cell"] @ (torch.eye(3) + eps))
            minus = energy(inp["coord"] @ (torch.eye(3) - eps), inp["cell"] @ (torch.eye(3) - eps))
            fd_stress[a, b] = (plus - minus) / (2 * h) / volume
    assert (fd_stress - out["stress"]).abs().max() < 1e-6, (fd_stress, out["stress"])
    assert (fd_stress - fd_stress.T).abs().max() < 1e-6  # rotation invariance


# ------------------------------------------------------------------------------------ Coulomb methods
def point_charge_energy(module, coord, cell, charges, cutoff):
    """Coulomb energy (eV) of fixed point charges in a periodic cell through a Coulomb module."""
    n = coord.shape[0]
    i, j, s = cell_list_pairs(coord, cell, torch.ones(3, dtype=torch.bool), torch.zeros(n, dtype=torch.long),
                              cutoff, False)
    data = {"coord": torch.cat([coord, torch.zeros(1, 3, dtype=coord.dtype)]),
            "numbers": torch.cat([torch.ones(n, dtype=torch.long), torch.zeros(1, dtype=torch.long)]),
            "mol_idx": torch.zeros(n + 1, dtype=torch.long), "charge": torch.zeros(1, dtype=coord.dtype),
            "pairs_lr": torch.stack([i, j]), "shifts_lr": s.to(coord.dtype) @ cell, "cell": cell}
    data = long_range_geometry(data)
    q = torch.cat([charges, torch.zeros(1, dtype=coord.dtype)])
    return float(module(q, data["d_ij_lr"], data["pair_mask_lr"], data, "pairs_lr")[0])


def rock_salt_cells(a=5.64):
    """(name, coord, cell, charges, ion pairs) of the same NaCl crystal in three cells."""
    f64 = torch.float64
    fcc = torch.tensor([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]], dtype=f64)
    conv_coord = torch.cat([fcc, fcc + torch.tensor([0.5, 0, 0], dtype=f64)]) * a
    conv_q = torch.cat([torch.ones(4, dtype=f64), -torch.ones(4, dtype=f64)])
    prim = torch.tensor([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]], dtype=f64) * a  # rhombohedral, 60°
    prim_coord = torch.tensor([[0, 0, 0], [0.5, 0, 0]], dtype=f64) * a
    pm = torch.tensor([1.0, -1.0], dtype=f64)
    skew = prim.clone()
    skew[2] = prim[2] + prim[0] - 2 * prim[1]  # same lattice, a very oblique basis
    return [("cubic", conv_coord, torch.eye(3, dtype=f64) * a, conv_q, 4),
            ("primitive", prim_coord + 0.3, prim, pm, 1),
            ("skewed", prim_coord - 1.1, skew, pm, 1)]


def test_ewald_reproduces_rock_salt_madelung_constant():
    a = 5.64
    r0 = a / 2
    for accuracy in (1e-8, 1e-10):
        ewald = EwaldCoulomb(accuracy=accuracy, subtract_sr=False)
        for name, coord, cell, q, pairs in rock_salt_cells(a):
            params = ewald.parameters_for(coord.shape[0], abs(float(torch.linalg.det(cell))))
            e = point_charge_energy(ewald, coord, cell, q, params[1])
            madelung = -e * r0 / (pairs * COULOMB_CONSTANT)
            assert abs(madelung - MADELUNG_NACL) < 1e-4, (name, accuracy, madelung)
    # the real-space cutoff may be chosen freely: same result
    ewald = EwaldCoulomb(real_cutoff=6.0, subtract_sr=False)
    _, coord, cell, q, pairs = rock_salt_cells(a)[1]
    e = point_charge_energy(ewald, coord, cell, q, 6.0)
    assert abs(-e * r0 / (pairs * COULOMB_CONSTANT) - MADELUNG_NACL) < 1e-4




def test_dsf_approaches_ewald_as_cutoff_grows():
    a = 5.64
    rng = np.random.default_rng(1)
    _, coord, cell, q, _ = rock_salt_cells(a)[0]
    # a 2x2x2 supercell with displaced ions (not a perfect crystal)
    shifts = torch.tensor(list(__import__("itertools").product(range(2), repeat=3)), dtype=torch.float64) * a
    coord = (coord.unsqueeze(0) + shifts.unsqueeze(1)).reshape(-1, 3) + torch.tensor(rng.normal(0, 0.15, (64, 3)))
    q = q.repeat(8)
    cell = cell * 2
    ewald = EwaldCoulomb(accuracy=1e-10, subtract_sr=False)
    params = ewald.parameters_for(64, abs(float(torch.linalg.det(cell))))
    e_ewald = point_charge_energy(ewald, coord, cell, q, params[1])
    errors = []
    for rc in (6.0, 9.0, 12.0, 18.0, 24.0):
        dsf = DSFCoulomb(alpha=0.2, cutoff=rc, subtract_sr=False)
        errors.append(abs(point_charge_energy(dsf, coord, cell, q, rc) - e_ewald) / abs(e_ewald))
    # DSF with a fixed damping alpha tends to the real-space Ewald sum, not the full one: the error
    # falls fast up to ~12 A and then levels off at the (small) reciprocal-space part
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[0] > 0.01 and max(errors[2:]) < 1e-3, errors


# ------------------------------------------------------------------------------------ large system
def test_water_box_12k_atoms_energy_and_forces_cpu():
    import resource

    ckpt, _ = small_checkpoint(1, dispersion=D3, **DEFAULT_ARCH)
    pot = build_potential(ckpt, 0, coulomb="dsf")
    atoms = water_box(12000)
    assert 11500 < len(atoms) < 12500
    inp = periodic_input(atoms)
    out = pot(inp)
    n = len(atoms)
    assert out["energy"].shape == (1,) and bool(torch.isfinite(out["energy"]).all())
    assert out["forces"].shape == (n, 3) and bool(torch.isfinite(out["forces"]).all())
    assert out["stress"].shape == (3, 3)
    # momentum conservation: the forces of a periodic system sum to zero
    assert float(out["forces"].double().sum(0).abs().max()) < 1e-2
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    assert peak_gb < 12.0, f"peak memory {peak_gb:.1f} GB"


# ------------------------------------------------------------------------------------ bad input
def test_bad_periodic_input_gives_clear_errors(pots):
    pot = pots["dsf"]
    inp = periodic_input(water_cell(2))
    singular = inp["cell"].clone()
    singular[2] = singular[0] + singular[1]
    with pytest.raises(ValueError, match=r"'cell' is singular \(volume 0(\.0)? Å³\): "
                                         r"its periodic lattice vectors are zero "
                                         r"or linearly dependent"):
        pot(dict(inp, cell=singular))
    with pytest.raises(ValueError, match="'cell' is singular"):
        pot(dict(inp, cell=torch.zeros(3, 3)))
    nan = inp["coord"].clone()
    nan[3, 1] = float("nan")
    with pytest.raises(ValueError, match="'coord' contains NaN or infinite values"):
        pot(dict(inp, coord=nan))
    with pytest.raises(ValueError, match="'cell' contains NaN"):
        pot(dict(inp, cell=inp["cell"] * float("nan")))
    tiny = {"coord": torch.zeros(1, 3), "numbers": torch.tensor([8]), "cell": torch.eye(3) * 0.5}
    with pytest.raises(ValueError, match=r"periodic cell too small for Coulomb method 'dsf': the width along "
                                         r"lattice vector [0-2] is 0\.5(00)? Å, so its 15\.0(0)? Å cutoff reaches more "
                                         r"than 50000 periodic images; use a larger \(super\)cell"):
        pot(tiny)
    with pytest.raises(ValueError, match="an atom and its periodic image"):
        pot({"coord": torch.zeros(1, 3), "numbers": torch.tensor([8]), "cell": torch.eye(3) * 0.05,
             "pbc": torch.tensor([True, False, False])})
    with pytest.raises(ValueError, match="Coulomb method 'simple' .* cannot be used for a periodic system"):
        pots["simple"](dict(inp))
    with pytest.raises(ValueError, match=r"'ewald' needs a cell periodic in all three directions, got "
                                         r"pbc = \[True, True, False\]"):
        pots["ewald"](dict(inp, pbc=torch.tensor([True, True, False])))
    with pytest.raises(ValueError, match=r"'pbc' marks a periodic direction but no 'cell'"):
        pot({"coord": inp["coord"], "numbers": inp["numbers"], "pbc": torch.tensor([True, True, True])})


# ------------------------------------------------------------------------------------ exported files
def test_default_export_loads_with_plain_torch_and_runs_flat_and_periodic(ckpt, tmp_path, pots):
    jpt = export_potential(ckpt, 0, tmp_path / "m", coulomb="dsf")
    meta = read_metadata(jpt)
    assert meta["requires_extensions"] == [] and meta["neighbor_list"]["library"] == "torch"
    atoms = sheared_water(2, seed=5)
    ref_p = pots["dsf"](periodic_input(atoms))
    ref_d = pots["dsf"](dense_input(["CH3CH2OH", "OH-"]))
    code = f"""
import sys, json, torch
m = torch.jit.load({str(jpt)!r})
d = m({{'coord': torch.tensor({molecules.batch(["CH3CH2OH", "OH-"])[0].tolist()!r}),
        'numbers': torch.tensor({molecules.batch(["CH3CH2OH", "OH-"])[1].tolist()!r}),
        'charge': torch.tensor([0.0, -1.0])}})
p = m({{'coord': torch.tensor({atoms.positions.tolist()!r}, dtype=torch.float32),
        'numbers': torch.tensor({atoms.numbers.tolist()!r}),
        'cell': torch.tensor({np.array(atoms.cell).tolist()!r}, dtype=torch.float32),
        'pbc': torch.tensor([True, True, True])}})
lists = m.neighbor_lists(torch.tensor({atoms.positions.tolist()!r}, dtype=torch.float32),
                         torch.tensor({np.array(atoms.cell).tolist()!r}, dtype=torch.float32), None, None, 0.5)
print(json.dumps({{'dense': d['energy'].tolist(), 'periodic': p['energy'].tolist(),
                   'forces': p['forces'].tolist(), 'stress': p['stress'].tolist(),
                   'library': m.neighbor_list_library(), 'lists': sorted(lists.keys()),
                   'modules': sorted(k for k in sys.modules if k.startswith(('vesin', 'aimnet2mult')))}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["modules"] == [] and got["library"] == "torch"
    assert got["lists"] == ["cell_shifts", "cell_shifts_lr", "nbmat", "pairs_lr"]
    assert np.allclose(got["dense"], ref_d["energy"].numpy(), atol=1e-5, rtol=0)
    assert abs(got["periodic"][0] - float(ref_p["energy"][0])) < 1e-4
    assert np.abs(np.array(got["forces"]) - ref_p["forces"].numpy()).max() < 1e-4
    assert np.abs(np.array(got["stress"]) - ref_p["stress"].numpy()).max() < 1e-6


def test_vesin_export_records_extension_and_loads(ckpt, tmp_path, pots):
    from aimnet2mult.cli import main

    prefix = tmp_path / "v"
    from aimnet2mult.checkpoint import save_checkpoint

    save_checkpoint(ckpt, tmp_path / "ck.pt")
    assert main(["compile", "--weights", str(tmp_path / "ck.pt"), "--output", str(prefix), "--fidelity-level", "0",
                 "--neighbor-list", "vesin"]) == 0
    meta = read_metadata(tmp_path / "v_fid0.jpt")
    assert meta["requires_extensions"] == ["vesin_torch"] and meta["neighbor_list"]["library"] == "vesin_torch"
    pot, meta = load_potential(tmp_path / "v_fid0.jpt")
    assert pot.neighbor_list_library() == "vesin_torch"
    pot.set_coulomb("dsf")
    atoms = water_cell(2, seed=6)
    out = pot(periodic_input(atoms))
    ref = pots["dsf"](periodic_input(atoms))
    assert abs(float(out["energy"][0] - ref["energy"][0])) < 1e-4
    assert (out["forces"] - ref["forces"]).abs().max() < 1e-4
    assert main(["compile", "--weights", str(tmp_path / "ck.pt"), "--output", str(tmp_path / "t.jpt"),
                 "--fidelity-level", "0"]) == 0
    assert read_metadata(tmp_path / "t.jpt")["requires_extensions"] == []


# ------------------------------------------------------------------------------------ Verlet skin
def test_verlet_skin_reuses_lists_and_matches_fresh_lists(pots):
    """A random walk of a periodic water cell: with a 1 Å skin the cached lists give the same
    energy and forces as fresh lists at every step, are rebuilt only after an atom moved more than
    half the skin, and are rebuilt at once when the cell changes."""
    from aimnet2mult.nn.neighbors import VerletNeighborList

    pot = pots["dsf"]
    atoms = water_cell(2, seed=5)
    inp = periodic_input(atoms)
    nl = VerletNeighborList(pot, skin=1.0)
    rng = np.random.default_rng(0)
    coord = inp["coord"].clone()
    start = coord.clone()
    builds = []
    for step in range(12):
        data = dict(inp, coord=coord)
        before = nl.builds
        cached = pot(nl.update(data))
        fresh = pot(dict(data))
        assert abs(float(cached["energy"] - fresh["energy"])) < 1e-5
        assert float((cached["forces"] - fresh["forces"]).abs().max()) < 1e-5
        moved = float((coord - start).double().norm(dim=-1).max())
        if nl.builds > before:
            assert step == 0 or moved > 0.5, f"rebuilt although no atom moved more than skin / 2 ({moved:.2f} Å)"
            start = coord.clone()
        else:
            assert moved <= 0.5, f"lists reused after an atom moved {moved:.2f} Å (> skin / 2)"
        builds.append(nl.builds)
        coord = coord + torch.tensor(rng.normal(0.0, 0.1, coord.shape), dtype=coord.dtype)
    assert 1 < nl.builds < 12, builds
    strained = dict(inp, coord=coord, cell=inp["cell"] * 1.01)
    n_before = nl.builds
    out = pot(nl.update(strained))
    assert nl.builds == n_before + 1
    assert abs(float(out["energy"] - pot(dict(strained))["energy"])) < 1e-5
    with pytest.raises(ValueError, match="skin must be >= 0"):
        VerletNeighborList(pot, skin=-1.0)


def test_compile_bakes_in_the_coulomb_method(ckpt, tmp_path, pots):
    from aimnet2mult.checkpoint import save_checkpoint
    from aimnet2mult.cli import main

    save_checkpoint(ckpt, tmp_path / "ck.pt")
    base = ["compile", "--weights", str(tmp_path / "ck.pt"), "--fidelity-level", "0"]
    assert main(base + ["--output", str(tmp_path / "e.jpt"), "--coulomb", "ewald", "--ewald-accuracy", "1e-7"]) == 0
    meta = read_metadata(tmp_path / "e.jpt")
    assert meta["coulomb"]["method"] == "ewald" and meta["coulomb"]["ewald_accuracy"] == 1e-7
    pot, _ = load_potential(tmp_path / "e.jpt")
    atoms = water_cell(2, seed=7)
    ref = build_potential(ckpt, 0, coulomb={"method": "ewald", "ewald_accuracy": 1e-7})(periodic_input(atoms))
    out = pot(periodic_input(atoms))
    assert abs(float(out["energy"][0] - ref["energy"][0])) < 1e-4
    assert abs(float(out["energy"][0] - pots["dsf"](periodic_input(atoms))["energy"][0])) > 1e-6
    assert main(base + ["--output", str(tmp_path / "bad.jpt"), "--coulomb", "dsf", "--ewald-accuracy", "1e-7"]) == 2
    assert main(base + ["--output", str(tmp_path / "bad.jpt"), "--dsf-rc", "12"]) == 2
    assert not (tmp_path / "bad.jpt").exists()


def test_seed_lrcoulomb_block_in_model_yaml(tmp_path):
    """The original description's model.yaml ``lrcoulomb`` block selects the Coulomb method."""
    from aimnet2mult.model_config import ConfigError, model_config

    for method, extra, expected in (("simple", "    rc: 4.6\n", {"method": "simple", "rc": 4.6}),
                                    ("dsf", "    dsf_alpha: 0.25\n    dsf_rc: 12.0\n",
                                     {"method": "dsf", "dsf_alpha": 0.25, "dsf_rc": 12.0}),
                                    ("ewald", "", {"method": "ewald"})):
        path = tmp_path / f"{method}.yaml"
        path.write_text("lrcoulomb:\n  class: aimnet2mult.modules.LRCoulomb\n  kwargs:\n    key_in: 'charges'\n"
                        f"    key_out: 'energy'\n    method: '{method}'\n" + extra)
        cfg = model_config(path)
        assert cfg["coulomb"] == expected, (method, cfg["coulomb"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lrcoulomb:\n  class: aimnet2mult.modules.LRCoulomb\n  kwargs:\n    method: 'pme'\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: lrcoulomb.kwargs: 'coulomb.method' must be one of"):
        model_config(bad)
    bad.write_text("lrcoulomb:\n  kwargs:\n    key_in: 'spin_charges'\n")
    with pytest.raises(ConfigError, match=r"'lrcoulomb.kwargs.key_in' must be 'charges', got 'spin_charges'"):
        model_config(bad)
