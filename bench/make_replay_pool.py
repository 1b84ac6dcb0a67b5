"""Geometries with Si, P, Br and I for the fine-tuning benchmark's replay pool (``bench/data/replay_pool_sipbri.h5``).

    python bench/make_replay_pool.py          # needs RDKit (pip install rdkit); writes the file above

The new level's data (bundled B3LYP) has no Si, P, Br or I, and neither has the bundled GFN2 pool, so
the pretrained fidelity's predictions for those elements are held by nothing during fine-tuning.
This pool covers them with molecules that are **not** in the benchmark's drift set (G2 molecules and
halogen-substituted methanes): RDKit ETKDG conformers, UFF-relaxed, then three rattled copies each
(0.03 Å), geometry only (the fine-tuning labels them with the pretrained model itself).
"""

import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "data" / "replay_pool_sipbri.h5"
SMILES = [
    # silicon
    "C[Si](C)(C)C", "C[Si](C)(C)O", "C[Si](C)(C)O[Si](C)(C)C", "[SiH3]c1ccccc1", "C[Si](C)(Cl)Cl",
    "CO[Si](OC)(OC)OC", "C=C[Si](C)(C)C", "C[Si](C)(C)N", "CC[SiH2]CC", "C[Si](C)(C)C#C",
    # phosphorus
    "CP(C)C", "COP(=O)(OC)OC", "CP(=O)(OC)OC", "OP(=O)(O)O", "CP(C)(C)=O", "c1ccc(cc1)P(C)C",
    "CCOP(=O)(OCC)OCC", "NP(=O)(N)N", "CP(=S)(C)C", "ClP(Cl)Cl",
    # bromine
    "Brc1ccccc1", "CCCBr", "OC(=O)CBr", "OCCBr", "BrC(Br)Br", "CC(C)(C)Br", "Brc1ccc(O)cc1", "BrC=C",
    "CC(=O)CBr", "NC(=O)CBr",
    # iodine
    "Ic1ccccc1", "CCCCI", "NC(=O)CI", "Oc1ccc(I)cc1", "IC=C", "CC(C)I", "OC(=O)CI", "ICCO", "FC(F)(F)I",
    "Ic1ccc(N)cc1",
    # mixed
    "C[Si](C)(C)Br", "Brc1ccc(I)cc1", "CP(C)c1ccc(Br)cc1", "C[Si](C)(C)c1ccc(I)cc1",
]


def main() -> int:
    try:
        from rdkit import Chem
        from rdkit.Chem import AllChem
    except ImportError:
        sys.exit("RDKit is needed to build the pool: pip install rdkit")
    from aimnet2mult.datagen.assemble import Bucket, write_h5

    rng = np.random.default_rng(0)
    bucket = Bucket()
    for smi in SMILES:
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        if AllChem.EmbedMolecule(mol, randomSeed=0) != 0:
            sys.exit(f"RDKit could not embed {smi}")
        AllChem.UFFOptimizeMolecule(mol, maxIters=2000)
        numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
        pos = mol.GetConformer().GetPositions()
        for _ in range(3):
            bucket.add(smi, numbers, pos + rng.normal(scale=0.03, size=pos.shape), 0.0, 1.0, 0.0)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_h5(OUT, bucket)
    print(f"wrote {OUT}: {len(SMILES)} molecules x 3 rattled conformers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
