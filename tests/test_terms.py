"""The energy-term battery (docs/adding-a-term.md): every registered term — D3(BJ), the toy
screened repulsion of ``toy_term.py`` (hand-written gradient) and the same term without one
(autograd) — checked against an independent reference: energy against a direct sum, forces
against finite differences, hand gradient against autograd (float64), dense = flat, TorchScript
export, periodic translation invariance."""

import numpy as np
import pytest
import torch
import toy_term  # noqa: F401  (registers the toy terms, as a user's module would)
from helpers import padded_batch, small_checkpoint
from molecules import get as get_molecule

from aimnet2mult.dispersion_params import d3bj_parameters
from aimnet2mult.export import build_potential, export_potential, load_potential
from aimnet2mult.nn.terms import build_term, registered_terms
from aimnet2mult.tools.water import water_cell

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TERMS = {"toy": {"method": "toy_repulsion"},
         "toy_autograd": {"method": "toy_repulsion_autograd"},
         "d3bj": dict(d3bj_parameters("wb97m"), method="d3bj")}
KEY = {"toy": "toy_repulsion_energy", "toy_autograd": "toy_repulsion_energy", "d3bj": "dispersion_energy"}


@pytest.fixture(scope="module")
def ckpt():
    return small_checkpoint(1, seed=3)[0]


def _pot(ckpt, term, coulomb="simple", dtype=torch.float64):
    pot = build_potential(ckpt, 0, coulomb=coulomb, terms=[TERMS[term]])
    return pot.double() if dtype == torch.float64 else pot


def _flat(name, dtype=torch.float64):
    atoms, q = get_molecule(name)
    return {"coord": torch.tensor(atoms.positions, dtype=dtype), "numbers": torch.tensor(atoms.numbers),
            "charge": torch.tensor([float(q)], dtype=dtype)}


def test_registry_and_errors():
    assert {"d3bj", "toy_repulsion", "toy_repulsion_autograd"} <= set(registered_terms())
    with pytest.raises(ValueError, match="unknown energy term 'nope'"):
        build_term({"method": "nope"})
    with pytest.raises(ValueError, match="'method' key"):
        build_term({"a": 1.0})


def test_toy_energy_equals_a_direct_sum(ckpt):
    pot = _pot(ckpt, "toy")
    inp = _flat("CH3CH2OH")
    out = pot(dict(inp))
    x, z = inp["coord"].numpy(), inp["numbers"].numpy().astype(float)
    term = build_term(TERMS["toy"])
    e = 0.0
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            r = np.linalg.norm(x[i] - x[j])  # isolated molecule: every pair, no switch
            e += term.a * z[i] * z[j] / r * np.exp(-r / term.screen)
    assert float(out["toy_repulsion_energy"][0]) == pytest.approx(e, rel=1e-12)
    base = build_potential(ckpt, 0).double()(dict(inp))
    assert float(out["energy"][0] - base["energy"][0]) == pytest.approx(e, rel=1e-9)


@pytest.mark.parametrize("term", list(TERMS))
def test_forces_equal_finite_differences(ckpt, term):
    pot = _pot(ckpt, term, coulomb="dsf")
    atoms, _ = get_molecule("CH3CH2OH")
    cell = torch.eye(3, dtype=torch.float64) * 7.0  # periodic: the switched flat pair list
    inp = {"coord": torch.tensor(atoms.positions, dtype=torch.float64) + 2.0, "numbers": torch.tensor(atoms.numbers),
           "cell": cell}
    forces = pot(dict(inp))["forces"]
    h = 1e-5
    for atom, axis in [(0, 0), (2, 1), (5, 2), (8, 0)]:
        plus, minus = inp["coord"].clone(), inp["coord"].clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        fd = -(pot(dict(inp, coord=plus))["energy"] - pot(dict(inp, coord=minus))["energy"]) / (2 * h)
        assert float(forces[atom, axis]) == pytest.approx(float(fd[0]), abs=1e-6), (term, atom, axis)


