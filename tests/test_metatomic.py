"""metatomic export (aimnet2mult.engines.metatomic): one energy variant per fidelity, run through
metatomic-ase's calculator against aimnet2mult's own (1e-5 eV), molecules and a periodic box
(forces and stress from the potential's hand-written gradients); no variant = a clear error."""

import numpy as np
import pytest
from ase.build import molecule

pytest.importorskip("metatomic.torch", reason="metatomic-torch is not installed")
from importlib import resources  # noqa: E402

from metatomic_ase import MetatomicCalculator  # noqa: E402

from aimnet2mult import AIMNet2Mult, cli  # noqa: E402
from aimnet2mult.engines.metatomic import export_metatomic, variant_name  # noqa: E402
from aimnet2mult.tools.water import water_cell  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DEFAULT = str(resources.files("aimnet2mult.resources.models") / "default_model.pt")


def test_every_fidelity_is_a_variant_equal_to_the_ase_calculator(tmp_path):
    assert cli.main(["metatomic", "--weights", DEFAULT, "--output", str(tmp_path / "m.pt")]) == 0
    variants = {variant_name(n): k for k, n in enumerate(["b3lyp/6-31g*", "gfn2-xtb", "gfn1-xtb"])}
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    for variant, k in variants.items():
        atoms.calc = MetatomicCalculator(str(tmp_path / "m.pt"), variants={"energy": variant})
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        ref = atoms.copy()
        ref.calc = AIMNet2Mult(DEFAULT, fidelity=k)
        assert e == pytest.approx(ref.get_potential_energy(), abs=1e-5), variant
        np.testing.assert_allclose(f, ref.get_forces(), atol=1e-5)
    with pytest.raises(ValueError, match="no default variant"):  # a fidelity is never chosen silently
        MetatomicCalculator(str(tmp_path / "m.pt"))


def test_periodic_box_energy_forces_stress(tmp_path):
    path = export_metatomic(DEFAULT, str(tmp_path / "dsf.pt"), fidelities=[0, 1], coulomb="dsf")["path"]
    for k, variant in ((0, "b3lyp_6-31g_"), (1, "gfn2-xtb")):
        check_box(path, k, variant)


def check_box(path, fidelity, variant):
    box = water_cell(2, seed=4)
    box.calc = MetatomicCalculator(path, variants={"energy": variant})
    e, f, s = box.get_potential_energy(), box.get_forces(), box.get_stress()
    ref = box.copy()
    ref.calc = AIMNet2Mult(DEFAULT, fidelity=fidelity, coulomb="dsf")
    assert e == pytest.approx(ref.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(f, ref.get_forces(), atol=1e-5)
    np.testing.assert_allclose(s, ref.get_stress(), atol=1e-6)
