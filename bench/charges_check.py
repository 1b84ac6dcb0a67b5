"""Partial charges of every fidelity of a checkpoint against GFN2-xTB charges at the same geometries,
and the Coulomb term's size: what a fidelity without charge labels would report, and what its
Coulomb energy uses.

    python bench/charges_check.py --model aimnet2mult/resources/models/default_model.pt \\
        --out bench_out/charges

For the bundled B3LYP test molecules (``b3lyp_test.h5`` and ``b3lyp_test_unseen.h5``) it computes
GFN2-xTB Mulliken charges with tblite (the charge labels of the bundled GFN2 data are of this kind)
and, per fidelity, the network's charges (the ones its Coulomb term uses, whether reported or not):
Pearson r and MAE against GFN2, the mean |Coulomb energy| per molecule and whether the checkpoint
says the fidelity's charges were trained (``trained_outputs``). Writes ``charges.json``.
"""

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import torch

TEST_FILES = ("b3lyp_test.h5", "b3lyp_test_unseen.h5")


def gfn2_charges(numbers, coord, charge):
    from aimnet2mult.datagen.qm import xtb_single

    return xtb_single("gfn2-xtb", numbers, coord, charge=charge)["charges"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled default model)")
    ap.add_argument("--out", default="bench_out/charges")
    args = ap.parse_args()
    from aimnet2mult.calculators.runtime import default_model_path
    from aimnet2mult.checkpoint import build_model, load_checkpoint, trained_outputs
    from aimnet2mult.data.h5dataset import SizeGroupedDataset
    from aimnet2mult.io_utils import atomic_write_text
    from aimnet2mult.units import EV_TO_KCAL_PER_MOL

    path = Path(args.model) if args.model else default_model_path()
    ckpt = load_checkpoint(path)
    model = build_model(ckpt)
    model.eval()
    data_dir = Path(str(resources.files("aimnet2mult.resources.data")))
    mols = []
    for name in TEST_FILES:
        ds = SizeGroupedDataset(data_dir / name)
        for i in range(len(ds)):
            s = ds[i]
            mols.append((s["numbers"], s["coord"].astype(np.float64), float(s["charge"])))
    ref = [gfn2_charges(z, x, q) for z, x, q in mols]
    rows = {}
    for entry in ckpt["fidelities"]:
        k = int(entry["index"])
        pred, e_coul = [], []
        for z, x, q in mols:
            inp = {"coord": torch.tensor(x[None], dtype=torch.float32), "numbers": torch.tensor(z[None]),
                   "charge": torch.tensor([q]), "fidelity": torch.tensor([k])}
            with torch.no_grad():
                out = model(inp)
                pred.append(out["charges"][0].double().numpy())
                if model.coulomb.method != "none":
                    e_coul.append(float(model._coulomb_energy(out["charges"], out)[0]))
        p, r = np.concatenate(pred), np.concatenate(ref)
        rows[k] = {"name": entry["name"], "charges_trained": "charges" in trained_outputs(entry),
                   "pearson_r_vs_gfn2": float(np.corrcoef(p, r)[0, 1]), "mae_vs_gfn2_e": float(np.abs(p - r).mean()),
                   "mean_abs_coulomb_kcal_mol": float(np.abs(e_coul).mean() * EV_TO_KCAL_PER_MOL) if e_coul else 0.0,
                   "n_molecules": len(mols), "n_atoms": int(len(p))}
    print(f"{path}: charges of {len(mols)} bundled B3LYP test molecules against GFN2-xTB (tblite) "
          "at the same geometries")
    print(f"{'fid':>4} {'name':<14}{'trained':>9}{'Pearson r':>11}{'MAE (e)':>9}{'|E_coul| (kcal/mol)':>21}")
    for k, r in rows.items():
        print(f"{k:>4} {r['name']:<14}{str(r['charges_trained']):>9}{r['pearson_r_vs_gfn2']:>11.3f}"
              f"{r['mae_vs_gfn2_e']:>9.3f}{r['mean_abs_coulomb_kcal_mol']:>21.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "charges.json", json.dumps({"model": str(path), "fidelities": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
