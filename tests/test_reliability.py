"""Issue 19 reproductions: nothing silently wrong in the calculators' state handling."""

import numpy as np
import pytest
from ase.build import molecule

from helpers import small_checkpoint
from aimnet2mult import AIMNet2Mult
from aimnet2mult.checkpoint import save_checkpoint
from aimnet2mult.export import export_potential

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    ckpt, _ = small_checkpoint(3, seed=4)
    pt = save_checkpoint(ckpt, root / "m.pt")
    return {"pt": pt, "fid0": export_potential(pt, 0, root / "f0.jpt"), "fid1": export_potential(pt, 1, root / "f1.jpt"),
            "fid0b": export_potential(pt, 0, root / "f0b.jpt")}


def test_set_discards_cached_results(files):
    atoms = molecule("CH3CH2OH")
    atoms.calc = AIMNet2Mult(files["pt"], fidelity=0)
    e0 = atoms.get_potential_energy()
    atoms.calc.set(charge=1)
    e_cation = atoms.get_potential_energy()
    atoms.calc.set(fidelity=2)
    e_fid2 = atoms.get_potential_energy()
    ref = molecule("CH3CH2OH")
    ref.calc = AIMNet2Mult(files["pt"], fidelity=2, charge=1)
    assert e_cation != e0
    assert e_fid2 == pytest.approx(ref.get_potential_energy(), abs=1e-9)


@pytest.mark.parametrize("bad", [1.7, True, 1.0, [1]])
def test_fidelity_must_be_an_integer_or_name(files, bad):
    atoms = molecule("H2O")
    atoms.calc = AIMNet2Mult(files["pt"], fidelity=0)
    atoms.info["fidelity"] = bad
    with pytest.raises(ValueError, match="fidelity must be an integer index or a name"):
        atoms.get_potential_energy()
    with pytest.raises(ValueError, match="fidelity must be an integer index or a name"):
        AIMNet2Mult(files["pt"], fidelity=bad)
    with pytest.raises(ValueError, match="out of range"):
        AIMNet2Mult(files["pt"], fidelity=0).set(fidelity=7)
    atoms.info["fidelity"] = np.int64(1)  # numpy integers are integers
    assert np.isfinite(atoms.get_potential_energy())


def test_ensemble_of_different_fidelities_refused(files):
    with pytest.raises(ValueError, match="an ensemble must hold one fidelity"):
        AIMNet2Mult([files["fid1"], files["fid0"]])
    atoms = molecule("H2O")
    atoms.calc = AIMNet2Mult([files["fid0"], files["fid0b"]])
    atoms.get_potential_energy()
    assert atoms.calc.results["energy_std"] == pytest.approx(0.0, abs=1e-9)
    # checkpoints of several fidelities in one ensemble: the fidelity is the same for all
    mixed = molecule("H2O")
    mixed.calc = AIMNet2Mult([files["pt"], files["fid0"]], fidelity=0)
    assert np.isfinite(mixed.get_potential_energy())
    mixed.info["fidelity"] = 1
    with pytest.raises(ValueError, match="does not match this compiled single-fidelity potential"):
        mixed.get_potential_energy()
