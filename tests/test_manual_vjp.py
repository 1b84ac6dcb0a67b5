"""Forces by the network's hand-written vector-Jacobian product (issue 8).

Exported potentials evaluate the flat layout's network without autograd and take its gradient by
hand (``MultiFidelityAIMNet2._forward_manual_vjp``). The references are independent of that code:
autograd through the whole network (``set_manual_forces(False)``), in float64 where the two must
agree to rounding, and central finite differences of the energy.
"""

import molecules
import numpy as np
import pytest
import torch
from helpers import small_checkpoint

from aimnet2mult.export import build_potential
from aimnet2mult.tools.water import water_cell

D3 = {"method": "d3bj", "functional": "wb97m"}
KEYS = ("energy", "forces", "charges", "dispersion_energy")


def flat_batch(names, dtype=torch.float64):
    """Several molecules in one flat input (mol_idx), with their total charges."""
    coords, numbers, mol, charges = [], [], [], []
    for k, name in enumerate(names):
        atoms, q = molecules.get(name)
        coords.append(torch.tensor(atoms.positions, dtype=dtype))
        numbers.append(torch.tensor(atoms.numbers))
        mol.append(torch.full((len(atoms),), k, dtype=torch.long))
        charges.append(float(q))
    return {"coord": torch.cat(coords), "numbers": torch.cat(numbers), "mol_idx": torch.cat(mol),
            "charge": torch.tensor(charges, dtype=dtype)}


PRODUCTS = ["dense", "flat"]  # the backbone's shell sums: per-shell dense matrices / flat neighbour products


def use_products(pot, products):
    """Small systems take the dense shell matrices; 0 atoms forces the flat products."""
    pot.model.backbone.dense_products_max_atoms = 10 ** 6 if products == "dense" else 0
    return pot


def both_ways(pot, inp):
    pot.set_manual_forces(True)
    manual = pot(dict(inp))
    pot.set_manual_forces(False)
    reference = pot(dict(inp))
    pot.set_manual_forces(True)
    return manual, reference


def assert_same(manual, reference, keys, tol):
    for key in keys:
        diff = (manual[key] - reference[key]).abs().max().item()
        assert diff < tol, f"{key}: manual VJP vs autograd differ by {diff:.2e}"


@pytest.mark.parametrize("products", PRODUCTS)
@pytest.mark.parametrize("coulomb", ["simple", "dsf", "ewald", "none"])
def test_manual_vjp_equals_autograd_molecules_float64(coulomb, products):
    ckpt, _ = small_checkpoint(1, dispersion=D3)
    pot = use_products(build_potential(ckpt, 0, coulomb=coulomb).double(), products)
    inp = flat_batch(["CH3CH2OH", "NH4+", "OH-", "CH3COOH"])
    manual, reference = both_ways(pot, inp)
    assert_same(manual, reference, KEYS, 1e-9)
    assert reference["forces"].abs().max() > 1e-2  # not trivially zero


@pytest.mark.parametrize("products", PRODUCTS)
def test_manual_vjp_equals_autograd_open_shell_float64(products):
    ckpt, _ = small_checkpoint(1, dispersion=D3, num_charge_channels=2)
    pot = use_products(build_potential(ckpt, 0).double(), products)
    inp = flat_batch(["CH3", "O2", "NH4+"])
    inp["mult"] = torch.tensor([2.0, 3.0, 1.0], dtype=torch.float64)
    manual, reference = both_ways(pot, inp)
    assert_same(manual, reference, KEYS + ("spin_charges",), 1e-9)


@pytest.mark.parametrize("products", PRODUCTS)
@pytest.mark.parametrize("coulomb", ["dsf", "ewald"])
def test_manual_vjp_equals_autograd_periodic_stress_float64(coulomb, products):
    """A small triclinic cell: an atom meets several periodic images of one neighbour, which the
    dense shell matrices add into one entry."""
    ckpt, _ = small_checkpoint(1, dispersion=D3)
    pot = use_products(build_potential(ckpt, 0, coulomb=coulomb).double(), products)
    atoms = water_cell(2, 3)
    cell = np.array(atoms.cell)
    cell[1] += 0.3 * cell[0]  # triclinic
    inp = {"coord": torch.tensor(atoms.positions, dtype=torch.float64), "numbers": torch.tensor(atoms.numbers),
           "cell": torch.tensor(cell, dtype=torch.float64)}
    nbmat = pot.neighbor_lists(inp["coord"], inp["cell"])["nbmat"]
    real = nbmat[:-1]
    repeats = [len(row[row < len(atoms)].tolist()) - len(set(row[row < len(atoms)].tolist())) for row in real]
    assert max(repeats) > 0, "the cell should give an atom several images of one neighbour"
    manual, reference = both_ways(pot, inp)
    assert_same(manual, reference, KEYS + ("stress",), 1e-9)


@pytest.mark.parametrize("products", PRODUCTS)
def test_manual_vjp_forces_equal_finite_differences(products):
    ckpt, _ = small_checkpoint(1, dispersion=D3)
    pot = use_products(build_potential(ckpt, 0).double(), products)
    inp = flat_batch(["CH3CH2OH", "NH4+"])
    forces = pot(dict(inp))["forces"]
    h = 1e-4
    for atom in range(forces.shape[0]):
        for axis in range(3):
            step = torch.zeros_like(inp["coord"])
            step[atom, axis] = h
            plus = pot(dict(inp, coord=inp["coord"] + step))["energy"].sum().item()
            minus = pot(dict(inp, coord=inp["coord"] - step))["energy"].sum().item()
            fd = -(plus - minus) / (2 * h)
            assert abs(fd - forces[atom, axis].item()) < 1e-6, (atom, axis, fd, forces[atom, axis].item())


@pytest.mark.parametrize("products", PRODUCTS)
def test_manual_vjp_official_member_float32(wb97m_file, products):
    """The official member in float32, scripted as it is exported: both ways agree to float32
    rounding of the same arithmetic."""
    from aimnet2mult.import_official import official_member_checkpoint

    pot = torch.jit.script(use_products(build_potential(official_member_checkpoint(wb97m_file, 0), 0), products))
    inp = flat_batch(["CH3CH2OH", "C6H6", "OH-"], torch.float32)
    manual, reference = both_ways(pot, inp)
    assert_same(manual, reference, ("energy",), 1e-4)
    assert_same(manual, reference, ("forces", "charges"), 2e-5)


def test_manual_vjp_survives_torchscript_freezing():
    """openmm-torch freezes the module it is given: the hand-written gradient must not rely on
    anything freezing removes (an ``x - x.detach()`` surrogate lost the network's forces there)."""
    ckpt, _ = small_checkpoint(1, dispersion=D3)
    pot = torch.jit.script(build_potential(ckpt, 0))
    inp = flat_batch(["CH3CH2OH", "NH4+"], torch.float32)
    reference = pot(dict(inp))
    frozen = torch.jit.freeze(pot.eval())
    for _ in range(3):  # the profiling executor optimises after the first calls
        out = frozen(dict(inp))
        assert_same(out, reference, ("energy", "forces"), 1e-5)
