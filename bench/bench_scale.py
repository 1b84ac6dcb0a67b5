"""Scaling of the flat neighbour-list layout: time per atom and peak memory for periodic water boxes.

    python bench/bench_scale.py [--sizes 1500 6000 12000] [--repeats 3] [--coulomb dsf]
                                [--neighbor-list torch|vesin] [--device cpu|cuda] [--json out.json]

A potential with the default AIMNet2 architecture (random weights: timing does not depend on
them), D3(BJ) and the chosen Coulomb method evaluates energy, forces and stress of a periodic water
box of each size. Every size runs in a fresh process so its peak memory (max RSS, and the CUDA
allocator peak on a GPU) is its own. It prints, per size: atoms, neighbour-list build time, total
time per evaluation, time per atom, peak memory; then the ratio of the time per atom at the largest
size against the smallest (the peer measured in the same run; target <= 1.3, i.e. O(N)).
"""

import argparse
import json
import resource
import subprocess
import sys
import time

TARGET = 1.3


def one_size(n_atoms: int, repeats: int, coulomb: str, neighbor_list: str, device: str) -> dict:
    import torch

    from aimnet2mult.checkpoint import fidelity_entry, make_checkpoint
    from aimnet2mult.export import build_potential
    from aimnet2mult.model_config import model_config
    from aimnet2mult.nn.model import MultiFidelityAIMNet2
    from aimnet2mult.tools.water import water_box

    torch.manual_seed(0)
    cfg = model_config(None, num_fidelities=1)
    model = MultiFidelityAIMNet2(cfg)
    sae = {1: -13.6, 8: -2040.0}
    ckpt = make_checkpoint(model, cfg, [fidelity_entry(0, "bench", sae=sae,
                                                       dispersion={"method": "d3bj", "functional": "b3lyp"})])
    pot = build_potential(ckpt, 0, coulomb=coulomb, neighbor_list=neighbor_list).to(device)
    atoms = water_box(n_atoms)
    inp = {"coord": torch.tensor(atoms.positions, dtype=torch.float32, device=device),
           "numbers": torch.tensor(atoms.numbers, device=device),
           "cell": torch.tensor(atoms.cell.array, dtype=torch.float32, device=device)}

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    pot(dict(inp))  # warm-up (allocations, first-call overheads)
    sync()
    nl_times, times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pot.neighbor_lists(inp["coord"], inp["cell"])
        sync()
        nl_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = pot(dict(inp))
        sync()
        times.append(time.perf_counter() - t0)
    assert bool(torch.isfinite(out["forces"]).all()), "non-finite forces"
    result = {"atoms": len(atoms), "neighbor_list_s": min(nl_times), "total_s": min(times),
              "per_atom_us": min(times) / len(atoms) * 1e6,
              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}
    if device.startswith("cuda"):
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024 ** 3
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1500, 6000, 12000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--coulomb", default="dsf", choices=["dsf", "ewald"])
    p.add_argument("--neighbor-list", default="torch", choices=["torch", "vesin"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one_size(args.one, args.repeats, args.coulomb, args.neighbor_list, args.device)))
        return 0
    rows = []
    for n in sorted(args.sizes):
        cmd = [sys.executable, __file__, "--one", str(n), "--repeats", str(args.repeats), "--coulomb", args.coulomb,
               "--neighbor-list", args.neighbor_list, "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"size {n} failed (exit {proc.returncode})")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['atoms']:>7d} atoms  lists {r['neighbor_list_s']:7.3f} s  total {r['total_s']:7.3f} s  "
              f"{r['per_atom_us']:8.1f} us/atom  peak RSS {r['peak_rss_gb']:5.2f} GB"
              + (f"  peak CUDA {r['peak_cuda_gb']:5.2f} GB" if "peak_cuda_gb" in r else ""), flush=True)
    ratio = rows[-1]["per_atom_us"] / rows[0]["per_atom_us"]
    print(f"time per atom at {rows[-1]['atoms']} atoms / at {rows[0]['atoms']} atoms: {ratio:.2f} "
          f"(target <= {TARGET}; {args.coulomb}, {args.neighbor_list} lists, {args.device})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "ratio": ratio, "target": TARGET, "coulomb": args.coulomb,
                       "neighbor_list": args.neighbor_list, "device": args.device}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
