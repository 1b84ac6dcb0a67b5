"""D3(BJ) module and parameter lookup, checked against the reference implementation dftd3.

Reference: ``dftd3.interface.DispersionModel`` (simple-dftd3), energies in Hartree and gradients
in Hartree/Bohr, converted here with the CODATA 2018 constants of ``aimnet2mult.units``.

Tolerances: energies relative 1e-6 (float64) / 5e-6 (float32); forces absolute 1e-5 eV/Å
(float64) / 2e-5 eV/Å (float32).
"""

import io
import math

import numpy as np
import pytest
import torch
from ase.build import molecule
from dftd3.interface import DispersionModel, RationalDampingParam

from aimnet2mult.dispersion_params import (
    DispersionParameterError,
    available_d3bj_functionals,
    custom_d3bj_parameters,
    d3bj_parameters,
)
from aimnet2mult.nn.dispersion import D3BJ
from aimnet2mult.units import ANGSTROM_TO_BOHR, HARTREE_IN_EV

E_RTOL = {torch.float64: 1e-6, torch.float32: 5e-6}
F_ATOL = {torch.float64: 1e-5, torch.float32: 2e-5}  # eV/Å


# ------------------------------------------------------------------------------------------------
# systems


def _ase(name):
    m = molecule(name)
    return m.numbers.copy(), m.positions.copy()


def _tetrahedral(z_center, z_lig, bond):
    v = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float) / math.sqrt(3.0)
    return np.array([z_center] + [z_lig] * 4), np.vstack([[0.0, 0.0, 0.0], bond * v])


def _ch3x(z_x, cx):
    # C at origin, X on +z, three H at 1.09 Å with H-C-X = 108.5 deg
    ang = math.radians(108.5)
    hs = [[1.09 * math.sin(ang) * math.cos(p), 1.09 * math.sin(ang) * math.sin(p),
           1.09 * math.cos(ang)] for p in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]
    return np.array([6, z_x, 1, 1, 1]), np.vstack([[0, 0, 0], [0, 0, cx], hs])


def _cl_water():
    num, pos = _ase("H2O")
    o, h = pos[0], pos[1]
    u = (h - o) / np.linalg.norm(h - o)
    return np.append(num, 17), np.vstack([pos, o + 3.5 * u])  # Cl 3.5 Å from O along O-H


def _high_cn_cluster():
    # Li inside a shell of 24 H at 1.6 Å: CN(Li) ~ 23.7, far above its reference CNs, so the
    # Gaussian weights underflow and dftd3's fallback (largest reference CN) is exercised.
    n = 24
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    th = np.pi * (1 + 5 ** 0.5) * i
    pts = 1.6 * np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], 1)
    return np.array([3] + [1] * n), np.vstack([[0.0, 0.0, 0.0], pts])


SYSTEMS = {
    "ethanol": _ase("CH3CH2OH"),
    "benzene": _ase("C6H6"),
    "SiH4": _ase("SiH4"),
    "PH3": _ase("PH3"),
    "H2S": _ase("SH2"),
    "CH3Cl": _ase("CH3Cl"),
    "CH3Br": _ch3x(35, 1.93),
    "HI": (np.array([1, 53]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.609]])),
    "I2": (np.array([53, 53]), np.array([[0.0, 0.0, 0.0], [0.1, 0.2, 2.666]])),
    "NH4+": _tetrahedral(7, 1, 1.03),
    "OH-": (np.array([8, 1]), np.array([[0.0, 0.0, 0.0], [0.2, 0.1, 0.95]])),
    "Ar2@4": (np.array([18, 18]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 4.0]])),
    "Ar2@8": (np.array([18, 18]), np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 7.99]])),
    "Cl-...H2O": _cl_water(),
    "Li@H24": _high_cn_cluster(),
}

PARAMS = {
    "wb97x": d3bj_parameters("wb97x"),
    "wb97m": d3bj_parameters("wb97m"),
    "b3lyp": d3bj_parameters("b3lyp"),
    "pbe0": d3bj_parameters("pbe0"),
    "b973c": d3bj_parameters("b973c"),
    "custom": custom_d3bj_parameters(s6=0.9, s8=1.1, a1=0.45, a2=4.2, alp=16.0),
}


# ------------------------------------------------------------------------------------------------
# helpers


