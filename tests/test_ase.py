"""ASE calculator AIMNet2Mult: agreement with the potential, derivatives, state handling, errors, NVE."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from helpers import small_checkpoint
from molecules import get as get_molecule

from aimnet2mult import AIMNet2Mult
from aimnet2mult.checkpoint import CheckpointError, save_checkpoint
from aimnet2mult.export import build_potential, export_potential, load_potential
from aimnet2mult.import_official import official_member_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two-fidelity closed-shell checkpoint, its fidelity-1 .jpt, and an open-shell checkpoint."""
    root = tmp_path_factory.mktemp("ase_models")
    ckpt, _ = small_checkpoint(2)
    ckpt_path = save_checkpoint(ckpt, root / "small.pt")
    jpt = export_potential(ckpt, 1, root / "small")
    open_ckpt, _ = small_checkpoint(2, seed=3, num_charge_channels=2)
    open_path = save_checkpoint(open_ckpt, root / "open.pt")
    other, _ = small_checkpoint(2, seed=7)
    other_path = save_checkpoint(other, root / "other.pt")
    return {"ckpt": ckpt, "pt": ckpt_path, "jpt": jpt, "open": open_path, "other": other_path, "root": root}


def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.03, seed=2)
    return atoms


def test_energy_forces_match_checkpoint_and_compiled(models):
    atoms = ethanol()
    atoms.calc = AIMNet2Mult(models["pt"], fidelity=1)
    e, f, q = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_charges()
    assert isinstance(e, float) and f.shape == (9, 3) and f.dtype == np.float64 and q.shape == (9,)
    assert atoms.get_potential_energy(force_consistent=True) == e
    # the compiled single-fidelity file and the bare scripted module give the same numbers
    other = atoms.copy()
    other.calc = AIMNet2Mult(models["jpt"], fidelity="level1")
    assert other.get_potential_energy() == pytest.approx(e, rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(other.get_forces(), f, atol=1e-6)
    module, meta = load_potential(models["jpt"])
    out = module({"coord": torch.tensor(atoms.positions[None]), "numbers": torch.tensor(atoms.numbers[None])})
    assert float(out["energy"][0]) == pytest.approx(e, rel=1e-9)
    np.testing.assert_allclose(out["forces"][0].double().numpy(), f, atol=1e-6)
    np.testing.assert_allclose(out["charges"][0].double().numpy(), q, atol=1e-6)
    # fidelity by name == by index; a different fidelity is a different potential
    atoms.calc = AIMNet2Mult(models["ckpt"], fidelity="level1")
    assert atoms.get_potential_energy() == pytest.approx(e, rel=1e-12)
    atoms.calc = AIMNet2Mult(models["ckpt"], fidelity=0)
    assert abs(atoms.get_potential_energy() - e) > 1e-3


def test_one_model_call_per_geometry(models, monkeypatch):
    calc = AIMNet2Mult(models["pt"], fidelity=0)
    pot = calc.sources[0].potential(0)
    calls = []
    original = pot.module.forward
    monkeypatch.setattr(pot.module, "forward", lambda data: calls.append(1) or original(data))
    atoms = ethanol()
    atoms.calc = calc
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_charges(), atoms.get_dipole_moment()
    assert len(calls) == 1
    atoms.positions[0, 0] += 0.01
    atoms.get_forces(), atoms.get_potential_energy()
    assert len(calls) == 2


def test_forces_equal_finite_differences(models):
    # float64 copy of the potential: finite differences resolve the analytic forces to ~1e-8 eV/Å
    atoms = ethanol()
    atoms.calc = AIMNet2Mult(build_potential(models["ckpt"], 1).double())
    f = atoms.get_forces()
    np.testing.assert_allclose(f, calculate_numerical_forces(atoms, eps=1e-4), atol=1e-6)
    # the float32 potential as shipped: agreement limited by float32 energies
    atoms.calc = AIMNet2Mult(models["pt"], fidelity=1)
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=2e-3), atol=2e-2)
    np.testing.assert_allclose(atoms.get_forces(), f, atol=1e-3)


