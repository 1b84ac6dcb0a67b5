"""The CPU fast paths of exported potentials (issue 8): oneDNN matrix products with packed weight
copies, ATen's GELU kernels for small inputs, and inference mode for autograd-free calls.

References are independent of the code under test: autograd through the eager float64 MLP, the
analytic GELU and its derivative in float64, and the same potential with the fast paths off.
"""

import copy
import io
import math

import molecules
import pytest
import torch
from helpers import small_checkpoint

from aimnet2mult.export import build_potential
from aimnet2mult.nn.mlp import gelu, gelu_backward, make_mlp, mlp_vjp
from aimnet2mult.nn.onednn import ONEDNN_PRODUCTS, use_packed_weights
from aimnet2mult.tools.water import water_cell

D3 = {"method": "d3bj", "functional": "wb97m"}


def recorded(mlp, x):
    kinds, saved = [], []
    h = x
    with torch.no_grad():
        for layer in mlp:
            h = layer.record(h, kinds, saved)
    return h, kinds, saved


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("rows", [1, 10, 37])
def test_recorded_mlp_and_vjp_equal_float64_autograd(packed, rows):
    torch.manual_seed(rows)
    mlp = make_mlp(96, [128, 80], 7, last_activation=True)
    use_packed_weights(mlp, packed)
    x = torch.randn(rows, 96)
    grad = torch.randn(rows, 7)
    ref_mlp = copy.deepcopy(mlp).double()
    x64 = x.double().requires_grad_(True)
    y64 = ref_mlp(x64)
    (g64,) = torch.autograd.grad((y64 * grad.double()).sum(), x64)

    y, kinds, saved = recorded(mlp, x)
    assert kinds == ([2, 1, 2, 1, 2, 1] if packed else [0, 1, 0, 1, 0, 1])
    assert (y.double() - y64).abs().max().item() < 1e-5 * max(1.0, y64.abs().max().item())
    with torch.no_grad():
        g = mlp_vjp(grad, kinds, saved, 0, len(kinds))
        g_tail = mlp_vjp(grad, kinds, saved, 0, len(kinds), first_input=40)  # columns 40.. only
    assert g.shape == (rows, 96) and g_tail.shape == (rows, 56)
    scale = max(1.0, g64.abs().max().item())
    assert (g.double() - g64).abs().max().item() < 1e-5 * scale
    assert (g_tail.double() - g64[:, 40:]).abs().max().item() < 1e-5 * scale


@pytest.mark.parametrize("shape", [(10, 512), (9, 1), (100, 512)])  # ATen kernel / oneDNN kernel
def test_gelu_helpers_equal_the_analytic_gelu(shape):
    torch.manual_seed(0)
    x = 3.0 * torch.randn(shape)
    grad = torch.randn(shape)
    x64 = x.double()
    phi = 0.5 * (1.0 + torch.erf(x64 / math.sqrt(2.0)))
    density = torch.exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi)
    y = gelu(x)
    g = gelu_backward(grad, x)
    assert y.is_contiguous() and g.is_contiguous() and y.shape == shape and g.shape == shape
    assert (y.double() - x64 * phi).abs().max().item() < 1e-6 * 4
    assert (g.double() - grad.double() * (phi + x64 * density)).abs().max().item() < 1e-6 * 4


def _packed_caches(module):
    """(name, number of packed tensors) of every PackedWeights submodule of a scripted module."""
    return [(name, len(sub.packed)) for name, sub in module.named_modules()
            if getattr(sub, "original_name", type(sub).__name__) == "PackedWeights"]


def _molecule_input(name="CH3CH2OH"):
    atoms, q = molecules.get(name)
    return {"coord": torch.tensor(atoms.positions, dtype=torch.float32), "numbers": torch.tensor(atoms.numbers),
            "charge": torch.tensor([float(q)])}


@pytest.mark.skipif(not ONEDNN_PRODUCTS, reason="this torch build has no oneDNN")
def test_packed_weights_are_made_on_use_and_never_saved(tmp_path):
    ckpt, _ = small_checkpoint(1, dispersion=D3)
    pot = torch.jit.script(build_potential(ckpt, 0))
    inp = _molecule_input()
    caches = _packed_caches(pot)
    assert caches and all(n == 0 for _, n in caches)  # nothing packed before the first call
    first = pot(dict(inp))
    assert all(n == 2 for _, n in _packed_caches(pot))  # W and its transpose, per layer

    # saved after use: the file holds no packed copy (mkldnn tensors cannot be saved at all)
    path = tmp_path / "used.jpt"
    torch.jit.save(pot, str(path))
    loaded = torch.jit.load(str(path))
    assert all(n == 0 for _, n in _packed_caches(loaded))
    again = loaded(dict(inp))
    assert torch.equal(again["energy"], first["energy"]) and torch.equal(again["forces"], first["forces"])

    # frozen after use (openmm-torch freezes what it is given), and the eager module copied after use
    frozen = torch.jit.freeze(loaded.eval())
    for _ in range(3):
        out = frozen(dict(inp))
        assert torch.equal(out["forces"], first["forces"])
    eager = build_potential(ckpt, 0)
    eager(dict(inp))
    for twin in (copy.deepcopy(eager), _pickled(eager)):
        assert (twin(dict(inp))["forces"] - first["forces"]).abs().max().item() < 1e-5


