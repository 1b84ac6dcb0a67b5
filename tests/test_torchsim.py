"""torch-sim (torch-sim-atomistic 0.3.0): aimnet2mult.engines.torchsim.AIMNet2MultModel evaluates 64
molecules in one flat batch equal to the per-system ASE calculator (1e-5 eV), a periodic state
system by system with its stress, and runs batched Langevin MD."""

import numpy as np
import pytest
import torch

ts = pytest.importorskip("torch_sim", reason="torch-sim-atomistic is not installed")

from aimnet2mult import AIMNet2Mult  # noqa: E402
from aimnet2mult.engines.torchsim import AIMNet2MultModel  # noqa: E402
from aimnet2mult.tools.g2_molecules import small_molecules  # noqa: E402
from aimnet2mult.tools.water import water_cell  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ELEMENTS = {1, 6, 7, 8, 9, 16, 17}  # the bundled default model


def molecules(n=64, seed=0):
    return small_molecules(n, ELEMENTS, seed=seed, rattle=0.02)


@pytest.mark.parametrize("fidelity", [0, 1])
def test_flat_batch_equals_the_ase_calculator_and_md_runs(fidelity):
    systems = molecules(64)
    model = AIMNet2MultModel(None, fidelity=fidelity)
    state = ts.initialize_state(systems, model.device, model.dtype)
    out = model(state)
    assert out["energy"].shape == (64,) and out["forces"].shape == (state.positions.shape[0], 3)
    calc = AIMNet2Mult(fidelity=fidelity)
    start = 0
    for s, atoms in enumerate(systems):
        atoms.calc = calc
        n = len(atoms)
        assert float(out["energy"][s]) == pytest.approx(atoms.get_potential_energy(), abs=1e-5), s
        np.testing.assert_allclose(out["forces"][start:start + n].numpy(), atoms.get_forces(), atol=1e-5)
        start += n
    final = ts.integrate(system=state, model=model, integrator=ts.nvt_langevin, n_steps=5, temperature=300.0,
                         timestep=0.0005)
    assert torch.isfinite(final.positions).all() and final.positions.shape == state.positions.shape
    assert float((final.positions - state.positions).abs().max()) > 0.0


@pytest.mark.parametrize("fidelity", [0, 1])
def test_periodic_state_with_stress_and_explicit_fidelity(fidelity):
    box = water_cell(2, seed=3)
    model = AIMNet2MultModel(None, fidelity=fidelity, compute_stress=True)
    state = ts.initialize_state([box], model.device, model.dtype)
    out = model(state)
    box.calc = AIMNet2Mult(fidelity=fidelity)
    assert float(out["energy"][0]) == pytest.approx(box.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(out["forces"].numpy(), box.get_forces(), atol=1e-5)
    from ase.stress import voigt_6_to_full_3x3_stress

    np.testing.assert_allclose(out["stress"][0].numpy(), voigt_6_to_full_3x3_stress(box.get_stress()), atol=1e-6)
    with pytest.raises(ValueError, match=r"fidelit.*0 \('b3lyp"):  # the error lists the fidelities
        AIMNet2MultModel(None)
