"""The benchmark suite of issue 8 in one command (``make bench``): runs every benchmark in its own
subprocess, collects their JSON and prints one table of ratios against the targets.

    python bench/run_all.py [--out bench_out] [--quick] [--only inference openmm scale train]
                            [--omp-wait-policies default PASSIVE]

* ``inference`` — ``bench/bench_inference.py``: energy + forces per call, CPU 2 threads, 10-300 atom
  molecules: aimnet2mult's exported potential / the official AIMNet2 member / the ``aimnet`` package
  (and the same file called with the dense (B, N) contract);
* ``openmm`` — ``bench/bench_openmm.py``: MD steps/s for a 20-atom molecule, aimnet2mult's
  TorchForce and PythonForce against the official member in a plain TorchForce / PythonForce;
* ``scale`` — ``bench/bench_scale.py --json``: periodic water 1.5k / 6k / 12k atoms, time per atom
  and peak memory (default architecture, random weights);
* ``train`` — ``bench/bench_train.py --data <bundled training files>``: training molecules/s and
  the fraction of step time spent waiting for data (its table is parsed into ``train.json``);
* ``engines`` — ``bench/bench_engines.py``: LAMMPS (fix external) NVE steps/s against ASE on the
  same periodic system, and torch-sim batched molecule-steps/s for 64 molecules against 64 ASE runs
  one after another.

Writes into ``--out``: each benchmark's JSON (and ``inference.png``), ``<name>.log`` (its full
output), ``summary.json`` and ``summary.md``. ``--quick`` runs every benchmark with smoke settings.
The exit code is 0 when every benchmark ran (targets missed are reported, not failures).

OpenMP wait policy: ``inference`` and ``openmm`` run once per policy in ``--omp-wait-policies``
(``default`` = ``OMP_WAIT_POLICY`` unset, libgomp's spin-then-sleep, what a user gets;
``PASSIVE`` = waiting threads sleep; ``ACTIVE`` = they spin). The policy changes the ratios on
2 threads: sleeping waits add a thread wake-up to every parallel operator, which costs the dense
all-pairs layout of the official member far more than aimnet2mult's neighbour lists. The first
policy's results are written to ``--out``, the others to ``--out/omp_<policy>/``; ``scale`` and
``train`` run under the first only.
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_inference import cpu_model  # noqa: E402

BENCHES = ["inference", "openmm", "scale", "train", "engines"]
POLICY_SENSITIVE = ("inference", "openmm")  # run once per OpenMP wait policy
POLICIES = ("default", "PASSIVE", "ACTIVE")


def policy_env(policy: str):
    """Environment for a benchmark subprocess under one OpenMP wait policy ('default' = unset)."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    return env


def policy_dir(out: Path, policy: str, first: str) -> Path:
    return out if policy == first else out / f"omp_{policy.lower()}"


def bundled_training_files():
    data = ROOT / "aimnet2mult" / "resources" / "data"
    files = [data / f"{name}_train.h5" for name in ("b3lyp", "gfn2", "gfn1")]
    return [str(f) for f in files if f.is_file()]


def commands(out: Path, quick: bool):
    py = sys.executable
    cmds = {
        "inference": [py, str(HERE / "bench_inference.py"), "--out", str(out)]
        + (["--quick"] if quick else []),
        "openmm": [py, str(HERE / "bench_openmm.py"), "--out", str(out)] + (["--quick"] if quick else []),
        "scale": [py, str(HERE / "bench_scale.py"), "--json", str(out / "scale.json")]
        + (["--sizes", "1500", "3000", "--repeats", "1"] if quick else ["--repeats", "3"]),
        "train": [py, str(HERE / "bench_train.py"), "--iterations", "8" if quick else "60"]
        + (["--data"] + bundled_training_files() if bundled_training_files() else []),
        "engines": [py, str(HERE / "bench_engines.py"), "--out", str(out)] + (["--quick"] if quick else []),
    }
    return cmds


def run_one(name, cmd, out: Path, policy: str = "default"):
    print(f"\n=== {name} (OpenMP wait policy {policy}): {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    log = out / f"{name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT),
                                env=policy_env(policy))
        lines = []
        for line in proc.stdout:
            f.write(line)
            lines.append(line)
            if not _noise(line):
                sys.stdout.write(line)
                sys.stdout.flush()
        rc = proc.wait()
    return rc, "".join(lines), time.perf_counter() - t0