def _pickled(module):
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_fast_paths_off_give_the_same_energies_and_forces():
    """Packed oneDNN products and the plain products of the same float32 potential agree to float32
    rounding; so do calls in and out of inference mode."""
    ckpt, _ = small_checkpoint(1, dispersion=D3)
    pot = torch.jit.script(build_potential(ckpt, 0))
    inp = _molecule_input("C6H6")
    fast = pot(dict(inp))
    with torch.inference_mode():
        fast_inference = pot(dict(inp))
    pot.set_packed_weights(False)
    plain = pot(dict(inp))
    pot.set_packed_weights(True)
    for key in ("energy", "forces", "charges"):
        assert (fast[key] - plain[key]).abs().max().item() < 2e-5, key
        assert torch.equal(fast[key], fast_inference[key]), key


def test_autograd_free_reports_which_calls_can_run_in_inference_mode():
    ckpt, _ = small_checkpoint(1, dispersion=D3)
    pot = torch.jit.script(build_potential(ckpt, 0))
    assert pot.autograd_free(False) and pot.autograd_free(True)
    pot.set_coulomb("ewald")
    assert pot.autograd_free(False) and not pot.autograd_free(True)
    # a periodic Ewald call keeps autograd, so it must not be made in inference mode; the others can
    atoms = water_cell(2, 3)
    inp = {"coord": torch.tensor(atoms.positions, dtype=torch.float32), "numbers": torch.tensor(atoms.numbers),
           "cell": torch.tensor(atoms.cell.array, dtype=torch.float32), "pbc": torch.ones(3, dtype=torch.bool)}
    ewald = pot(dict(inp))
    assert torch.isfinite(ewald["forces"]).all()
    pot.set_coulomb("dsf")
    assert pot.autograd_free(True)
    normal = pot(dict(inp))
    with torch.inference_mode():
        inference = pot(dict(inp))
    assert torch.equal(normal["forces"], inference["forces"]) and torch.equal(normal["stress"], inference["stress"])
    pot.set_manual_forces(False)
    assert not pot.autograd_free(False)


def test_export_without_onednn_loads_anywhere_and_agrees(tmp_path, monkeypatch):
    """AIMNET2MULT_ONEDNN=0 at import time: the exported file holds no oneDNN operator (it loads in
    torch builds without oneDNN) and gives the same energies and forces to float32 rounding."""
    import os
    import subprocess
    import sys

    from aimnet2mult.checkpoint import save_checkpoint
    from aimnet2mult.export import export_potential, load_potential, read_metadata

    ckpt, _ = small_checkpoint(1, dispersion=D3)
    path = tmp_path / "m.pt"
    save_checkpoint(ckpt, path)
    default_file = export_potential(path, 0, tmp_path / "default.jpt")
    portable_file = tmp_path / "portable.jpt"
    env = dict(os.environ, AIMNET2MULT_ONEDNN="0")
    code = ("import sys; from aimnet2mult.export import export_potential; "
            "export_potential(sys.argv[1], 0, sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(path), str(portable_file)], env=env, check=True)
    assert read_metadata(portable_file)["onednn_products"] is False
    assert read_metadata(default_file)["onednn_products"] is ONEDNN_PRODUCTS
    portable, _ = load_potential(portable_file)
    default, _ = load_potential(default_file)

    def code_of(file):  # the TorchScript source saved in the file
        import zipfile
        with zipfile.ZipFile(file) as z:
            return "\n".join(z.read(n).decode() for n in z.namelist() if n.endswith(".py"))

    assert "mkldnn" not in code_of(portable_file)
    assert ("mkldnn" in code_of(default_file)) is ONEDNN_PRODUCTS
    inp = _molecule_input("C6H6")
    a, b = portable(dict(inp)), default(dict(inp))
    for key in ("energy", "forces"):
        assert (a[key] - b[key]).abs().max().item() < 2e-5, key

    # a oneDNN file in a torch build without oneDNN: a clear error before torch.jit.load fails
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    if ONEDNN_PRODUCTS:
        with pytest.raises(ValueError, match="AIMNET2MULT_ONEDNN=0"):
            load_potential(default_file)
    load_potential(portable_file)
