"""DFT-D4 (aimnet2mult.nn.d4) against the dftd4 library (its Python API): energies, forces, EEQ
charges, coordination numbers and C6; the parameter database by functional name; D4 inside
potentials (hand gradient of the network + autograd of D4 = full autograd = finite differences,
dense = flat, TorchScript, periodic refusal); compile / evaluate / training config; ASE, OpenMM
(TorchForce, PythonForce) and ``aimnet2mult md`` running a D4 file."""

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from dftd4.interface import DampingParam, DispersionModel
from helpers import padded_batch, small_checkpoint
from molecules import get as get_molecule

from aimnet2mult.checkpoint import save_checkpoint
from aimnet2mult.dispersion_params import (
    DispersionParameterError,
    available_d4_functionals,
    custom_d4_parameters,
    d3bj_parameters,
    d4_parameters,
)
from aimnet2mult.export import build_potential, export_potential, load_potential, resolve_dispersion
from aimnet2mult.nn.d4 import D4
from aimnet2mult.units import ANGSTROM_TO_BOHR, HARTREE_IN_EV

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FUNCTIONALS = ["b3lyp", "pbe0", "r2scan", "wb97m", "tpss", "revpbe"]


def _anion_with_water():
    oh, _ = get_molecule("OH-")
    water = molecule("H2O")
    water.positions += np.array([0.0, 2.6, 0.3])
    return oh + water, -1


def _near_isolated_atom():
    atoms = molecule("CH4")
    return atoms + Atoms("Ne", positions=[[9.0, 0.5, 0.0]]), 0


def systems():
    """(label, Atoms, charge): organic, S / P / Cl / Br / I / Si, charged, anion + water, a nearly
    isolated atom, a single atom."""
    out = []
    for name in ["CH3CH2OH", "C6H6", "CH3SH", "PH3", "CH3Cl", "CH3Br", "CH3I", "SiH4", "NH4+"]:
        atoms, q = get_molecule(name)
        out.append((name, atoms, q))
    out.append(("OH-.H2O", *_anion_with_water()))
    out.append(("CH4+Ne", *_near_isolated_atom()))
    for gap in (25.0, 34.0):  # past dftd4's cutoffs: CN 30 / 25 Bohr, ATM 40 Bohr (21 Å), two-body 60 Bohr (32 Å)
        far = molecule("CH3OH")
        far.positions += np.array([gap, 1.0, 0.0])
        out.append((f"C6H6+CH3OH@{gap}", molecule("C6H6") + far, 0))
    out.append(("Ar", Atoms("Ar", positions=[[0.0, 0.0, 0.0]]), 0))
    return out


def reference(atoms, charge, params):
    """dftd4: (energy eV, forces eV/Å, properties)."""
    model = DispersionModel(atoms.numbers, atoms.positions * ANGSTROM_TO_BOHR, charge=float(charge))
    res = model.get_dispersion(DampingParam(**{k: params[k] for k in ("s6", "s8", "a1", "a2", "s9", "alp")}),
                               grad=True)
    return (float(res["energy"]) * HARTREE_IN_EV, -res["gradient"] * HARTREE_IN_EV * ANGSTROM_TO_BOHR,
            model.get_properties())


def term_inputs(atoms, charge, dtype):
    """Every pair of the molecule on a flat half list, as the potential gives it to a term."""
    n = len(atoms)
    i, j = np.triu_indices(n, 1)
    pairs = torch.tensor(np.stack([i, j]), dtype=torch.long)
    coord = torch.tensor(atoms.positions, dtype=dtype, requires_grad=True)
    d = (coord[pairs[0]] - coord[pairs[1]]).norm(dim=-1)
    data = {"coord": torch.zeros(n + 1, 3, dtype=dtype), "pairs_lr": pairs,
            "mol_idx": torch.zeros(n + 1, dtype=torch.long), "charge": torch.tensor([float(charge)], dtype=dtype)}
    numbers = torch.tensor(list(atoms.numbers) + [0])
    return coord, numbers, d, data