def reference(numbers, positions, p, s9):
    """dftd3 energy (eV) and forces (eV/Å); s9 always explicit."""
    model = DispersionModel(np.asarray(numbers), np.asarray(positions) * ANGSTROM_TO_BOHR)
    param = RationalDampingParam(s6=p["s6"], s8=p["s8"], a1=p["a1"], a2=p["a2"], s9=s9,
                                 alp=p["alp"])
    res = model.get_dispersion(param, grad=True)
    energy = float(res["energy"]) * HARTREE_IN_EV
    forces = -np.asarray(res["gradient"]) * HARTREE_IN_EV * ANGSTROM_TO_BOHR
    return energy, forces


def dense_batch(systems, dtype):
    """Padded (B, N) batch: numbers, coord (requires grad)."""
    nmax = max(len(n) for n, _ in systems)
    numbers = torch.zeros(len(systems), nmax, dtype=torch.long)
    coord = torch.zeros(len(systems), nmax, 3, dtype=torch.float64)
    for b, (n, x) in enumerate(systems):
        numbers[b, : len(n)] = torch.as_tensor(n)
        coord[b, : len(n)] = torch.as_tensor(x)
        coord[b, len(n):] = 100.0 + torch.arange(nmax - len(n), dtype=torch.float64)[:, None]
    return numbers, coord.to(dtype).requires_grad_(True)


def dense_pairs(numbers, coord, masked_value=25.0):
    """d_ij (Å) and pair_mask (True = not a real pair) without cdist."""
    n = numbers.shape[1]
    r = coord.unsqueeze(1) - coord.unsqueeze(2)
    pad = numbers == 0
    mask = torch.eye(n, dtype=torch.bool).unsqueeze(0) | pad.unsqueeze(1) | pad.unsqueeze(2)
    d2 = torch.where(mask, torch.full_like(r[..., 0], masked_value), (r * r).sum(-1))
    return torch.sqrt(d2), mask


def run_dense(module, systems, dtype, masked_value=25.0):
    numbers, coord = dense_batch(systems, dtype)
    d_ij, mask = dense_pairs(numbers, coord, masked_value)
    energy = module(numbers, d_ij, mask, {"coord": coord, "numbers": numbers})
    (grad,) = torch.autograd.grad(energy.sum(), coord)
    return energy.detach(), -grad


def assert_matches(module, name, p, s9, dtype):
    numbers, positions = SYSTEMS[name]
    e_ref, f_ref = reference(numbers, positions, p, s9)
    energy, forces = run_dense(module, [(numbers, positions)], dtype)
    assert energy.dtype == torch.float64 and energy.shape == (1,)
    e = float(energy[0].detach())
    assert abs(e - e_ref) <= E_RTOL[dtype] * abs(e_ref), (name, e, e_ref)
    df = np.abs(forces[0].double().numpy() - f_ref).max()
    assert df <= F_ATOL[dtype], (name, df)


# ------------------------------------------------------------------------------------------------
# energies and forces against dftd3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("s9", [0.0, 1.0], ids=["2body", "atm"])
@pytest.mark.parametrize("pname", list(PARAMS))
def test_energy_forces_vs_dftd3(pname, s9, dtype):
    p = PARAMS[pname]
    module = D3BJ(s6=p["s6"], s8=p["s8"], a1=p["a1"], a2=p["a2"], s9=s9, alp=p["alp"])
    for name in SYSTEMS:
        assert_matches(module, name, p, s9, dtype)


@pytest.mark.parametrize("name", ["ethanol", "benzene", "CH3Br", "Cl-...H2O"])
def test_three_body_term_alone(name):
    """The ATM part on its own (E(s9=1) - E(s9=0)) agrees to 1e-5 relative with dftd3."""
    p = PARAMS["pbe0"]
    numbers, positions = SYSTEMS[name]
    ref = reference(numbers, positions, p, 1.0)[0] - reference(numbers, positions, p, 0.0)[0]
    e3 = D3BJ(**dict(p, s9=1.0))
    e2 = D3BJ(**dict(p, s9=0.0))
    ours = float(run_dense(e3, [SYSTEMS[name]], torch.float64)[0][0].detach()
                 - run_dense(e2, [SYSTEMS[name]], torch.float64)[0][0].detach())
    assert abs(ref) > 1e-6  # a visible contribution (either sign)
    assert abs(ours - ref) <= 1e-5 * abs(ref), (ours, ref)


