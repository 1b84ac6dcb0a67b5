"""The bundled multi-fidelity data: passes the package's own validation, matches its data card."""

import json
from importlib import resources

import pytest

from aimnet2mult.data.h5dataset import SizeGroupedDataset

DATA = resources.files("aimnet2mult.resources.data")
MANIFEST = json.loads(DATA.joinpath("manifest.json").read_text())


def _files():
    return sorted(p.name for p in DATA.iterdir() if p.name.endswith(".h5"))


@pytest.mark.parametrize("name", _files())
def test_bundled_file_validates_and_matches_manifest(name):
    ds = SizeGroupedDataset(str(DATA.joinpath(name)))  # validates on open
    card = DATA.joinpath("DATA_CARD.md").read_text()
    entry = MANIFEST["files"][name]
    count = entry["n_conformers"]
    assert len(ds) == count
    row = next(line for line in card.splitlines() if line.startswith(f"| `{name}`"))
    assert f"| {count} |" in row  # the data card's count matches the file
    assert sum(entry["by_n_atoms"].values()) == count
    assert set(ds.elements) <= {1, 6, 7, 8, 9, 16, 17}
    item = ds[0]
    assert item["energy"].dtype.kind == "f" and item["coord"].shape[1] == 3
    if name.startswith("gfn1"):
        assert not ds.label_keys & {"forces", "charges"}
    if name.startswith("b3lyp"):
        assert "forces" in ds.label_keys and "charges" not in ds.label_keys
    if name.startswith("gfn2"):
        assert {"forces", "charges"} <= ds.label_keys


def test_unseen_molecules_have_no_dft_training_data():
    unseen = set(MANIFEST["unseen_molecules"])
    assert len(unseen) >= 5
    per_split = MANIFEST["molecules_per_split"]
    dft_train = {k: v for k, v in per_split.items() if k.startswith("b3lyp") and not k.endswith("unseen")}
    for split, names in dft_train.items():
        assert not unseen & set(names), split