def term_energy_forces(term, atoms, charge, dtype=torch.float64):
    coord, numbers, d, data = term_inputs(atoms, charge, dtype)
    energy = term(numbers, d, torch.zeros_like(d, dtype=torch.bool), data, "pairs_lr", True)
    if d.numel() == 0:
        return float(energy.detach()[0]), np.zeros((len(atoms), 3))
    (grad,) = torch.autograd.grad(energy.sum(), coord)
    return float(energy.detach()[0]), -grad.double().numpy()


@pytest.mark.parametrize("functional", FUNCTIONALS)
@pytest.mark.parametrize("atm", [True, False])
def test_energies_and_forces_equal_dftd4(functional, atm):
    params = d4_parameters(functional, atm=atm)
    term = D4.from_params(params)
    for label, atoms, charge in systems():
        e_ref, f_ref, _ = reference(atoms, charge, params)
        e64, f64 = term_energy_forces(term, atoms, charge, torch.float64)
        e32, f32 = term_energy_forces(term, atoms, charge, torch.float32)
        if len(atoms) == 1:
            assert e64 == 0.0 and e_ref == 0.0
            continue
        assert e64 == pytest.approx(e_ref, rel=1e-6), label
        assert e32 == pytest.approx(e_ref, rel=5e-6), label
        np.testing.assert_allclose(f64, f_ref, atol=1e-5, err_msg=label)
        np.testing.assert_allclose(f32, f_ref, atol=1e-5, err_msg=label)


def test_charges_coordination_numbers_and_c6_equal_dftd4():
    params = d4_parameters("b3lyp")
    term = D4.from_params(params)
    for label, atoms, charge in systems():
        if len(atoms) == 1:
            continue
        _, _, props = reference(atoms, charge, params)
        coord, numbers, d, data = term_inputs(atoms, charge, torch.float64)
        r = d.detach() * ANGSTROM_TO_BOHR
        valid = torch.ones_like(r, dtype=torch.bool)
        pairs = data["pairs_lr"]
        cn, cn_eeq = term.coordination_numbers(numbers, pairs, r, valid)
        q = term.eeq_charges(numbers, pairs, r, valid, cn_eeq, data["mol_idx"], data["charge"], 1)
        n = len(atoms)
        np.testing.assert_allclose(cn[:n].numpy(), props["coordination numbers"], atol=1e-10, err_msg=label)
        np.testing.assert_allclose(q[:n].numpy(), props["partial charges"], atol=1e-8, err_msg=label)
        assert float(q[:n].sum()) == pytest.approx(charge, abs=1e-10)
        pol = term.weighted_polarizabilities(numbers, cn, q)
        c6 = (pol[pairs[0]] * pol[pairs[1]]).sum(-1).numpy()
        np.testing.assert_allclose(c6, props["c6 coefficients"][pairs[0].numpy(), pairs[1].numpy()], rtol=1e-10,
                                   err_msg=label)


def test_two_molecules_unsorted_in_one_flat_call():
    """Atoms of two molecules interleaved in one call: each molecule's EEQ system and ATM sum are its own."""
    params = d4_parameters("pbe0")
    term = D4.from_params(params)
    a, qa = get_molecule("NH4+")
    b = molecule("CH3CH2OH")
    order = np.random.default_rng(0).permutation(len(a) + len(b))
    coord = np.concatenate([a.positions, b.positions + 30.0])[order]
    numbers = np.concatenate([a.numbers, b.numbers])[order]
    mol = np.concatenate([np.zeros(len(a), int), np.ones(len(b), int)])[order]
    i, j = np.triu_indices(len(numbers), 1)
    same = mol[i] == mol[j]
    pairs = torch.tensor(np.stack([i[same], j[same]]))
    x = torch.tensor(coord)
    d = (x[pairs[0]] - x[pairs[1]]).norm(dim=-1)
    data = {"coord": torch.zeros(len(numbers) + 1, 3), "pairs_lr": pairs,
            "mol_idx": torch.tensor(list(mol) + [1]), "charge": torch.tensor([float(qa), 0.0], dtype=torch.float64)}
    e = term(torch.tensor(list(numbers) + [0]), d, torch.zeros_like(d, dtype=torch.bool), data, "pairs_lr", True)
    assert float(e[0]) == pytest.approx(reference(a, qa, params)[0], rel=1e-9)
    assert float(e[1]) == pytest.approx(reference(b, 0, params)[0], rel=1e-9)


