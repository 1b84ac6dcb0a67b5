"""`make demo`'s pipeline in its reduced form: SAE -> training -> compile -> evaluate -> MD -> summary."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    res = subprocess.run([sys.executable, str(REPO / "examples" / "demo.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, cwd=str(out))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return out, res.stdout


def test_demo_writes_every_artifact(demo_out):
    out, stdout = demo_out
    for k in range(3):
        assert (out / f"sae_fid{k}.yaml").is_file()
        assert (out / f"model_fid{k}.jpt").is_file()
    run = out / "model_run"
    assert (run / "learning_curves.png").stat().st_size > 1000
    for k in range(3):
        assert (run / f"parity_fid{k}.png").stat().st_size > 1000
    for engine in ("ase", "openmm"):
        assert (out / f"md_{engine}_energy.png").stat().st_size > 1000
        rows = list(csv.DictReader((out / f"md_{engine}_energy.csv").open()))
        assert len(rows) >= 2 and all(abs(float(r["epot_eV"])) > 0 for r in rows)
    summary = (out / "summary.md").read_text()
    assert "b3lyp_test_unseen.h5" in summary and "| openmm |" in summary
    assert "# aimnet2mult demo summary" in stdout


def test_demo_uses_the_sae_files_and_records_dispersion(demo_out):
    """The training used the SAE files of step 1, and fidelity 0 exports with D3(BJ) for B3LYP."""
    import yaml

    from aimnet2mult.checkpoint import load_checkpoint
    from aimnet2mult.export import read_metadata

    out, _ = demo_out
    ckpt = load_checkpoint(out / "model.pt")
    for k in range(3):
        sae = yaml.safe_load((out / f"sae_fid{k}.yaml").read_text())
        for z, value in sae.items():
            assert ckpt["fidelities"][k]["sae"][int(z)] == pytest.approx(float(value), abs=1e-9)
    meta = read_metadata(out / "model_fid0.jpt")
    assert meta["dispersion"]["functional"].lower().startswith("b3lyp")
    assert read_metadata(out / "model_fid1.jpt")["dispersion"] is None
    rows = json.loads((out / "summary.json").read_text())["evaluation"]
    assert {Path(r["file"]).name for r in rows} >= {"b3lyp_test.h5", "b3lyp_test_unseen.h5", "gfn2_val.h5"}