def _noise(line: str) -> bool:
    """Warp's start-up banner and similar lines that say nothing about the benchmark."""
    s = line.strip()
    return (s.startswith("Warp ") or s.startswith('"cpu"') or s in ("Devices:", "Kernel cache:")
            or "CUDA driver not available" in s or s.startswith("CUDA Toolkit") or "/.cache/warp" in s
            or "Could not find or load the NVIDIA CUDA driver" in s)


_TRAIN_ROW = re.compile(r"^(?P<label>.+?)\s+(?P<rate>[\d.]+)\s+(?P<wait>[\d.]+)%\s+(?P<ratio>[\d.]+)x\s*$")


def parse_train(text: str):
    rows = []
    for line in text.splitlines():
        m = _TRAIN_ROW.match(line.strip())
        if m:
            rows.append({"loader": m.group("label").strip(), "molecules_per_s": float(m.group("rate")),
                         "data_wait_fraction": float(m.group("wait")) / 100.0,
                         "ratio_vs_in_memory": float(m.group("ratio"))})
    return rows


def load_json(path: Path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def inference_rows(inf, tag: str):
    rows = []
    for r in inf["rows"]:
        ms = r["ms_per_call"]
        msg = " / ".join(f"{k} {v:.1f}" for k, v in ms.items())
        tgt = inf["targets"]["atoms_range"]
        in_range = tgt[0] <= r["target_atoms"] <= tgt[1]
        rows.append(("inference", f"{r['atoms']} atoms: ours/official{tag}", _fmt(r["ratio_vs_official"]) + "x",
                     f"<= {inf['targets']['vs_official']}" if in_range else "(info)",
                     _verdict(r["ratio_vs_official"] <= inf["targets"]["vs_official"]) if in_range else "",
                     f"ms/call {msg}"))
        if r.get("block", 1) > 1:
            rows.append(("inference", f"{r['atoms']} atoms: ours/official, cold calls{tag}",
                         _fmt(r["ratio_vs_official_cold"]) + "x", "(info)", "",
                         "first call of each block, after the other arms ran"))
        if "aimnet2mult_dense" in ms:
            ratio = ms["aimnet2mult_dense"] / ms["official"]
            rows.append(("inference", f"{r['atoms']} atoms: ours, dense input (B, N)/official{tag}",
                         _fmt(ratio) + "x", f"<= {inf['targets']['vs_official']}" if in_range else "(info)",
                         _verdict(ratio <= inf["targets"]["vs_official"]) if in_range else "",
                         "the original Inference contract; the file runs its flat path on the real atoms"))
        if "matmul_floor_vs_official" in r:
            rows.append(("inference", f"{r['atoms']} atoms: dense-layer products alone/official{tag}",
                         _fmt(r["matmul_floor_vs_official"]) + "x", "(info)", "",
                         "forward + input-gradient matrix products of the same weights by BLAS, as the "
                         "peers run them"))
        if r.get("matmul_onednn_vs_official") is not None:
            rows.append(("inference", f"{r['atoms']} atoms: oneDNN dense-layer products alone/official{tag}",
                         _fmt(r["matmul_onednn_vs_official"]) + "x", "(info)", "",
                         "the same products by oneDNN with packed weights, as aimnet2mult runs them"))
        if r["ratio_vs_aimnet"] is not None:
            rows.append(("inference", f"{r['atoms']} atoms: ours/aimnet{tag}", _fmt(r["ratio_vs_aimnet"]) + "x",
                         f"<= {inf['targets']['vs_aimnet']}" if in_range else "(info)",
                         _verdict(r["ratio_vs_aimnet"] <= inf["targets"]["vs_aimnet"]) if in_range else "", ""))
    d_off = max(r["checks"]["official"]["dE_eV"] for r in inf["rows"])
    rows.append(("inference", f"max abs dE, ours vs official{tag}", f"{d_off:.1e} eV",
                 f"<= {inf['targets']['energy_eV']}", _verdict(d_off <= inf["targets"]["energy_eV"]),
                 "dense, all-pairs D3 and Coulomb"))
    d_a = [r["checks"]["aimnet"]["dE_eV"] for r in inf["rows"] if "aimnet" in r["checks"]]
    if d_a:
        rows.append(("inference", f"max abs dE, ours vs aimnet{tag}", f"{max(d_a):.1e} eV",
                     f"<= {inf['targets']['energy_eV']}", _verdict(max(d_a) <= inf["targets"]["energy_eV"]),
                     "ours exported with float64 atomic shifts, as aimnet keeps them"))
    if inf.get("aimnet_left_out"):
        rows.append(("inference", "aimnet column", "left out", "", "", inf["aimnet_left_out"]))
    return rows


def openmm_rows(omm, tag: str):
    s = omm.get("summary") or {}
    sps = " / ".join(f"{a} {_fmt(v['steps_per_s'], '{:.1f}')}" for a, v in omm["arms"].items())
    if not s:
        return [("openmm", f"ratio{tag}", "-", f">= {omm['target']}", "n/a", f"steps/s {sps}")]
    return [("openmm", f"{omm['atoms']} atoms: fastest ours / fastest official (steps/s){tag}",
             _fmt(s["ratio"]) + "x", f">= {omm['target']}", _verdict(s["met"]), f"steps/s {sps}"),
            ("openmm", f"max abs dE0 between arms{tag}", f"{max(s['energy_dev_eV'].values()):.1e} eV", "<= 0.0001",
             _verdict(s["energies_agree"]), "")]


def summarize(out: Path, status, policies=("default",)):
    """(summary dict, list of table rows (benchmark, measure, value, target, verdict)).

    Rows of the policy-sensitive benchmarks carry their OpenMP wait policy in brackets."""
    rows = []
    summary = {"machine": {"platform": platform.platform(), "cpu_model": cpu_model(),
                           "python": platform.python_version(),
                           "cpu_count": os.cpu_count(), "loadavg_1_5_15_at_end": os.getloadavg(),
                           "omp_wait_policies": list(policies)},
               "date": datetime.datetime.now().isoformat(timespec="seconds"), "status": status, "results": {}}
    try:
        import torch

        summary["machine"]["torch"] = torch.__version__
    except Exception:
        pass

    for policy in policies:
        d = policy_dir(out, policy, policies[0])
        tag = f" [{policy}]"
        inf = load_json(d / "inference.json")
        if inf:
            summary["results"].setdefault("inference", {})[policy] = inf["summary"]
            rows += inference_rows(inf, tag)
    for policy in policies:
        d = policy_dir(out, policy, policies[0])
        omm = load_json(d / "openmm.json")
        if omm:
            s = omm.get("summary") or {}
            summary["results"].setdefault("openmm", {})[policy] = {
                **s, "steps_per_s": {a: v["steps_per_s"] for a, v in omm["arms"].items()}}
            rows += openmm_rows(omm, f" [{policy}]")

    first = f" [{policies[0]}]"
    sc = load_json(out / "scale.json")
    if sc:
        summary["results"]["scale"] = sc
        per = " / ".join(f"{r['atoms']}: {r['per_atom_us']:.0f} us/atom, {r['peak_rss_gb']:.2f} GB"
                         for r in sc["rows"])
        rows.append(("scale", f"water {sc['rows'][0]['atoms']} -> {sc['rows'][-1]['atoms']}: time/atom ratio{first}",
                     _fmt(sc["ratio"]) + "x", f"<= {sc['target']}", _verdict(sc["ratio"] <= sc["target"]),
                     f"{sc['coulomb']}, {sc['neighbor_list']} lists; {per}"))
        vs = sc.get("vs_aimnet") or []
        if vs:
            for r in vs:
                ratio = r.get("time_per_atom_ratio", r.get("ratio"))
                rows.append(("scale", f"water {r['atoms']}: ours/aimnet time per atom{first}", _fmt(ratio) + "x",
                             f"< {sc.get('target_vs_aimnet', 1.0)}",
                             _verdict(ratio < sc.get("target_vs_aimnet", 1.0)), ""))
        else:
            rows.append(("scale", "vs aimnet (time/atom below aimnet's)", "not measured", "", "n/a",
                         str(sc.get("aimnet_left_out") or "no aimnet arm")))

    tr = load_json(out / "train.json")
    if tr:
        summary["results"]["train"] = tr
        for r in tr["rows"]:
            rows.append(("train", f"{r['loader']}: data wait{first}", f"{100 * r['data_wait_fraction']:.1f} %",
                         "< 10 %",
                         _verdict(r["data_wait_fraction"] < 0.10), f"{r['molecules_per_s']:.0f} molecules/s, "
                         f"{r['ratio_vs_in_memory']:.2f}x in-memory"))
    eng = load_json(out / "engines.json")
    if eng:
        summary["results"]["engines"] = eng
        rows += engine_rows(eng, first)
    summary["table"] = [dict(zip(("benchmark", "measure", "value", "target", "verdict", "detail"), r)) for r in rows]
    return summary, rows


def engine_rows(eng, tag: str):
    rows = []
    lmp, tsim = eng.get("lammps") or {}, eng.get("torchsim") or {}
    if "ratio_vs_ase" in lmp:
        rows.append(("engines", f"LAMMPS fix external / ASE, NVE steps/s{tag}", _fmt(lmp["ratio_vs_ase"]) + "x",
                     "(info)", "", f"{lmp['lammps_steps_per_s']:.1f} vs {lmp['ase_steps_per_s']:.1f} steps/s; "
                     f"{lmp['system']}"))
    elif lmp:
        rows.append(("engines", "LAMMPS", "left out", "", "", lmp.get("left_out", "")))
    if "ratio_vs_ase" in tsim:
        rows.append(("engines", f"torch-sim batched / ASE one by one, molecule-steps/s{tag}",
                     _fmt(tsim["ratio_vs_ase"]) + "x", "(info)", "",
                     f"{tsim['batched_molecule_steps_per_s']:.0f} vs {tsim['ase_one_by_one_molecule_steps_per_s']:.0f}"
                     f"; {tsim['systems']} molecules, {tsim['atoms']} atoms"))
    elif tsim:
        rows.append(("engines", "torch-sim", "left out", "", "", tsim.get("left_out", "")))
    return rows


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def print_table(rows):
    widths = [max(len(str(r[i])) for r in rows + [HEAD]) for i in range(5)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*HEAD[:5]))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt.format(*[str(x) for x in r[:5]]))