# ---------------------------------------------------------------------------------------- parameters
def test_parameters_by_name_alias_suffix_and_refusals():
    import tomllib

    import dftd4

    with open(dftd4.__path__[0] + "/parameters.toml", "rb") as fh:
        db = tomllib.load(fh)
    entry = db["parameter"]["r2scan"]["d4"]["bj-eeq-atm"]
    p = d4_parameters("r2scan")
    assert (p["s8"], p["a1"], p["a2"], p["s9"], p["alp"]) == (entry["s8"], entry["a1"], entry["a2"], 1.0, 16.0)
    assert d4_parameters("R2SCAN-D4") == p and d4_parameters(" r2scan ") == p
    assert d4_parameters("ωb97m") == d4_parameters("wb97m")
    assert d4_parameters("b2plyp")["s6"] == pytest.approx(0.64)
    assert d4_parameters("r2scan", atm=False)["s9"] == 0.0
    assert set(FUNCTIONALS) <= set(available_d4_functionals())
    with pytest.raises(DispersionParameterError, match="Near matches: b3lyp"):
        d4_parameters("b3lpy")
    with pytest.raises(DispersionParameterError, match="has D3 parameters .* but no D4 parameters"):
        d4_parameters("pbeh3c")
    with pytest.raises(DispersionParameterError, match="a2 .* must be >= 0"):
        custom_d4_parameters(1.0, 1.0, 0.4, -1.0)
    with pytest.raises(DispersionParameterError, match="must be finite"):
        custom_d4_parameters(1.0, float("nan"), 0.4, 5.0)
    assert resolve_dispersion("wb97m-d4", None)["method"] == "d4"
    assert resolve_dispersion("wb97m", None)["method"] == "d3bj"
    custom = resolve_dispersion({"method": "d4", "s6": 1.0, "s8": 0.5, "a1": 0.4, "a2": 5.0}, None)
    assert custom["s9"] == 1.0 and custom["alp"] == 16.0
    with pytest.raises(ValueError, match="takes no 'cutoff'"):
        resolve_dispersion({"method": "d4", "functional": "pbe0", "cutoff": 10.0}, None)


# ---------------------------------------------------------------------------------------- potentials
@pytest.fixture(scope="module")
def ckpt():
    return small_checkpoint(2, seed=4, dispersion=[{"method": "d4", **d4_parameters("wb97m"), "functional": "wb97m"},
                                                   None])[0]


def _flat(name, dtype=torch.float64):
    atoms, q = get_molecule(name)
    return {"coord": torch.tensor(atoms.positions, dtype=dtype), "numbers": torch.tensor(atoms.numbers),
            "charge": torch.tensor([float(q)], dtype=dtype)}


def test_potential_adds_dftd4_and_its_forces(ckpt):
    pot = build_potential(ckpt, 0).double()
    bare = build_potential(ckpt, 0, dispersion=None).double()
    params = d4_parameters("wb97m")
    for name in ["CH3CH2OH", "NH4+", "CH3Cl"]:
        atoms, q = get_molecule(name)
        inp = _flat(name)
        out, base = pot(dict(inp)), bare(dict(inp))
        e_ref, f_ref, _ = reference(atoms, q, params)
        assert float(out["dispersion_energy"][0]) == pytest.approx(e_ref, rel=1e-9)
        assert float(out["energy"][0] - base["energy"][0]) == pytest.approx(e_ref, rel=1e-8)
        np.testing.assert_allclose((out["forces"] - base["forces"]).numpy(), f_ref, atol=1e-8)
    assert pot.metadata["dispersion"]["method"] == "d4" and pot.metadata["dispersion"]["charges"] == "eeq"
    assert pot.metadata["energy_terms"] == [{"method": "d4", "name": "d4", "cutoff": -1.0,
                                             "hand_written_gradient": True}]
    assert pot.autograd_free(False)  # D4's gradient is written by hand: the call may run in inference mode