@pytest.mark.parametrize("term", list(TERMS))
@pytest.mark.parametrize("periodic", [False, True])
def test_hand_gradient_equals_autograd(ckpt, term, periodic):
    pot = _pot(ckpt, term, coulomb="dsf")
    inp = _flat("CH3CH2OH")
    if periodic:
        inp = {"coord": inp["coord"] + 2.0, "numbers": inp["numbers"], "cell": torch.eye(3, dtype=torch.float64) * 7.0}
    pot.set_manual_forces(True)
    manual = pot(dict(inp))
    pot.set_manual_forces(False)
    reference = pot(dict(inp))
    for key in ("energy", "forces", KEY[term]):
        assert (manual[key] - reference[key]).abs().max().item() < 1e-9, (term, key)
    if periodic:
        assert (manual["stress"] - reference["stress"]).abs().max().item() < 1e-9


@pytest.mark.parametrize("term", list(TERMS))
def test_dense_equals_flat(ckpt, term):
    pot = _pot(ckpt, term)
    flats = [_flat(n) for n in ["CH3CH2OH", "H2O", "CH3Cl"]]
    batch = padded_batch(flats)
    n_max = batch["numbers"].shape[1]
    dense = pot(batch)
    for b, f in enumerate(flats):
        alone = pot(dict(f))
        n = len(f["numbers"])
        assert float(dense[KEY[term]][b]) == pytest.approx(float(alone[KEY[term]][0]), abs=1e-10)
        assert float(dense["energy"][b]) == pytest.approx(float(alone["energy"][0]), abs=1e-8)
        assert torch.allclose(dense["forces"][b, :n], alone["forces"], atol=1e-8)
        if n < n_max:
            assert float(dense["forces"][b, n:].abs().max()) == 0.0  # padding


@pytest.mark.parametrize("term", list(TERMS))
def test_torchscript_export(ckpt, term, tmp_path):
    path = export_potential(ckpt, 0, tmp_path / f"{term}.jpt", terms=[TERMS[term]])
    loaded, meta = load_potential(path)
    inp = _flat("CH3CH2OH", torch.float32)
    eager = build_potential(ckpt, 0, terms=[TERMS[term]])(dict(inp))
    scripted = loaded(dict(inp))
    assert float((scripted["energy"] - eager["energy"]).abs().max()) < 1e-6
    assert float((scripted["forces"] - eager["forces"]).abs().max()) < 1e-5
    assert float((scripted[KEY[term]] - eager[KEY[term]]).abs().max()) < 1e-6
    assert [t["method"] for t in meta["energy_terms"]] == [TERMS[term]["method"]]
    assert meta["energy_terms"][0]["hand_written_gradient"] == (term != "toy_autograd")


@pytest.mark.parametrize("term", list(TERMS))
def test_periodic_translation_invariance(ckpt, term):
    pot = _pot(ckpt, term, coulomb="dsf")
    atoms = water_cell(2, seed=1)
    cell = torch.tensor(np.asarray(atoms.cell), dtype=torch.float64)
    coord = torch.tensor(atoms.positions, dtype=torch.float64)
    inp = {"coord": coord, "numbers": torch.tensor(atoms.numbers), "cell": cell}
    ref = pot(dict(inp))
    shift = torch.tensor([0.37, -1.21, 2.9], dtype=torch.float64)
    frac = torch.linalg.solve(cell.T, (coord + shift).T).T
    wrapped = (frac - torch.floor(frac)) @ cell  # translated, then every atom wrapped into the cell
    moved = pot(dict(inp, coord=wrapped))
    assert float(moved[KEY[term]][0]) == pytest.approx(float(ref[KEY[term]][0]), abs=1e-9)
    assert float(moved["energy"][0]) == pytest.approx(float(ref["energy"][0]), abs=1e-8)
    assert torch.allclose(moved["forces"], ref["forces"], atol=1e-8)
