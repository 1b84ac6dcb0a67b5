"""Smoke run of the benchmark suite (bench/, issue 8): the inference and OpenMM benchmarks run with
their --quick settings and write JSON with finite positive timings, and aimnet2mult's exported
potential gives the official AIMNet2 member's energies. No timing is asserted."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
E_TOL = 1e-4  # eV


def _run(script, out, *extra):
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=300)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_inference_quick(tmp_path):
    stdout = _run("bench_inference.py", tmp_path)
    result = json.loads((tmp_path / "inference.json").read_text())
    assert (tmp_path / "inference.png").stat().st_size > 0
    assert len(result["rows"]) == 2 and all(r["atoms"] > 5 for r in result["rows"])
    for row in result["rows"]:
        assert {"aimnet2mult", "official"} <= set(row["ms_per_call"])
        assert all(_positive(v) for v in row["ms_per_call"].values()), row["ms_per_call"]
        assert _positive(row["ratio_vs_official"])
        check = row["checks"]["official"]
        assert check["dE_eV"] < E_TOL, f"{row['atoms']} atoms: aimnet2mult vs official energy off by {check['dE_eV']}"
        assert check["dF_max_eV_A"] < 1e-4
        if "aimnet" in row["checks"]:  # the aimnet package is optional (not installed by make test)
            assert row["checks"]["aimnet"]["dE_eV"] < E_TOL
            assert _positive(row["ratio_vs_aimnet"])
    if result["aimnet_left_out"]:
        assert "aimnet column left out" in stdout
    assert "ours/official" in stdout


def test_bench_openmm_quick(tmp_path):
    stdout = _run("bench_openmm.py", tmp_path)
    result = json.loads((tmp_path / "openmm.json").read_text())
    assert result["atoms"] == 20
    for arm, v in result["arms"].items():
        assert not v["errors"], f"{arm}: {v['errors']}"
        assert _positive(v["steps_per_s"]), (arm, v)
    s = result["summary"]
    assert _positive(s["ratio"])
    assert s["energies_agree"], s["energy_dev_eV"]
    assert "fastest aimnet2mult" in stdout


@pytest.mark.parametrize("text,expected", [
    ("in memory, 0 workers             209.4        0.6%          1.00x", (209.4, 0.006)),
    ("loader                     molecules/s   data wait   vs in-memory", None),
])
def test_run_all_parses_train_table(text, expected):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import run_all
    finally:
        sys.path.pop(0)
    rows = run_all.parse_train(text)
    if expected is None:
        assert rows == []
    else:
        assert rows[0]["molecules_per_s"] == pytest.approx(expected[0])
        assert rows[0]["data_wait_fraction"] == pytest.approx(expected[1])