@pytest.mark.parametrize("atm", [True, False])
def test_hand_written_gradient_equals_autograd(atm):
    """energy_and_distance_grad (CN, EEQ adjoint, weights, C6, ATM by hand) = autograd of forward,
    float64, on every test system (ions, S/P/Cl/Br/I/Si, an anion with water, a near-isolated atom)."""
    term = torch.jit.script(D4.from_params(d4_parameters("r2scan", atm=atm)))
    checked = 0
    for label, atoms, charge in systems():
        coord, numbers, d, data = term_inputs(atoms, charge, torch.float64)
        if d.numel() == 0:
            continue
        leaf = d.detach().requires_grad_(True)
        energy = term(numbers, leaf, torch.zeros_like(d, dtype=torch.bool), data, "pairs_lr", True)
        (grad,) = torch.autograd.grad(energy.sum(), leaf)
        with torch.no_grad():
            e_hand, g_hand = term.energy_and_distance_grad(numbers, d.detach(), data, "pairs_lr", True)
        assert float(e_hand[0]) == pytest.approx(float(energy.detach()[0]), rel=1e-13, abs=1e-15), label
        np.testing.assert_allclose(g_hand.numpy(), grad.numpy(), rtol=1e-9, atol=1e-13, err_msg=label)
        checked += 1
    assert checked >= 8


def test_hand_path_equals_autograd_and_finite_differences(ckpt):
    pot = build_potential(ckpt, 0, coulomb="simple").double()
    inp = _flat("CH3CH2OH")
    pot.set_manual_forces(True)
    manual = pot(dict(inp))
    pot.set_manual_forces(False)
    full = pot(dict(inp))
    assert (manual["forces"] - full["forces"]).abs().max().item() < 1e-9
    assert float(manual["energy"][0]) == pytest.approx(float(full["energy"][0]), abs=1e-9)
    pot.set_manual_forces(True)
    h = 1e-5
    for atom, axis in [(0, 0), (2, 1), (5, 2), (8, 0)]:
        plus, minus = inp["coord"].clone(), inp["coord"].clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        fd = -(pot(dict(inp, coord=plus))["energy"] - pot(dict(inp, coord=minus))["energy"]) / (2 * h)
        assert float(manual["forces"][atom, axis]) == pytest.approx(float(fd[0]), abs=1e-6)


def test_dense_batch_equals_each_molecule_and_periodic_is_refused(ckpt):
    pot = build_potential(ckpt, 0).double()
    flats = [_flat(n) for n in ["CH3CH2OH", "OH-", "NH4+", "H2O"]]
    dense = pot(padded_batch(flats))
    for b, f in enumerate(flats):
        alone = pot(dict(f))
        n = len(f["numbers"])
        assert float(dense["dispersion_energy"][b]) == pytest.approx(float(alone["dispersion_energy"][0]), abs=1e-12)
        assert torch.allclose(dense["forces"][b, :n], alone["forces"], atol=1e-9)
    inp = _flat("H2O")
    dsf = build_potential(ckpt, 0, coulomb="dsf").double()
    with pytest.raises(ValueError, match="energy term 'd4' supports isolated molecules only"):
        dsf(dict(inp, cell=torch.eye(3, dtype=torch.float64) * 12.0))


