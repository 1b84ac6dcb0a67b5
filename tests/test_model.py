"""Network properties: TorchScript, invariances, batching, finite-difference forces, open shell,
multi-fidelity independence."""

import math

import molecules
import numpy as np
import pytest
import torch
from helpers import as_torch, small_checkpoint, small_model

from aimnet2mult.export import build_potential
from aimnet2mult.model_config import model_config
from aimnet2mult.nn.backbone import charge_equilibration
from aimnet2mult.nn.model import MultiFidelityAIMNet2

D3_B3LYP = {"method": "d3bj", "functional": "b3lyp"}


@pytest.fixture(scope="module")
def potential():
    ckpt, _ = small_checkpoint(2, dispersion=D3_B3LYP)
    return build_potential(ckpt, 1)


def _mol(name, dtype=torch.float32):
    return as_torch(*molecules.batch([name]), dtype=dtype)


def test_default_architecture_scripts_and_matches_eager():
    cfg = model_config(num_fidelities=3)
    torch.manual_seed(0)
    model = MultiFidelityAIMNet2(cfg)
    scripted = torch.jit.script(model)
    inp = _mol("CH3CH2OH")
    inp["fidelity"] = torch.tensor([2])
    a, b = model(dict(inp)), scripted(dict(inp))
    assert torch.allclose(a["energy"], b["energy"], atol=1e-6)
    assert model.backbone.embedding.weight.shape == (600, 256)
    widths = [mlp[0].in_features for mlp in model.backbone.passes]
    assert widths == [704, 733, 733]


def test_translation_rotation_permutation(potential):
    inp = _mol("CH3CH2OH")
    ref = potential(dict(inp))
    shifted = dict(inp, coord=inp["coord"] + torch.tensor([3.0, -7.0, 11.0]))
    out = potential(shifted)
    assert abs(out["energy"] - ref["energy"]).item() < 1e-5
    angle = 0.7
    rot = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0],
                        [0.0, 0.0, 1.0]]) @ torch.tensor([[1.0, 0, 0], [0, math.cos(1.1), -math.sin(1.1)],
                                                          [0, math.sin(1.1), math.cos(1.1)]])
    out = potential(dict(inp, coord=inp["coord"] @ rot.T))
    assert abs(out["energy"] - ref["energy"]).item() < 1e-5
    assert torch.allclose(out["forces"], ref["forces"] @ rot.T, atol=1e-5)
    perm = torch.tensor([4, 0, 8, 2, 1, 7, 3, 6, 5])
    out = potential({"coord": inp["coord"][:, perm], "numbers": inp["numbers"][:, perm], "charge": inp["charge"]})
    assert abs(out["energy"] - ref["energy"]).item() < 1e-5
    assert torch.allclose(out["forces"], ref["forces"][:, perm], atol=1e-5)
    assert torch.allclose(out["charges"], ref["charges"][:, perm], atol=1e-6)


def test_padded_batch_equals_molecules_alone(potential):
    names = ["CH3CH2OH", "OH-", "C6H6", "CH3Cl"]
    batch = as_torch(*molecules.batch(names))
    for _ in range(3):  # three calls in a row give the same
        out = potential(dict(batch))
        for b, name in enumerate(names):
            alone = potential(_mol(name))
            n = alone["forces"].shape[1]
            assert abs(out["energy"][b] - alone["energy"][0]).item() < 1e-5
            assert torch.allclose(out["forces"][b, :n], alone["forces"][0], atol=1e-5)
            assert torch.all(out["forces"][b, n:] == 0) and torch.all(out["charges"][b, n:] == 0)
            assert torch.allclose(out["charges"][b, :n], alone["charges"][0], atol=1e-6)


def test_padding_in_the_middle(potential):
    inp = _mol("CH3CH2OH")
    ref = potential(dict(inp))
    coord = torch.cat([inp["coord"][:, :4], torch.full((1, 2, 3), 0.3), inp["coord"][:, 4:]], dim=1)
    numbers = torch.cat([inp["numbers"][:, :4], torch.zeros(1, 2, dtype=torch.long), inp["numbers"][:, 4:]], dim=1)
    out = potential({"coord": coord, "numbers": numbers, "charge": inp["charge"]})
    assert abs(out["energy"] - ref["energy"]).item() < 1e-5


