"""Bad input gets a clear error that says what is wrong (in memory and through the .jpt)."""

import molecules
import pytest
import torch
from helpers import as_torch, small_checkpoint

from aimnet2mult.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from aimnet2mult.export import build_potential, export_potential, load_potential


@pytest.fixture(scope="module", params=["memory", "jpt"])
def pot(request, tmp_path_factory):
    ckpt, _ = small_checkpoint(2, dispersion={"method": "d3bj", "functional": "pbe0"})
    if request.param == "memory":
        return build_potential(ckpt, 1)
    path = export_potential(ckpt, 1, tmp_path_factory.mktemp("bad") / "m")
    return torch.jit.load(str(path))


def water():
    return as_torch(*molecules.batch(["H2O"]))


def expect(pot, data, pattern):
    with pytest.raises(Exception, match=pattern) as info:
        pot(data)
    return info


def test_unsupported_element(pot):
    data = water()
    data["numbers"][0, 0] = 26
    expect(pot, data, r"element Fe \(Z=26\) is not supported by fidelity 1 \('level1'\); "
                      r"supported elements: H, C, N, O, F, S, Cl")


def test_coincident_atoms(pot):
    data = water()
    data["coord"][0, 2] = data["coord"][0, 1]
    expect(pot, data, "coincident atoms")


def test_wrong_shapes_and_dtypes(pot):
    data = water()
    # (N, 3) is the legal flat layout; genuinely wrong shapes name both accepted layouts
    flat = pot({"coord": data["coord"][0], "numbers": data["numbers"][0]})
    assert flat["energy"].shape == (1,) and flat["forces"].shape == (3, 3)
    four = torch.cat([data["coord"], torch.zeros(1, 3, 1)], dim=-1)
    expect(pot, {"coord": four, "numbers": data["numbers"]}, r"'coord' must have shape \(B, N, 3\) \(dense batch\) "
           r"or \(N, 3\) \(flat / periodic system\), in Å; got \[1, 3, 4\]")
    expect(pot, {"coord": data["coord"][0, :, :2], "numbers": data["numbers"][0]}, r"or \(N, 3\).*got \[3, 2\]")
    expect(pot, {"coord": data["coord"][0], "numbers": data["numbers"]},
           r"flat input: 'numbers' must have shape \(N,\) = \[3\] to match 'coord' \(N, 3\), got \[1, 3\]")
    expect(pot, {"coord": data["coord"][0], "numbers": data["numbers"][0, :2]},
           r"'numbers' must have shape \(N,\) = \[3\]")
    expect(pot, {"coord": data["coord"][0], "numbers": data["numbers"][0].float()},
           "'numbers' must be an integer tensor")
    expect(pot, {"coord": data["coord"][0].long(), "numbers": data["numbers"][0]}, "'coord' must be a floating-point")
    expect(pot, {"coord": data["coord"], "numbers": data["numbers"].float()}, "'numbers' must be an integer tensor")
    expect(pot, {"coord": data["coord"].long(), "numbers": data["numbers"]}, "'coord' must be a floating-point")
    expect(pot, {"coord": data["coord"], "numbers": data["numbers"][:, :2]}, r"'numbers' must have shape \(B, N\)")
    expect(pot, dict(data, charge=torch.zeros(2)), r"'charge' must have shape \(B,\)")


def test_missing_keys(pot):
    data = water()
    expect(pot, {"numbers": data["numbers"]}, "input lacks 'coord'")
    expect(pot, {"coord": data["coord"]}, "input lacks 'numbers'")


def test_nan_coordinates_and_charge(pot):
    data = water()
    data["coord"][0, 1, 0] = float("nan")
    expect(pot, data, "NaN")
    expect(pot, dict(water(), charge=torch.tensor([float("nan")])), "'charge' contains NaN")


def test_closed_shell_refuses_multiplicity(pot):
    expect(pot, dict(water(), mult=torch.tensor([3.0])), "closed-shell")


def test_all_padding_molecule(pot):
    data = as_torch(*molecules.batch(["H2O", "CH4"]))
    data["numbers"][1] = 0
    expect(pot, data, "no atoms")


def test_files_that_are_not_models(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(CheckpointError, match="cannot be read as an aimnet2mult checkpoint"):
        load_checkpoint(text)
    with pytest.raises(ValueError, match="not a TorchScript potential"):
        load_potential(text)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    ckpt, _ = small_checkpoint(1)
    jpt = export_potential(ckpt, 0, tmp_path / "m")
    with pytest.raises(CheckpointError, match="compiled .jpt potential"):
        load_checkpoint(jpt)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an aimnet2mult checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    save_checkpoint(ckpt, tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt")["format_version"] == 1