def test_torchscript_file_and_consumers(ckpt, tmp_path):
    """The compiled D4 file = the eager potential; ASE, OpenMM (TorchForce, PythonForce) and the md
    command run it unchanged."""
    from aimnet2mult import AIMNet2Mult

    path = export_potential(ckpt, 0, tmp_path / "d4.jpt")
    module, meta = load_potential(path)
    assert meta["dispersion"]["method"] == "d4" and meta["dispersion"]["functional"] == "wb97m"
    inp = _flat("CH3CH2OH", torch.float32)
    eager = build_potential(ckpt, 0)(dict(inp))
    scripted = module(dict(inp))
    assert float((scripted["energy"] - eager["energy"]).abs().max()) < 1e-5
    assert float((scripted["forces"] - eager["forces"]).abs().max()) < 1e-5
    atoms = molecule("CH3CH2OH")
    atoms.calc = AIMNet2Mult(str(path))
    e_ase, f_ase = atoms.get_potential_energy(), atoms.get_forces()
    assert e_ase == pytest.approx(float(eager["energy"][0]), abs=1e-5)
    np.testing.assert_allclose(f_ase, eager["forces"].numpy(), atol=1e-4)
    ckpt_path = save_checkpoint(ckpt, tmp_path / "d4.pt")
    script = f"""
import torch, numpy as np, openmm
from ase.build import molecule
from aimnet2mult.md import openmm_topology
from aimnet2mult.openmm import create_python_force, create_torch_force
from aimnet2mult.units import EV_TO_KJ_PER_MOL as KJ
atoms = molecule("CH3CH2OH")
top = openmm_topology(atoms)
for name, force in [("torch", create_torch_force(r"{path}", 0, topology=top)),
                    ("python", create_python_force(r"{ckpt_path}", 0, topology=top))]:
    system = openmm.System()
    for m in atoms.get_masses():
        system.addParticle(float(m))
    system.addForce(force)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(atoms.positions / 10.0)
    st = ctx.getState(getEnergy=True, getForces=True)
    e = st.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole) / KJ
    f = st.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer) / KJ / 10
    print(name, repr(e), repr(f.tolist()))
"""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln.split(" ", 2) for ln in res.stdout.splitlines() if ln.startswith(("torch ", "python "))]
    assert len(lines) == 2
    for _, e, f in lines:
        assert float(e) == pytest.approx(e_ase, abs=1e-4)
        np.testing.assert_allclose(np.array(eval(f)), f_ase, atol=1e-3)
    from ase.io import write

    from aimnet2mult import cli

    write(tmp_path / "etoh.xyz", atoms)
    argv = ["md", str(tmp_path / "etoh.xyz"), "--model", str(path), "--fidelity", "0", "--steps", "4",
            "--interval", "2", "--no-progress", "--no-plot", "--output", str(tmp_path / "md")]
    assert cli.main(argv) == 0
    assert (tmp_path / "md.xyz").is_file()


def test_compile_evaluate_and_training_config(tmp_path):
    """`aimnet2mult compile --dispersion d4`, `evaluate` removing D4 by dftd4 when the labels exclude
    dispersion, and a training config naming D4 for one fidelity and D3(BJ) for another."""
    import h5py

    from aimnet2mult import cli
    from aimnet2mult.evaluate import evaluate_files

    ckpt, _ = small_checkpoint(2, seed=5)
    save_checkpoint(ckpt, tmp_path / "m.pt")
    assert cli.main(["compile", "--weights", str(tmp_path / "m.pt"), "--output", str(tmp_path / "c.jpt"),
                     "--fidelity-level", "0", "--dispersion", "d4", "--dispersion-functional", "r2scan"]) == 0
    meta = load_potential(tmp_path / "c.jpt")[1]
    assert meta["dispersion"]["method"] == "d4" and meta["dispersion"]["a2"] == d4_parameters("r2scan")["a2"]
    assert cli.main(["compile", "--weights", str(tmp_path / "m.pt"), "--output", str(tmp_path / "two.jpt"),
                     "--fidelity-level", "0", "--dispersion", "d4", "--dispersion-functional", "r2scan",
                     "--no-atm"]) == 0
    assert load_potential(tmp_path / "two.jpt")[1]["dispersion"]["s9"] == 0.0
    assert cli.main(["compile", "--weights", str(tmp_path / "m.pt"), "--output", str(tmp_path / "bad.jpt"),
                     "--fidelity-level", "0", "--dispersion", "d4", "--dispersion-functional", "pbeh3c"]) == 2
    assert not (tmp_path / "bad.jpt").exists()
    # labels = the network alone: evaluate must remove D4 (by dftd4) from the compiled file's energies
    bare = build_potential(ckpt, 0, dispersion=None).double()
    atoms, q = get_molecule("CH3CH2OH")
    out = bare(_flat("CH3CH2OH"))
    with h5py.File(tmp_path / "labels.h5", "w") as fh:
        g = fh.create_group(str(len(atoms)))
        g["coord"] = atoms.positions[None]
        g["numbers"] = atoms.numbers[None]
        g["charge"] = np.array([float(q)])
        g["mult"] = np.array([1.0])
        g["energy"] = out["energy"].numpy()
        g["forces"] = out["forces"].numpy()[None]
    res = evaluate_files([tmp_path / "labels.h5"], str(tmp_path / "c.jpt"), 0)
    first = res[0] if isinstance(res, list) else res["files"][0]
    e_d4 = abs(reference(atoms, q, d4_parameters("r2scan"))[0]) * 23.0605  # kcal/mol
    assert first["E_mae"] < 1e-3 < 0.01 * e_d4, json.dumps(first)[:400]
    # training config: data.dispersion per fidelity
    from aimnet2mult.train.runner import fidelity_table

    cfg = {"data": {"fidelity_datasets": {0: "a.h5", 1: "b.h5"}, "dispersion": {0: "wb97m-d4", 1: "b3lyp"},
                    "labels_include_dispersion": {}}, "fidelity_names": {}}
    info = {"sae": {0: {1: -13.6}, 1: {1: -13.6}}, "elements": {0: [1], 1: [1]}, "labels": {0: ["energy"], 1: []}}
    table = fidelity_table(cfg, info)
    assert table[0]["dispersion"]["method"] == "d4" and table[1]["dispersion"]["method"] == "d3bj"