def test_database_values_match_dftd3_library():
    """Our toml parsing reproduces dftd3's built-in parameter sets (energy of ethanol)."""
    numbers, positions = SYSTEMS["ethanol"]
    for name in ["wb97x", "wb97m", "b973c", "b3lyp", "pbe0", "b2plyp"]:
        for atm in (False, True):
            model = DispersionModel(numbers, positions * ANGSTROM_TO_BOHR)
            lib = float(model.get_dispersion(RationalDampingParam(method=name, atm=atm),
                                             grad=False)["energy"])
            p = d3bj_parameters(name, atm=atm)
            ours = float(model.get_dispersion(RationalDampingParam(**p), grad=False)["energy"])
            assert ours == pytest.approx(lib, rel=1e-12), (name, atm)


# ------------------------------------------------------------------------------------------------
# batching, masking, layouts, TorchScript


def test_padded_batch_equals_single_molecules():
    p = dict(PARAMS["b3lyp"], s9=1.0)
    module = D3BJ(**p)
    systems = [SYSTEMS["benzene"], SYSTEMS["Ar2@4"], SYSTEMS["Cl-...H2O"]]
    energy, forces = run_dense(module, systems, torch.float64)
    assert energy.shape == (3,)
    for b, s in enumerate(systems):
        e1, f1 = run_dense(module, [s], torch.float64)
        n = len(s[0])
        assert float(energy[b]) == pytest.approx(float(e1[0]), rel=1e-12, abs=0.0)
        assert torch.allclose(forces[b, :n], f1[0], rtol=0.0, atol=1e-12)
        assert torch.all(forces[b, n:] == 0.0)  # padding atoms feel nothing
    assert torch.isfinite(forces).all()


@pytest.mark.parametrize("s9", [0.0, 1.0])
def test_masked_pairs_contribute_nothing(s9):
    module = D3BJ(**dict(PARAMS["pbe0"], s9=s9))
    numbers, coord = dense_batch([SYSTEMS["ethanol"], SYSTEMS["HI"]], torch.float64)
    out = []
    for masked_value in (5.0, 0.37, 1e-3):
        d_ij, mask = dense_pairs(numbers, coord, masked_value ** 2)
        d_ij = d_ij.detach().requires_grad_(True)
        energy = module(numbers, d_ij, mask, {"coord": coord})
        (g,) = torch.autograd.grad(energy.sum(), d_ij)
        assert torch.isfinite(g).all()
        assert torch.all(g[mask] == 0.0)
        out.append(energy.detach())
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def _flat(systems):
    """Flat layout: all atoms + trailing dummy, full neighbour lists padded with A-1."""
    nums = [torch.as_tensor(n) for n, _ in systems]
    xyz = [torch.as_tensor(x, dtype=torch.float64) for _, x in systems]
    numbers = torch.cat(nums + [torch.zeros(1, dtype=torch.long)])
    coord = torch.cat(xyz + [torch.zeros(1, 3, dtype=torch.float64)])
    mol_idx = torch.cat([torch.full((len(n),), i) for i, n in enumerate(nums)]
                        + [torch.zeros(1, dtype=torch.long)])
    a = numbers.shape[0]
    m = max(len(n) for n in nums) - 1
    nbmat = torch.full((a, m), a - 1, dtype=torch.long)
    start = 0
    for n in nums:
        idx = torch.arange(start, start + len(n))
        for i in idx.tolist():
            nb = idx[idx != i]
            nbmat[i, : len(nb)] = nb
        start += len(n)
    return {"numbers": numbers, "coord": coord.requires_grad_(True), "nbmat_lr": nbmat,
            "mol_idx": mol_idx, "charge": torch.zeros(len(systems))}


def _flat_pairs(data):
    coord = data["coord"]
    nbmat = data["nbmat_lr"]
    a = coord.shape[0]
    mask = nbmat == a - 1
    mask[a - 1] = True
    r = coord[nbmat] - coord.unsqueeze(1)
    d2 = torch.where(mask, torch.full_like(r[..., 0], 25.0), (r * r).sum(-1))
    return torch.sqrt(d2), mask