def test_state_charge_mult_fidelity_in_info(models):
    calc = AIMNet2Mult(models["pt"], fidelity=0)
    atoms = ethanol()
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    atoms.info["fidelity"] = 1
    e1 = atoms.get_potential_energy()
    assert abs(e1 - e0) > 1e-3
    atoms.info["charge"] = 1
    e1q = atoms.get_potential_energy()
    assert abs(e1q - e1) > 1e-3
    assert atoms.get_charges().sum() == pytest.approx(1.0, abs=1e-3)
    del atoms.info["fidelity"], atoms.info["charge"]
    assert atoms.get_potential_energy() == pytest.approx(e0, rel=1e-12)
    # keyword arguments are the defaults; info wins
    kw = ethanol()
    kw.calc = AIMNet2Mult(models["pt"], fidelity=1, charge=1)
    assert kw.get_potential_energy() == pytest.approx(e1q, rel=1e-12)
    kw.info["charge"] = 0
    assert kw.get_potential_energy() == pytest.approx(e1, rel=1e-12)
    # multiplicity (open-shell model), also under the alias 'spin'
    rad = molecule("CH3")
    rad.calc = AIMNet2Mult(models["open"], fidelity=0, mult=2)
    e_d = rad.get_potential_energy()
    assert rad.get_magnetic_moment() == pytest.approx(1.0, abs=1e-3)
    assert rad.get_magnetic_moments().shape == (4,)
    rad.info["spin"] = 4
    e_q = rad.get_potential_energy()
    assert abs(e_q - e_d) > 1e-4 and rad.get_magnetic_moment() == pytest.approx(3.0, abs=1e-3)
    rad.info["mult"] = 2
    with pytest.raises(ValueError, match="alias"):
        rad.get_potential_energy()


def test_molecules_of_different_sizes_in_turn(models):
    calc = AIMNet2Mult(models["pt"], fidelity=0)
    names = ["H2O", "C6H6", "CH4", "CH3CH2OH", "H2O"]
    first = {}
    for name in names:
        atoms, charge = get_molecule(name)
        atoms.calc = calc
        e = atoms.get_potential_energy()
        assert atoms.get_forces().shape == (len(atoms), 3)
        fresh = atoms.copy()
        fresh.calc = AIMNet2Mult(models["pt"], fidelity=0)
        assert fresh.get_potential_energy() == pytest.approx(e, rel=1e-12)
        if name in first:
            assert e == pytest.approx(first[name], rel=1e-12)
        first[name] = e


def test_dipole_centre_of_mass(models):
    atoms = ethanol()
    atoms.calc = AIMNet2Mult(models["pt"], fidelity=0)
    d = atoms.get_dipole_moment()
    q = atoms.get_charges()
    np.testing.assert_allclose(d, (q[:, None] * atoms.positions).sum(0) - q.sum() * atoms.get_center_of_mass(),
                               atol=1e-10)
    moved = atoms.copy()
    moved.translate([3.0, -2.0, 1.0])
    moved.calc = AIMNet2Mult(models["pt"], fidelity=0)
    np.testing.assert_allclose(moved.get_dipole_moment(), d, atol=1e-5)
    ion, charge = get_molecule("NH4+")
    ion.info["charge"] = charge
    ion.calc = AIMNet2Mult(models["pt"], fidelity=0)
    qi = ion.get_charges()
    assert qi.sum() == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(ion.get_dipole_moment(),
                               (qi[:, None] * (ion.positions - ion.get_center_of_mass())).sum(0), atol=1e-10)


def test_closed_shell_has_no_magmoms_and_molecules_no_stress(models):
    atoms = ethanol()
    atoms.calc = AIMNet2Mult(models["pt"], fidelity=0)
    with pytest.raises(PropertyNotImplementedError, match="closed-shell"):
        atoms.get_magnetic_moments()
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()


def test_ensemble_mean_and_unbiased_std(models):
    atoms = ethanol()
    singles = []
    for path in (models["pt"], models["other"]):
        atoms.calc = AIMNet2Mult(path, fidelity=1)
        singles.append((atoms.get_potential_energy(), atoms.get_forces()))
    atoms.calc = AIMNet2Mult([models["pt"], models["other"]], fidelity=1)
    energies = np.array([e for e, _ in singles])
    forces = np.stack([f for _, f in singles])
    assert atoms.get_potential_energy() == pytest.approx(energies.mean(), rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), forces.mean(0), atol=1e-12)
    assert atoms.calc.results["energy_std"] == pytest.approx(energies.std(ddof=1), rel=1e-9)
    np.testing.assert_allclose(atoms.calc.results["forces_std"], forces.std(0, ddof=1), atol=1e-12)
    assert atoms.calc.get_property("energy_std", atoms) > 0