def test_translation_rotation_and_permutation_invariance():
    params = d4_parameters("tpss")
    term = D4.from_params(params)
    atoms, q = get_molecule("CH3Br")
    e0, f0 = term_energy_forces(term, atoms, q)
    rng = np.random.default_rng(3)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T + np.array([3.1, -7.2, 0.4])
    e1, f1 = term_energy_forces(term, moved, q)
    assert e1 == pytest.approx(e0, rel=1e-12)
    np.testing.assert_allclose(f1, f0 @ rot.T, atol=1e-12)
    perm = rng.permutation(len(atoms))
    e2, f2 = term_energy_forces(term, atoms[perm], q)
    assert e2 == pytest.approx(e0, rel=1e-12)
    np.testing.assert_allclose(f2, f0[perm], atol=1e-12)


def test_multifidelity_export_d3_for_one_fidelity_d4_for_the_other(tmp_path):
    """Fidelity 0 carries D3(BJ), fidelity 1 D4: each file = its residual + SAE + its own dispersion."""
    from aimnet2mult.evaluate import reference_d3, reference_d4

    d3 = {"method": "d3bj", "functional": "b3lyp", **d3bj_parameters("b3lyp")}
    d4 = {"method": "d4", "functional": "r2scan", **d4_parameters("r2scan")}
    ckpt, _ = small_checkpoint(2, seed=6, dispersion=[d3, d4])
    atoms = _anion_with_water()[0]
    inp = {"coord": torch.tensor(atoms.positions, dtype=torch.float32), "numbers": torch.tensor(atoms.numbers),
           "charge": torch.tensor([-1.0])}
    for k, ref in ((0, lambda: reference_d3(atoms.numbers, atoms.positions, d3)),
                   (1, lambda: reference_d4(atoms.numbers, atoms.positions, d4, -1.0))):
        module, meta = load_potential(export_potential(ckpt, k, tmp_path / f"fid{k}.jpt"))
        assert meta["dispersion"]["method"] == ("d3bj", "d4")[k]
        bare = build_potential(ckpt, k, dispersion=None).double()
        residual_plus_sae = float(bare({kk: (v.double() if v.is_floating_point() else v)
                                        for kk, v in inp.items()})["energy"][0])
        e_disp, f_disp = ref()
        out = module(dict(inp))
        assert float(out["energy"][0]) == pytest.approx(residual_plus_sae + e_disp, abs=1e-5)
        assert float(out["dispersion_energy"][0]) == pytest.approx(e_disp, abs=1e-6)


def test_cli_refusals_write_nothing(tmp_path):
    from aimnet2mult import cli

    ckpt, _ = small_checkpoint(1, seed=7)
    save_checkpoint(ckpt, tmp_path / "m.pt")
    for name in ("b3lpy", "pbeh3c"):
        code = cli.main(["compile", "--weights", str(tmp_path / "m.pt"), "--output", str(tmp_path / "x.jpt"),
                         "--fidelity-level", "0", "--dispersion", "d4", "--dispersion-functional", name])
        assert code == 2 and not list(tmp_path.glob("x*"))
    with pytest.raises(DispersionParameterError, match="Near matches: b3lyp"):
        d4_parameters("b3lpy")