def test_flat_layout_matches_dense_and_refuses_atm():
    systems = [SYSTEMS["ethanol"], SYSTEMS["CH3Br"], SYSTEMS["Ar2@8"]]
    module = D3BJ(**PARAMS["wb97m"])
    data = _flat(systems)
    d_ij, mask = _flat_pairs(data)
    energy = module(data["numbers"], d_ij, mask, data, "nbmat_lr")
    (g,) = torch.autograd.grad(energy.sum(), data["coord"])
    e_dense, f_dense = run_dense(module, systems, torch.float64)
    assert energy.dtype == torch.float64 and energy.shape == (3,)
    assert torch.allclose(energy, e_dense, rtol=1e-12, atol=0.0)
    start = 0
    for b, (n, x) in enumerate(systems):
        e_ref, f_ref = reference(n, x, PARAMS["wb97m"], 0.0)
        assert float(energy[b].detach()) == pytest.approx(e_ref, rel=1e-6)
        f = -g[start:start + len(n)].numpy()
        assert np.abs(f - f_ref).max() <= 1e-5
        start += len(n)
    assert torch.all(g[-1] == 0.0)

    with pytest.raises(RuntimeError, match="only available in the dense layout"):
        D3BJ(**dict(PARAMS["wb97m"], s9=1.0))(data["numbers"], d_ij, mask, data)


def test_torchscript_same_numbers_and_self_contained():
    module = D3BJ(**dict(PARAMS["wb97x"], s9=1.0))
    scripted = torch.jit.script(module)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    systems = [SYSTEMS["ethanol"], SYSTEMS["I2"]]
    for dtype in (torch.float64, torch.float32):
        e0, f0 = run_dense(module, systems, dtype)
        e1, f1 = run_dense(scripted, systems, dtype)
        e2, f2 = run_dense(loaded, systems, dtype)
        assert torch.equal(e0, e1) and torch.equal(e0, e2)
        # scripted graphs may fuse float32 ops differently: forces ~1e-2 eV/Å agree to 1e-8
        tol = 1e-12 if dtype == torch.float64 else 1e-8
        assert torch.allclose(f0, f1, rtol=0, atol=tol) and torch.allclose(f0, f2, rtol=0, atol=tol)
    names = dict(loaded.named_buffers())
    assert {"refc6", "refcn", "r4r2", "rcov", "rvdw"} <= set(names)
    assert names["refc6"].shape[0] >= 95 and torch.all(names["refc6"][0] == 0)
    # flat layout through TorchScript too
    data = _flat(systems)
    d_ij, mask = _flat_pairs(data)
    flat = torch.jit.script(D3BJ(**PARAMS["wb97x"]))(data["numbers"], d_ij, mask, data)
    dense = run_dense(D3BJ(**PARAMS["wb97x"]), systems, torch.float64)[0]
    assert torch.allclose(flat, dense, rtol=1e-12, atol=0.0)


def test_unsupported_element_rejected():
    module = D3BJ(**PARAMS["pbe0"])
    numbers = torch.tensor([[1, 104]])
    d_ij, mask = dense_pairs(numbers, torch.tensor([[[0.0, 0, 0], [0, 0, 2.0]]]))
    with pytest.raises(ValueError, match="atomic numbers"):
        module(numbers, d_ij, mask, {"coord": torch.zeros(1, 2, 3)})


# ------------------------------------------------------------------------------------------------
# parameter lookup


def test_reference_parameter_values():
    p = d3bj_parameters("wb97x")
    assert (p["s8"], p["a1"], p["a2"], p["s6"], p["s9"]) == (0.2641, 0.0, 5.4959, 1.0, 0.0)
    p = d3bj_parameters("wb97m")
    assert (p["s8"], p["a1"], p["a2"]) == (0.3908, 0.5660, 3.1280)
    p = d3bj_parameters("b973c")
    assert (p["s8"], p["a1"], p["a2"]) == (1.5, 0.37, 4.1)
    assert d3bj_parameters("b3lyp")["a2"] == 4.4211
    assert d3bj_parameters("pbe0")["s8"] == 1.2177
    assert d3bj_parameters("b2plyp")["s6"] == 0.64  # per-functional s6 override
    assert d3bj_parameters("pbe0", atm=True)["s9"] == 1.0
    assert d3bj_parameters("pbe0")["alp"] == 14.0
    assert set(d3bj_parameters("pbe0")) == {"s6", "s8", "a1", "a2", "s9", "alp"}


@pytest.mark.parametrize("alias,key", [
    ("B97-3c", "b973c"), ("WB97X", "wb97x"), ("ωB97M", "wb97m"), ("wb97m-d3bj", "wb97m"),
    ("wB97X-D3(BJ)", "wb97x"), ("PBE0-D3", "pbe0"), ("pbe0-d3bj", "pbe0"), ("  b3lyp ", "b3lyp"),
    ("b3lyp-d3", "b3lyp"), ("cam-b3lyp", "camb3lyp"), ("b97-3c-d3bj", "b973c"),
])
def test_aliases_resolve(alias, key):
    assert d3bj_parameters(alias) == d3bj_parameters(key)