def test_bad_input_errors(models, tmp_path, monkeypatch):
    from aimnet2mult.calculators import runtime

    monkeypatch.setattr(runtime, "DEFAULT_MODEL_DIR", tmp_path / "no_models")
    with pytest.raises(ValueError, match="ships no default model.*model=PATH"):
        AIMNet2Mult()
    with pytest.raises(CheckpointError, match=r"0 \('level0'\), 1 \('level1'\)"):
        AIMNet2Mult(models["pt"])
    with pytest.raises(CheckpointError, match="out of range.*level1"):
        AIMNet2Mult(models["pt"], fidelity=5)
    with pytest.raises(CheckpointError, match="unknown fidelity 'dft'"):
        AIMNet2Mult(models["pt"], fidelity="dft")
    with pytest.raises(ValueError, match="does not match.*1 \\('level1'\\)"):
        AIMNet2Mult(models["jpt"], fidelity=0)
    text = tmp_path / "notes.pt"
    text.write_text("not a model\n")
    with pytest.raises(CheckpointError, match="cannot be read as an aimnet2mult checkpoint"):
        AIMNet2Mult(text, fidelity=0)
    with pytest.raises(FileNotFoundError):
        AIMNet2Mult(tmp_path / "missing.pt", fidelity=0)
    # a fidelity that appears only in atoms.info is checked when used
    atoms = ethanol()
    atoms.calc = AIMNet2Mult(models["pt"], fidelity=0)
    atoms.info["fidelity"] = 9
    with pytest.raises(CheckpointError, match="out of range"):
        atoms.get_potential_energy()
    # unsupported element: the potential's message, for the eager and the scripted (.jpt) potential
    xe = Atoms("XeH", positions=[[0, 0, 0], [1.7, 0, 0]])
    for calc in (AIMNet2Mult(models["pt"], fidelity=0), AIMNet2Mult(models["jpt"])):
        xe.calc = calc
        with pytest.raises(ValueError, match=r"element Xe \(Z=54\) is not supported") as err:
            xe.get_potential_energy()
        assert "Traceback" not in str(err.value) and "builtins" not in str(err.value)
    # closed-shell model with a multiplicity
    atoms = ethanol()
    atoms.calc = AIMNet2Mult(models["jpt"], mult=3)
    with pytest.raises(ValueError, match="closed-shell"):
        atoms.get_potential_energy()
    # periodic cell narrower than the cutoff (5 Å)
    box = molecule("H2O")
    box.set_cell([4.0, 12.0, 12.0])
    box.pbc = True
    box.calc = AIMNet2Mult(models["pt"], fidelity=0)
    with pytest.raises(ValueError, match="cell too small for the cutoff"):
        box.get_potential_energy()
    # Coulomb method: unknown name, bad parameter, 'simple' for a periodic system
    with pytest.raises(ValueError, match="unknown Coulomb method 'pme'"):
        AIMNet2Mult(models["pt"], fidelity=0, coulomb="pme")
    with pytest.raises(ValueError, match="unknown Coulomb parameter"):
        AIMNet2Mult(models["pt"], fidelity=0, coulomb={"method": "dsf", "cutoff": 9.0})
    periodic = water_box()
    periodic.calc = AIMNet2Mult(models["jpt"], coulomb="simple")
    with pytest.raises(ValueError, match="'simple'.*cannot be used for a periodic system"):
        periodic.get_potential_energy()
    periodic.calc = AIMNet2Mult(models["jpt"], coulomb={"method": "dsf", "dsf_rc": 2.0})
    with pytest.raises(ValueError, match="dsf_rc"):
        periodic.get_potential_energy()


def water_box():
    atoms = molecule("H2O")
    second = molecule("H2O")
    second.translate([2.9, 0.4, 0.3])
    atoms += second
    atoms.set_cell([[11.0, 0.0, 0.0], [0.8, 10.5, 0.0], [0.3, -0.5, 10.8]])
    atoms.pbc = True
    atoms.positions += [1.0, 1.5, 2.0]
    atoms.rattle(0.02, seed=4)
    return atoms


def flat_energy(potential, atoms):
    """Independent reference: the bare potential module on the flat periodic input."""
    out = potential({"coord": torch.tensor(atoms.positions), "numbers": torch.tensor(atoms.numbers),
                     "cell": torch.tensor(np.asarray(atoms.cell)), "pbc": torch.tensor(atoms.pbc)})
    return float(out["energy"].sum()), out["forces"].detach().double().numpy()