HEAD = ("benchmark", "measure", "value", "target", "verdict", "detail")


def write_markdown(path: Path, summary, rows, cmdline: str):
    m = summary["machine"]
    lines = [f"# Benchmark summary ({summary['date']})", "",
             f"Command: `{cmdline}`. Machine: {m['platform']}, {m.get('cpu_model', '?')}, {m['cpu_count']} CPUs, "
             f"Python {m['python']}, "
             f"torch {m.get('torch', '?')}; load average at the end "
             f"{tuple(round(x, 2) for x in m['loadavg_1_5_15_at_end'])} "
             "(shared machine: ratios measured side by side in one run, absolute times are noise). "
             "[policy] = the OpenMP wait policy of the run (default = OMP_WAIT_POLICY unset: libgomp's "
             "spin-then-sleep; PASSIVE = sleeping waits).", "",
             "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for r in rows:
        lines.append("| " + " | ".join(str(x).replace("|", "/") for x in r) + " |")
    lines += ["", "Runs: " + ", ".join(f"{k}: exit {v['exit']}, {v['seconds']:.0f} s"
                                       for k, v in summary["status"].items())]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_out")
    p.add_argument("--quick", action="store_true", help="smoke settings for every benchmark")
    p.add_argument("--only", nargs="+", choices=BENCHES, default=BENCHES)
    p.add_argument("--omp-wait-policies", nargs="+", choices=POLICIES, default=["default", "PASSIVE"],
                   help="OpenMP wait policies for inference and openmm (default: %(default)s; the first is "
                        "also used for scale and train)")
    args = p.parse_args(argv)
    policies = list(dict.fromkeys(args.omp_wait_policies))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    status = {}
    t_all = time.perf_counter()
    for name in args.only:
        for policy in (policies if name in POLICY_SENSITIVE else policies[:1]):
            d = policy_dir(out, policy, policies[0])
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{name}.json").unlink(missing_ok=True)  # never summarise a stale result
            cmd = commands(d, args.quick)[name]
            rc, text, secs = run_one(name, cmd, d, policy)
            key = f"{name} [{policy}]" if name in POLICY_SENSITIVE else name
            status[key] = {"exit": rc, "seconds": secs, "command": cmd, "omp_wait_policy": policy}
            if name == "train" and rc == 0:
                rows = parse_train(text)
                with open(d / "train.json", "w") as f:
                    json.dump({"benchmark": "train", "rows": rows, "omp_wait_policy": policy,
                               "data": cmd[cmd.index("--data") + 1:] if "--data" in cmd else "synthetic",
                               "target_data_wait": 0.10}, f, indent=1)
            if rc != 0:
                print(f"!!! {name} failed (exit {rc}); see {d / (name + '.log')}", flush=True)
    summary, rows = summarize(out, status, policies)
    summary["total_seconds"] = time.perf_counter() - t_all
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    cmdline = "python bench/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_markdown(out / "summary.md", summary, rows, cmdline.strip())
    print(f"\n=== summary ({summary['total_seconds'] / 60:.1f} min; load average now "
          f"{tuple(round(x, 2) for x in os.getloadavg())})")
    if rows:
        print_table(rows)
    print(f"wrote {out / 'summary.json'} and {out / 'summary.md'}")
    return 0 if all(v["exit"] == 0 for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
