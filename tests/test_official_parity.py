"""Official AIMNet2 parity: every member of both official ensembles, imported as fidelity 0,
reproduces the official TorchScript model (energy 5e-4 eV, forces 1e-4 eV/Å, charges 1e-5 e),
in memory and through the exported .jpt."""

import molecules
import pytest
import torch

from aimnet2mult.export import build_potential, export_potential, load_potential
from aimnet2mult.import_official import official_member_checkpoint

E_TOL, F_TOL, Q_TOL = 5e-4, 1e-4, 1e-5


def _inputs(names):
    coord, numbers, charge = molecules.batch(names)
    return {"coord": torch.tensor(coord), "numbers": torch.tensor(numbers), "charge": torch.tensor(charge)}


def _official(member, inp):
    out = member({k: v.clone() for k, v in inp.items()})
    return {k: out[k].detach() for k in ("energy", "forces", "charges")}


def _compare(ours, ref, label):
    de = (ours["energy"] - ref["energy"]).abs().max().item()
    df = (ours["forces"] - ref["forces"]).abs().max().item()
    dq = (ours["charges"] - ref["charges"]).abs().max().item()
    assert de < E_TOL, f"{label}: energy off by {de:.2e} eV"
    assert df < F_TOL, f"{label}: forces off by {df:.2e} eV/Å"
    assert dq < Q_TOL, f"{label}: charges off by {dq:.2e} e"


CASES = [(tag, m) for tag in ("wb97m-d3", "b973c") for m in range(4)]


@pytest.mark.parametrize("tag,member", CASES)
def test_member_parity(tag, member, tmp_path, wb97m_file, b973c_file):
    path = wb97m_file if tag == "wb97m-d3" else b973c_file
    official = getattr(torch.jit.load(str(path)).models, str(member))
    ckpt = official_member_checkpoint(path, member)
    pot = build_potential(ckpt, 0)
    jpt, meta = load_potential(export_potential(ckpt, 0, tmp_path / "official"))
    assert meta["dispersion"]["s8"] == pytest.approx(float(official.module.outputs.d3bj.s8))
    cases = [[name] for name in molecules.PARITY_SET] + [["CH3CH2OH", "OH-", "C6H6", "CH3Br"]]
    for names in cases:
        inp = _inputs(names)
        ref = _official(official, inp)
        _compare(pot(dict(inp)), ref, f"{tag}[{member}] {names} in memory")
        _compare(jpt(dict(inp)), ref, f"{tag}[{member}] {names} exported")


def test_import_records_fidelity_table(wb97m_file):
    ckpt = official_member_checkpoint(wb97m_file, 0)
    entry = ckpt["fidelities"][0]
    assert entry["elements"] == [1, 5, 6, 7, 8, 9, 14, 15, 16, 17, 33, 34, 35, 53]
    assert ckpt["model_config"]["shift_dtype"] == "float32"
    assert entry["dispersion"]["a2"] == pytest.approx(3.128)
    assert entry["dispersion"]["s9"] == 0.0