def test_forces_equal_finite_differences_float64():
    ckpt, _ = small_checkpoint(2, dispersion=D3_B3LYP)
    pot = build_potential(ckpt, 0).double()
    inp = _mol("CH3CH2OH", torch.float64)
    inp["charge"] = torch.tensor([1.0], dtype=torch.float64)
    forces = pot(dict(inp))["forces"][0]
    h = 1e-4
    fd = torch.zeros_like(forces)
    for i in range(forces.shape[0]):
        for x in range(3):
            plus, minus = inp["coord"].clone(), inp["coord"].clone()
            plus[0, i, x] += h
            minus[0, i, x] -= h
            ep = pot(dict(inp, coord=plus))["energy"].item()
            em = pot(dict(inp, coord=minus))["energy"].item()
            fd[i, x] = -(ep - em) / (2 * h)
    assert (forces - fd).abs().max().item() < 1e-6, (forces - fd).abs().max().item()
    assert forces.abs().max().item() > 1e-2  # not trivially zero


def test_charge_equilibration_formula():
    data = {"coord": torch.zeros(1, 3, 3)}
    q_raw = torch.tensor([[[0.3], [0.1], [-0.2]]])
    phi = torch.tensor([[[1.0], [2.0], [0.5]]])
    total = torch.tensor([[-1.0]])
    q = charge_equilibration(total, q_raw, phi, data)
    w = phi ** 2
    expected = q_raw + w / (w.sum() + 1e-6) * (total - q_raw.sum())
    assert torch.allclose(q, expected)
    assert abs(q.sum().item() + 1.0) < 1e-6


@pytest.mark.parametrize("name,charge,mult", [("CH2_s3B1d", 0, 3), ("CH3", 0, 2), ("O2", 0, 3), ("NH4+", 1, 1)])
def test_open_shell_spin_and_charge_sums(name, charge, mult):
    ckpt, _ = small_checkpoint(1, num_charge_channels=2)
    pot = build_potential(ckpt, 0)
    inp = _mol(name)
    inp["charge"] = torch.tensor([float(charge)])
    inp["mult"] = torch.tensor([float(mult)])
    out = pot(inp)
    assert abs(out["spin_charges"].sum().item() - (mult - 1)) < 1e-3
    assert abs(out["charges"].sum().item() - charge) < 1e-3
    assert torch.isfinite(out["forces"]).all()
    higher = pot(dict(inp, mult=torch.tensor([mult + 2.0])))  # same electron-count parity
    assert abs(higher["energy"].item() - out["energy"].item()) > 1e-6
    assert abs(higher["spin_charges"].sum().item() - (mult + 1)) < 1e-3


def test_step_on_fidelity0_leaves_other_heads_bit_identical():
    model, _ = small_model(3)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-3)
    inp = as_torch(*molecules.batch(["CH3CH2OH", "C6H6"]))
    inp["fidelity"] = torch.tensor([0, 0])
    opt.zero_grad(set_to_none=True)
    loss = model(inp)["energy"].pow(2).sum()
    loss.backward()
    opt.step()
    after = model.state_dict()
    for k in before:
        if k.startswith("readouts.1.") or k.startswith("readouts.2."):
            assert torch.equal(before[k], after[k]), f"{k} changed by a fidelity-0 step"
    assert not torch.equal(before["readouts.0.mlp.0.weight"], after["readouts.0.mlp.0.weight"])
    assert not torch.equal(before["readouts.0.shifts"], after["readouts.0.shifts"])
    # the readouts are distinct modules with distinct parameters
    ids = {id(p) for ro in model.readouts for p in ro.parameters()}
    assert len(ids) == sum(1 for ro in model.readouts for _ in ro.parameters())


@pytest.mark.parametrize("readouts", [True, False])
def test_prediction_independent_of_batch_companions(readouts):
    model, _ = small_model(3, use_fidelity_readouts=readouts)
    alone = as_torch(*molecules.batch(["CH3CH2OH"]))
    alone["fidelity"] = torch.tensor([1])
    ref = model(dict(alone))["energy"][0]
    for companions, fids in ((["C6H6"], [0]), (["C6H6", "OH-"], [2, 1]), (["CH4"], [1])):
        batch = as_torch(*molecules.batch(["CH3CH2OH"] + companions))
        batch["fidelity"] = torch.tensor([1] + fids)
        assert abs(model(batch)["energy"][0] - ref).item() < 1e-5
    # and the fidelity matters
    other = dict(alone, fidelity=torch.tensor([2]))
    assert abs(model(other)["energy"][0] - ref).item() > 1e-4