@pytest.mark.parametrize("coulomb", ["auto", "ewald"])
def test_periodic_stress_equals_numerical_stress(models, coulomb):
    """The model's Coulomb method is 'simple' (isolated molecules): the calculator switches to 'dsf'
    for the periodic box by itself ('auto'), or uses the Ewald sum when asked."""
    atoms = water_box()
    atoms.calc = AIMNet2Mult(build_potential(models["ckpt"], 0).double(), coulomb=coulomb)
    stress = atoms.get_stress()
    assert stress.shape == (6,)
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-5), atol=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-4), atol=1e-6)
    # the energy is that of the potential exported with that Coulomb method
    method = "dsf" if coulomb == "auto" else coulomb
    e_ref, f_ref = flat_energy(build_potential(models["ckpt"], 0, coulomb=method).double(), atoms)
    assert atoms.get_potential_energy() == pytest.approx(e_ref, abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), f_ref, atol=1e-9)
    # a whole-molecule translation by a lattice vector changes nothing
    shifted = atoms.copy()
    shifted.positions[:3] += atoms.cell[0]
    shifted.calc = AIMNet2Mult(build_potential(models["ckpt"], 0).double(), coulomb=coulomb)
    assert shifted.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-8)


def test_periodic_coulomb_methods_and_molecules_in_turn(models):
    """One calculator: molecule (model's 'simple'), periodic box ('dsf'), molecule again; DSF ~ Ewald
    for a neutral cell; explicit methods and parameters reach the potential."""
    calc = AIMNet2Mult(models["jpt"])
    mol = ethanol()
    mol.info["charge"] = 1  # an ion: its Coulomb energy differs a lot between 'simple' and 'dsf'
    mol.calc = calc
    e_mol = mol.get_potential_energy()
    simple = build_potential(models["ckpt"], 1)
    out = simple({"coord": torch.tensor(mol.positions[None]), "numbers": torch.tensor(mol.numbers[None]),
                  "charge": torch.tensor([1.0])})
    assert e_mol == pytest.approx(float(out["energy"][0]), rel=1e-9)
    box = water_box()
    box.calc = calc
    e_box = box.get_potential_energy()
    assert e_box == pytest.approx(flat_energy(build_potential(models["ckpt"], 1, coulomb="dsf"), box)[0], rel=1e-9)
    assert mol.get_potential_energy() == pytest.approx(e_mol, rel=1e-12)  # back to 'simple'
    dsf_mol = ethanol()
    dsf_mol.info["charge"] = 1
    dsf_mol.calc = AIMNet2Mult(models["jpt"], coulomb="dsf")
    assert abs(dsf_mol.get_potential_energy() - e_mol) > 0.1
    # explicit methods / parameters on the periodic box
    energies = {}
    for name, spec in {"ewald": "ewald", "ewald_tight": {"method": "ewald", "ewald_accuracy": 1e-10},
                       "dsf_wide": {"method": "dsf", "dsf_rc": 25.0}}.items():
        box.calc = AIMNet2Mult(models["jpt"], coulomb=spec)
        energies[name] = box.get_potential_energy()
    assert energies["ewald_tight"] == pytest.approx(energies["ewald"], abs=1e-6)
    assert abs(energies["dsf_wide"] - e_box) > 1e-8  # the parameter arrived
    for name in ("ewald", "dsf_wide"):  # neutral cell: damped shifted force approximates Ewald
        assert abs(energies[name] - e_box) < 5e-3, energies
    assert calc.sources[0].potential().coulomb_method == "simple"


def test_model_without_coulomb_has_nothing_to_switch():
    ckpt, _ = small_checkpoint(1, coulomb={"method": "none"})
    box = water_box()
    box.calc = AIMNet2Mult(ckpt)
    e, f = flat_energy(build_potential(ckpt, 0), box)
    assert box.get_potential_energy() == pytest.approx(e, rel=1e-9)
    np.testing.assert_allclose(box.get_forces(), f, atol=1e-6)
    assert box.get_stress().shape == (6,)
    with pytest.raises(ValueError, match="no Coulomb term"):
        AIMNet2Mult(ckpt, coulomb="ewald")


def test_flat_layout_equals_dense(models):
    atoms = ethanol()
    atoms.calc = AIMNet2Mult(models["pt"], fidelity=0)
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = AIMNet2Mult(models["pt"], fidelity=0, dense_max_atoms=0)
    assert atoms.get_potential_energy() == pytest.approx(e, rel=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), f, atol=1e-4)


DEFAULT_FIDELITIES = ["b3lyp/6-31g*", "gfn2-xtb", "gfn1-xtb"]