def test_pbe0_d3_is_not_pbe():
    assert d3bj_parameters("pbe0-d3") == d3bj_parameters("pbe0")
    assert d3bj_parameters("pbe0-d3") != d3bj_parameters("pbe")


@pytest.mark.parametrize("name", ["m062x", "M06-2X", "m06-2x-d3"])
def test_functional_without_bj_refused(name):
    with pytest.raises(DispersionParameterError, match="no D3\\(BJ\\)") as info:
        d3bj_parameters(name)
    assert "zero" in str(info.value)


@pytest.mark.parametrize("name", ["b3lpy", "pbe0-d4", "pbe0x", "wb97", "b3", "pbe-0"])
def test_unknown_names_raise(name):
    with pytest.raises(DispersionParameterError) as info:
        d3bj_parameters(name)
    assert name in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_name_lists_near_matches():
    with pytest.raises(DispersionParameterError, match="b3lyp") as info:
        d3bj_parameters("b3lpy")
    assert "Near matches" in str(info.value)


def test_available_functionals():
    names = available_d3bj_functionals()
    for key in ["wb97x", "wb97m", "b973c", "b3lyp", "pbe0"]:
        assert key in names
    assert "m062x" not in names
    assert names == sorted(names)


def test_custom_parameter_validation():
    p = custom_d3bj_parameters(1.0, 0.5, 0.4, 4.0)
    assert p == {"s6": 1.0, "s8": 0.5, "a1": 0.4, "a2": 4.0, "s9": 0.0, "alp": 14.0}
    for bad in [dict(a2=-0.1), dict(s8=float("nan")), dict(a1=float("inf")), dict(s6=-1.0),
                dict(alp=0.0), dict(s9="1"), dict(s8=True)]:
        kw = dict(s6=1.0, s8=0.5, a1=0.4, a2=4.0)
        kw.update(bad)
        with pytest.raises(DispersionParameterError):
            custom_d3bj_parameters(**kw)
    with pytest.raises(DispersionParameterError):
        D3BJ(s6=1.0, s8=1.0, a1=0.4, a2=-1.0)


def test_from_params():
    m = D3BJ.from_params(d3bj_parameters("pbe0-d3", atm=True))
    assert (m.s6, m.s8, m.a1, m.a2, m.s9, m.alp) == (1.0, 1.2177, 0.4145, 4.8593, 1.0, 14.0)


@pytest.mark.parametrize("pname", ["wb97m", "b973c", "custom"])
def test_hand_written_distance_gradient_vs_dftd3(pname):
    """``energy_and_distance_grad`` (the exported potentials' D3 forces): energy and forces, via
    one autograd product through the distances of a half pair list, equal dftd3's."""
    p = PARAMS[pname]
    module = torch.jit.script(D3BJ(s6=p["s6"], s8=p["s8"], a1=p["a1"], a2=p["a2"], s9=0.0, alp=p["alp"]))
    for name, (numbers, positions) in SYSTEMS.items():
        e_ref, f_ref = reference(numbers, positions, p, 0.0)
        n = len(numbers)
        coord = torch.tensor(np.asarray(positions), dtype=torch.float64, requires_grad=True)
        pairs = torch.triu_indices(n, n, 1)
        d_ij = (coord[pairs[1]] - coord[pairs[0]]).norm(dim=-1)
        data = {"coord": torch.cat([coord.detach(), torch.zeros(1, 3, dtype=torch.float64)]),
                "mol_idx": torch.zeros(n + 1, dtype=torch.long), "charge": torch.zeros(1),
                "pairs_lr": pairs}
        z = torch.cat([torch.as_tensor(numbers), torch.zeros(1, dtype=torch.long)])
        with torch.no_grad():
            energy, grad_d = module.energy_and_distance_grad(z, d_ij, data, "pairs_lr", True)
        (grad,) = torch.autograd.grad([d_ij], [coord], grad_outputs=[grad_d])
        assert abs(float(energy[0]) - e_ref) <= E_RTOL[torch.float64] * abs(e_ref), (name, float(energy[0]), e_ref)
        df = np.abs(-grad.numpy() - f_ref).max()
        assert df <= F_ATOL[torch.float64], (name, df)