def test_multi_fidelity_model_requires_fidelity():
    model, _ = small_model(2)
    with pytest.raises(ValueError, match="fidelit"):
        model(as_torch(*molecules.batch(["CH4"])))
    inp = as_torch(*molecules.batch(["CH4"]))
    inp["fidelity"] = torch.tensor([2])
    with pytest.raises(ValueError, match="out of range"):
        model(inp)


def test_float32_and_float64_shift_modes_differ_by_rounding_only():
    model, cfg = small_model(1)
    with torch.no_grad():
        model.readouts[0].shifts[6] = -1036.109619140625
        model.readouts[0].shifts[1] = -14.202919006347656
    inp = as_torch(*molecules.batch(["C6H6"]))
    e64 = model(dict(inp))["energy"].item()
    model.readouts[0].float64_shift = False
    e32 = model(dict(inp))["energy"].item()
    ulp_c = np.spacing(np.float32(1036.1))
    assert 0 < abs(e64 - e32) <= 12 * ulp_c


@pytest.mark.parametrize("layout", ["flat", "dense"])
def test_joined_convolution_equals_separate_ones(layout):
    """The backbone runs the atom (F channels) and charge (C channels) convolutions as one over
    F + C channels; that equals the two run apart, and the flat layout equals a hand-written sum
    over each atom's neighbours (S_i = Σ_j gs_ij x_j, V_i = A·Σ_j x_j gv_ij, P = |V|²)."""
    from aimnet2mult.nn.basis import PairBasis
    from aimnet2mult.nn.conv import ShellConvolution, shell_sums

    g = torch.Generator().manual_seed(3)
    n, m, f, c, shells, h = 6, 4, 5, 2, 3, 4
    atoms, charges = ShellConvolution(f, shells, h).double(), ShellConvolution(c, shells, h).double()
    x_a = torch.randn(n, f, shells, generator=g, dtype=torch.float64)
    x_q = torch.randn(n, c, 1, generator=g, dtype=torch.float64).expand(n, c, shells)
    nbmat = torch.randint(0, n, (n, m), generator=g)
    gs = torch.randn(n, m, shells, generator=g, dtype=torch.float64)
    gv = torch.randn(n, m, shells, 3, generator=g, dtype=torch.float64)
    if layout == "flat":
        data = {"coord": torch.zeros(n, 3), "nbmat": nbmat}
        # the flat layout's W (G, A, 4, M): W[g, i, 0, m] = gs, W[g, i, 1:, m] = gv of pair (i, m)
        w = torch.cat([gs.unsqueeze(-1), gv], dim=-1).permute(2, 0, 3, 1).contiguous()
        basis = PairBasis(torch.empty(0), torch.empty(0), w)
    else:  # the same pairs as a dense (1, N, N) layout, zero where j is not a listed neighbour
        gs_d = torch.zeros(1, n, n, shells, dtype=torch.float64)
        gv_d = torch.zeros(1, n, n, shells, 3, dtype=torch.float64)
        for i in range(n):
            for k in range(m):
                gs_d[0, i, nbmat[i, k]] += gs[i, k]
                gv_d[0, i, nbmat[i, k]] += gv[i, k]
        data = {"coord": torch.zeros(1, n, 3)}
        basis = PairBasis(gs_d, gv_d, torch.empty(0))
        x_a, x_q = x_a.unsqueeze(0), x_q.unsqueeze(0)
    agh = torch.cat([atoms.agh, charges.agh], dim=0)
    s, p = shell_sums(torch.cat([x_a, x_q], dim=-2), basis, data, agh)
    apart = [atoms(x_a, basis, data), charges(x_q, basis, data)]
    joined = [torch.cat([s[..., :f, :].flatten(-2), p[..., :f, :].flatten(-2)], -1),
              torch.cat([s[..., f:, :].flatten(-2), p[..., f:, :].flatten(-2)], -1)]
    for one, two in zip(apart, joined):
        assert torch.allclose(one, two, atol=1e-12)
    # hand-written reference for the atom channels
    x = x_a.reshape(n, f, shells)
    s_ref = torch.stack([sum(gs[i, k] * x[nbmat[i, k]] for k in range(m)) for i in range(n)])
    v_ref = torch.stack([sum(x[nbmat[i, k]].unsqueeze(-1) * gv[i, k] for k in range(m)) for i in range(n)])
    v_ref = torch.einsum("ifgx,fgh->ifhx", v_ref, atoms.agh)
    assert torch.allclose(s[..., :f, :].reshape(n, f, shells), s_ref, atol=1e-12)
    assert torch.allclose(p[..., :f, :].reshape(n, f, h), (v_ref ** 2).sum(-1), atol=1e-12)