def default_like_checkpoint():
    """Shaped like the bundled default model: 3 fidelities, D3(BJ)-B3LYP recorded on fidelity 0."""
    ckpt, _ = small_checkpoint(3, seed=11, dispersion=[{"method": "d3bj", "functional": "b3lyp"}, None, None])
    for entry, name in zip(ckpt["fidelities"], DEFAULT_FIDELITIES):
        entry["name"] = name
    return ckpt


def test_default_model_multi_fidelity(tmp_path, monkeypatch):
    """model=None loads resources/models/default_model.pt; a fidelity must be chosen; fidelity 0
    (with its recorded D3 dispersion) works end to end."""
    from aimnet2mult.calculators import runtime

    ckpt = default_like_checkpoint()
    save_checkpoint(ckpt, tmp_path / "default_model.pt")
    monkeypatch.setattr(runtime, "DEFAULT_MODEL_DIR", tmp_path)
    assert runtime.default_model_path() == tmp_path / "default_model.pt"
    with pytest.raises(CheckpointError, match=r"0 \('b3lyp/6-31g\*'\), 1 \('gfn2-xtb'\), 2 \('gfn1-xtb'\)"):
        AIMNet2Mult()
    atoms = ethanol()
    atoms.calc = AIMNet2Mult(fidelity=0)
    e0, f0 = atoms.get_potential_energy(), atoms.get_forces()
    pot = build_potential(ckpt, 0)
    out = pot({"coord": torch.tensor(atoms.positions[None]), "numbers": torch.tensor(atoms.numbers[None])})
    assert e0 == pytest.approx(float(out["energy"][0]), rel=1e-9)
    np.testing.assert_allclose(f0, out["forces"][0].double().numpy(), atol=1e-6)
    assert float(out["dispersion_energy"][0]) < -1e-3  # the recorded D3(BJ) is part of fidelity 0
    atoms.info["fidelity"] = "gfn2-xtb"
    e1 = atoms.get_potential_energy()
    assert abs(e1 - e0) > 1e-3
    atoms.calc = AIMNet2Mult(fidelity="b3lyp/6-31g*")
    assert atoms.get_potential_energy() == pytest.approx(e1, rel=1e-12)  # info['fidelity'] wins
    del atoms.info["fidelity"]
    atoms.calc = AIMNet2Mult(fidelity="b3lyp/6-31g*")
    assert atoms.get_potential_energy() == pytest.approx(e0, rel=1e-12)


def test_device_selection_and_layouts(models, monkeypatch):
    from aimnet2mult.calculators import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device(None) == torch.device("cuda")
    assert runtime.resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device(None) == torch.device("cpu")
    assert AIMNet2Mult(models["pt"], fidelity=0).device == torch.device("cpu")
    # dense layout for small molecules, flat (neighbour lists) above dense_max_atoms and for PBC
    calc = AIMNet2Mult(models["pt"], fidelity=0, dense_max_atoms=8)
    pot = calc.sources[0].potential(0)
    seen = []
    original = pot.module.forward
    monkeypatch.setattr(pot.module, "forward", lambda data: seen.append((data["coord"].dim(), "cell" in data))
                        or original(data))
    for atoms in (molecule("H2O"), ethanol(), water_box()):
        atoms.calc = calc
        atoms.get_potential_energy()
    assert seen == [(3, False), (2, False), (2, True)]


def test_nve_energy_conservation(wb97m_file, tmp_path):
    """wB97M-D3 (official member 0), acetone, velocity Verlet 0.5 fs x 2000 steps."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from aimnet2mult.md import thermalize
    from aimnet2mult.units import EV_TO_KJ_PER_MOL

    path = save_checkpoint(official_member_checkpoint(wb97m_file, 0), tmp_path / "wb97m.pt")
    atoms = molecule("CH3COCH3")
    atoms.calc = AIMNet2Mult(path)
    thermalize(atoms, 300.0, np.random.default_rng(1))
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    etot = []
    dyn.attach(lambda: etot.append(atoms.get_total_energy()), interval=20)
    dyn.run(2000)
    etot = np.array(etot) * EV_TO_KJ_PER_MOL
    assert len(etot) == 101
    drift = abs(etot[-1] - etot[0])
    print(f"ASE NVE drift {drift:.4f} kJ/mol, max |dE| {np.abs(etot - etot[0]).max():.4f} kJ/mol")
    assert drift < 0.5
    assert np.abs(etot - etot[0]).max() < 1.0
