"""Fine-tune a pretrained model to a new level of theory: add a fidelity, keep the old ones.

    aimnet2mult finetune --load pretrained.pt --data new.h5 --name b3lyp --save finetuned.pt \\
        [--val new_val.h5] [--from-fidelity 0] [--strategy replay|no-replay|frozen] \\
        [--replay-pool geometries.h5 ...] [--replay-weight 0.5] [--dispersion none|NAME|NAME-d4] \\
        [--labels-include-dispersion] [--workdir DIR] [--config extra.yaml] [key=value ...]

``--load``: any checkpoint (a multi-fidelity one, the bundled default model) or an official AIMNet2
TorchScript file (member 0, as ``import-aimnet2`` reads it). The fine-tuned model has the source's
fidelities 0..n-1, unchanged in name, SAE, dispersion and outputs, plus the new fidelity n.

How the new fidelity starts (``initial.pt`` in the work directory, before any optimizer step):

* shared backbone and every source fidelity: copied exactly (their predictions are bit-identical);
* the new fidelity's element-embedding rows and readout (MLP and per-element shifts) are copied
  from ``--from-fidelity``, so its *residual* energy equals the source fidelity's; its SAE is the
  source's plus the per-element shift that best maps the source's energies onto the new labels
  (least squares): it starts as the source level plus a per-element correction, and training
  learns the rest;
* elements of the new data that the source fidelity was never trained on start as the nearest
  trained element by atomic number (ties: the lighter one): its embedding row, shift and SAE, plus
  their own fitted SAE shift.

Strategies (what keeps the pretrained fidelities from drifting while the backbone adapts):

* ``replay`` (default): pseudo-labels of every source fidelity, computed by the loaded model itself
  (network energies without dispersion, forces, and charges where that fidelity was trained on
  charges; float64) on the new
  data's geometries and on the optional ``--replay-pool`` files, are that fidelity's training data,
  drawn with the total sampling weight ``--replay-weight`` (the new data gets the rest). No original
  training data is needed. Use it when the backbone should adapt and the old levels must stay.
* ``no-replay``: the same files serve validation only (sampling weight 0): the backbone adapts to
  the new level alone, and the old fidelities drift (measured by their validation loss).
* ``frozen``: the shared backbone and the source fidelities' readouts do not train
  (``optimizer.force_no_train``); only the new readout does. Zero drift by construction; the new level
  can only re-read the pretrained features. Use it for very little data.

The work directory (default ``<save stem>_finetune`` beside ``--save``) holds the pseudo-label files,
the SAE files, ``initial.pt`` and ``finetune.yaml`` (the training configuration, also usable with
``aimnet2mult-train --load initial.pt --config finetune.yaml``).
"""

import argparse
import copy
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import yaml

from ..checkpoint import CheckpointError, fidelity_entry, load_checkpoint, make_checkpoint, save_checkpoint
from ..model_config import ConfigError

log = logging.getLogger("aimnet2mult.finetune")

STRATEGIES = ("replay", "no-replay", "frozen")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--load", required=True, help="pretrained checkpoint (.pt) or official AIMNet2 file (.jpt)")
    p.add_argument("--data", required=True, help="training data of the new level (HDF5, the seed's layout)")
    p.add_argument("--val", help="validation data of the new level (default: a split of --data)")
    p.add_argument("--name", required=True, help="name of the new fidelity (e.g. b3lyp/6-31g*)")
    p.add_argument("--save", required=True, help="fine-tuned checkpoint to write (.pt)")
    p.add_argument("--from-fidelity", default="0", help="source fidelity the new one starts from (index or name)")
    p.add_argument("--strategy", choices=STRATEGIES, default="replay")
    p.add_argument("--replay-pool", action="append", default=[],
                   help="more geometries (HDF5) for the pseudo-labels of the source fidelities (repeatable)")
    p.add_argument("--replay-weight", type=float, default=0.5,
                   help="total sampling weight of the source fidelities' pseudo-labels (replay; default 0.5)")
    p.add_argument("--dispersion", default="none",
                   help="the new fidelity's dispersion at export: none, a functional (D3(BJ)) or NAME-d4")
    p.add_argument("--labels-include-dispersion", action="store_true",
                   help="the new data's energies already contain that dispersion")
    p.add_argument("--workdir", help="work directory (default: <save stem>_finetune beside --save)")
    p.add_argument("--config", action="append", default=[], help="more training YAML (repeatable; later wins)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run into the same --save")
    p.add_argument("overrides", nargs="*", help="key=value training-configuration overrides")


# ------------------------------------------------------------------------------------ pseudo-labels
def pseudo_label(source: Dict[str, Any], fidelity: int, geometry_files: Sequence[str], out: Path,
                 batch_size: int = 64, warn_uncovered: bool = True) -> int:
    """Write ``out`` (seed layout): the molecules of ``geometry_files`` whose elements ``fidelity``
    supports, labelled by the source checkpoint itself (float64): the network's energies and forces
    without the fidelity's dispersion (what the network itself is trained on; the dispersion is added
    again at export), charges where that fidelity was trained on charges. Returns the number of
    molecules written (0: no file). ``warn_uncovered``: warn when they contain none of some element
    the fidelity was trained on (the training pool's check)."""
    import torch

    from ..data.h5dataset import SizeGroupedDataset
    from ..datagen.assemble import Bucket, write_h5
    from ..elements import symbol
    from ..export import build_potential

    entry = source["fidelities"][fidelity]
    pot = build_potential(source, fidelity, dispersion=None).double()
    supported = {int(z) for z in entry["elements"]}
    bucket = Bucket()
    skipped = 0
    for path in geometry_files:
        ds = SizeGroupedDataset(path, in_memory=True)
        by_size: Dict[int, List[int]] = {}
        for i, n in enumerate(ds.n_atoms):
            by_size.setdefault(int(n), []).append(i)
        for n, idx in sorted(by_size.items()):
            items = [ds[i] for i in idx]
            keep = [s for s in items if set(int(z) for z in s["numbers"]) <= supported]
            skipped += len(items) - len(keep)
            for start in range(0, len(keep), batch_size):
                chunk = keep[start:start + batch_size]
                inp = {"coord": torch.tensor(np.stack([s["coord"] for s in chunk]), dtype=torch.float64),
                       "numbers": torch.tensor(np.stack([s["numbers"] for s in chunk]), dtype=torch.long),
                       "charge": torch.tensor([float(s["charge"]) for s in chunk], dtype=torch.float64),
                       "mult": torch.tensor([float(s["mult"]) for s in chunk], dtype=torch.float64)}
                res = pot(inp)
                charges = res["charges"].numpy() if "charges" in res else None
                for b, s in enumerate(chunk):
                    bucket.add(Path(path).stem, s["numbers"], s["coord"], s["charge"], s["mult"],
                               float(res["energy"][b]), res["forces"][b].numpy(),
                               None if charges is None else charges[b])
        ds.close()
    if skipped:
        log.info("pseudo-labels of fidelity %d: %d molecule(s) with elements it was not trained on left out",
                 fidelity, skipped)
    uncovered = sorted(supported - bucket.elements())
    if warn_uncovered and bucket.n and uncovered:
        log.warning("pseudo-labels of fidelity %d ('%s') cover none of its elements %s: nothing holds its "
                    "predictions for them while the backbone adapts; add --replay-pool geometries that "
                    "contain them", fidelity, entry["name"], ", ".join(symbol(z) for z in uncovered))
    if bucket.n == 0:
        return 0
    write_h5(Path(out), bucket)
    return bucket.n


def sae_relative_to_source(source: Dict[str, Any], k_from: int, data_path: str,
                           batch_size: int = 64) -> Dict[int, float]:
    """SAE of the new fidelity = the source fidelity's SAE + the per-element shift that best maps
    the source's network energies onto the new labels (least squares over the compositions of
    ``data_path``): the new fidelity copies the source's residual, so it starts as close to its
    labels as a per-element correction allows. (A plain SAE fit would double-count atomic energies
    for a source whose network carries them, e.g. the official AIMNet2 members, whose SAE is 0.)"""
    import torch

    from ..data.h5dataset import SizeGroupedDataset
    from ..export import build_potential

    pot = build_potential(source, k_from, dispersion=None).double()
    ds = SizeGroupedDataset(data_path, in_memory=True)
    elements = list(ds.elements)
    counts = ds.element_counts().astype(np.float64)
    diff = np.empty(len(ds))
    by_size: Dict[int, List[int]] = {}
    for i, n in enumerate(ds.n_atoms):
        by_size.setdefault(int(n), []).append(i)
    supported = {int(z) for z in source["fidelities"][k_from]["elements"]}
    for n, idx in sorted(by_size.items()):
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            items = [ds[i] for i in chunk]
            numbers = np.stack([s["numbers"] for s in items])
            # elements the source never saw: predicted as the nearest trained element (as initialised)
            mapped = np.vectorize(lambda z: z if z in supported or z == 0 else nearest_element(z, sorted(supported)))(
                numbers)
            inp = {"coord": torch.tensor(np.stack([s["coord"] for s in items]), dtype=torch.float64),
                   "numbers": torch.tensor(mapped, dtype=torch.long),
                   "charge": torch.tensor([float(s["charge"]) for s in items], dtype=torch.float64),
                   "mult": torch.tensor([float(s["mult"]) for s in items], dtype=torch.float64)}
            pred = pot(inp)["energy"].numpy()
            for b, i in enumerate(chunk):
                diff[i] = float(items[b]["energy"]) - pred[b]
    ds.close()
    shift, *_ = np.linalg.lstsq(counts, diff, rcond=None)
    sae_src = {int(z): float(v) for z, v in source["fidelities"][k_from]["sae"].items()}
    trained = sorted(supported)
    base = {int(z): sae_src.get(int(z) if int(z) in supported else nearest_element(int(z), trained), 0.0)
            for z in elements}
    return {int(z): base[int(z)] + float(shift[j]) for j, z in enumerate(elements)}


# ------------------------------------------------------------------------------------ initial model
def nearest_element(z: int, trained: Sequence[int]) -> int:
    """The trained element nearest to ``z`` by atomic number (ties: the lighter one)."""
    if not trained:
        raise ConfigError("the source fidelity records no trained elements")
    return min(trained, key=lambda t: (abs(int(t) - int(z)), int(t)))


def initial_checkpoint(source: Dict[str, Any], k_from: int, name: str, sae_new: Dict[int, float],
                       new_elements: Sequence[int], dispersion: Optional[Dict[str, Any]],
                       labels_include_dispersion: bool, trained_new: Sequence[str]) -> Dict[str, Any]:
    """The source with one more fidelity, started from ``k_from`` (see the module docstring)."""
    import torch

    from ..nn.model import MultiFidelityAIMNet2
    from .fidelity_init import copy_fidelity
    from .runner import build_model_config
    from .transfer import transfer_weights

    n_src = int(source["model_config"]["num_fidelities"])
    cfg_train = {"data": {"fidelity_datasets": {k: "" for k in range(n_src + 1)}},
                 "fidelity_offset": int(source["model_config"]["fidelity_offset"]),
                 "use_fidelity_readouts": bool(source["model_config"]["use_fidelity_readouts"])}
    model_cfg = build_model_config(cfg_train, None, source)
    model_cfg["shift_dtype"] = source["model_config"].get("shift_dtype", model_cfg["shift_dtype"])
    off = int(model_cfg["fidelity_offset"])
    too_heavy = [z for z in new_elements if int(z) >= off]
    if too_heavy:
        raise ConfigError(f"--data has elements {too_heavy} beyond the model's fidelity_offset {off}")
    model = MultiFidelityAIMNet2(model_cfg)
    sae = {k: {int(z): float(v) for z, v in source["fidelities"][k]["sae"].items()} for k in range(n_src)}
    sae[n_src] = dict(sae_new)
    lines = transfer_weights(model, model_cfg, sae, source)
    lines += copy_fidelity(model, n_src, k_from)
    trained = sorted(int(z) for z in source["fidelities"][k_from]["elements"])
    with torch.no_grad():
        emb = model.backbone.embedding.weight
        for z in sorted(set(int(z) for z in new_elements) - set(trained)):
            near = nearest_element(z, trained)
            emb[n_src * off + z] = emb[n_src * off + near]
            shifts = model.readouts[n_src].shifts if model.use_fidelity_readouts else model.readouts[0].shifts
            base = 0 if model.use_fidelity_readouts else n_src * off
            shifts[base + z] = shifts[base + near]
            lines.append(f"fidelity {n_src}: element {z} (not trained in fidelity {k_from}) starts from element "
                         f"{near}'s embedding row and shift")
    for line in lines:
        log.info("finetune: %s", line)
    fids = []
    for k in range(n_src):
        e = source["fidelities"][k]
        fids.append(fidelity_entry(k, e["name"], sae=sae[k], elements=e["elements"],
                                   labels_include_dispersion=bool(e.get("labels_include_dispersion", False)),
                                   dispersion=copy.deepcopy(e.get("dispersion")),
                                   trained_outputs=e.get("trained_outputs")))
    fids.append(fidelity_entry(n_src, name, sae=sae_new, elements=sorted(int(z) for z in new_elements),
                               labels_include_dispersion=labels_include_dispersion, dispersion=dispersion,
                               trained_outputs=list(trained_new)))
    ckpt = make_checkpoint(model, model_cfg, fids)
    ckpt["source"] = {**dict(source.get("source") or {}), "finetune_from_fidelity": int(k_from)}
    return ckpt


# ------------------------------------------------------------------------------------ the run
def prepare(args) -> Dict[str, Any]:
    """Pseudo-labels, SAE files, ``initial.pt`` and ``finetune.yaml`` in the work directory;
    returns {"workdir", "initial", "config", "train_config"} (paths and the config dict)."""
    from ..checkpoint import fidelity_index
    from ..data.h5dataset import SizeGroupedDataset
    from ..data.sae import write_sae
    from ..export import resolve_dispersion
    from .runner import load_source

    if not 0.0 <= float(args.replay_weight) < 1.0:
        raise ConfigError(f"--replay-weight must be in [0, 1), got {args.replay_weight}")
    save = Path(args.save)
    work = Path(args.workdir) if args.workdir else save.with_name(f"{save.stem}_finetune")
    work.mkdir(parents=True, exist_ok=True)
    source = load_source(args.load)
    n_src = int(source["model_config"]["num_fidelities"])
    try:
        k_from = fidelity_index(source, int(args.from_fidelity) if str(args.from_fidelity).isdigit()
                                else args.from_fidelity)
    except (KeyError, ValueError, IndexError) as exc:
        raise ConfigError(f"--from-fidelity {args.from_fidelity}: {exc}") from None
    names = [f["name"] for f in source["fidelities"]]
    if args.name in names:
        raise ConfigError(f"--name {args.name!r}: the source already has a fidelity of that name ({names})")
    data = SizeGroupedDataset(args.data, in_memory=False)
    new_elements = list(data.elements)
    labels = [key for key in ("forces", "charges") if key in data.label_keys]
    data.close()
    sae_new = sae_relative_to_source(source, k_from, args.data)
    disp = None if args.dispersion in (None, "none") else resolve_dispersion(args.dispersion, None)
    trained_new = [o for o in ("charges",) if o in labels]
    init = initial_checkpoint(source, k_from, args.name, sae_new, new_elements, disp,
                              bool(args.labels_include_dispersion), trained_new)
    initial = save_checkpoint(init, work / "initial.pt")

    train_files: Dict[int, str] = {}
    val_files: Dict[int, str] = {}
    sae_files: Dict[int, str] = {}
    for k in range(n_src):
        n_train = pseudo_label(source, k, [args.data] + list(args.replay_pool), work / f"replay_fid{k}.h5")
        if n_train == 0:
            raise ConfigError(f"fidelity {k} ('{names[k]}') supports none of the molecules of --data and "
                              "--replay-pool: no pseudo-labels to replay")
        train_files[k] = str(work / f"replay_fid{k}.h5")
        if args.val:
            if pseudo_label(source, k, [args.val], work / f"replay_val_fid{k}.h5", warn_uncovered=False):
                val_files[k] = str(work / f"replay_val_fid{k}.h5")
        sae_files[k] = str(write_sae(init["fidelities"][k]["sae"], work / f"sae_fid{k}.yaml"))
    train_files[n_src] = str(Path(args.data).resolve())
    if args.val:
        val_files[n_src] = str(Path(args.val).resolve())
    sae_files[n_src] = str(write_sae(sae_new, work / f"sae_fid{n_src}.yaml"))
    replay_weight = float(args.replay_weight) if args.strategy == "replay" else 0.0
    weights = {k: replay_weight / n_src for k in range(n_src)}
    weights[n_src] = 1.0 - replay_weight
    cfg: Dict[str, Any] = {
        # fine-tuning steps: a tenth of the from-scratch learning rate (5e-4 moved the pretrained
        # fidelity by ~8 kcal/mol in 5 steps of the official member); override with optimizer.kwargs.lr
        "optimizer": {"kwargs": {"lr": 5.0e-5}},
        "fidelity_offset": int(init["model_config"]["fidelity_offset"]),
        "use_fidelity_readouts": bool(init["model_config"]["use_fidelity_readouts"]),
        "fidelity_names": {k: f["name"] for k, f in enumerate(init["fidelities"])},
        "data": {
            "fidelity_datasets": train_files,
            "val_fidelity_datasets": val_files,
            "fidelity_weights": weights,
            "sae": {"energy": {"files": sae_files}},
            # the pseudo-labels are network energies (no dispersion); the source's own flag is restored after
            "labels_include_dispersion": {**{k: False for k in range(n_src)},
                                          n_src: bool(args.labels_include_dispersion)},
            "dispersion": {k: f.get("dispersion") for k, f in enumerate(init["fidelities"]) if f.get("dispersion")},
        },
    }
    if args.strategy == "frozen":
        frozen = [r"backbone\..*"]
        if init["model_config"]["use_fidelity_readouts"]:
            frozen += [rf"readouts\.{k}\..*" for k in range(n_src)]
        else:
            frozen += [r"readouts\.0\.mlp\..*"]
        cfg["optimizer"]["force_no_train"] = frozen
    path = work / "finetune.yaml"
    from ..io_utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    return {"workdir": work, "initial": initial, "config": path, "train_config": cfg}


def restore_source_fidelities(path: str, initial: Dict[str, Any]) -> None:
    """The trainer records a fidelity's elements, outputs and label convention from its data (here
    the pseudo-labels); a source fidelity keeps its own: every element it was trained on (the
    pseudo-labels may cover fewer), its SAE, its trained outputs and whether its original labels
    include dispersion (which ``evaluate`` needs)."""
    ckpt = load_checkpoint(path)
    for k, entry in enumerate(initial["fidelities"][:-1]):
        fid = ckpt["fidelities"][k]
        fid["elements"] = sorted(set(int(z) for z in fid["elements"]) | set(int(z) for z in entry["elements"]))
        for key in ("sae", "trained_outputs", "labels_include_dispersion", "dispersion", "name"):
            if key in entry:
                fid[key] = copy.deepcopy(entry[key])
    save_checkpoint(ckpt, path)


def run(args) -> int:
    import sys

    from ..data.h5dataset import DataError
    from .config import load_train_config
    from .runner import run_training

    try:
        prepared = prepare(args)
        cfg = load_train_config([str(prepared["config"])] + list(args.config), list(args.overrides))
        made = prepared["train_config"]
        for key in ("fidelity_offset", "use_fidelity_readouts"):
            if cfg[key] != made[key]:
                raise ConfigError(f"finetune keeps the source's {key} ({made[key]!r}); the configuration asks for "
                                  f"{cfg[key]!r}")
        if sorted(int(k) for k in cfg["data"]["fidelity_datasets"]) != sorted(made["data"]["fidelity_datasets"]):
            raise ConfigError("finetune sets data.fidelity_datasets itself (the source fidelities' pseudo-labels "
                              "and --data); do not override them")
        path = run_training(cfg, args.save, load=str(prepared["initial"]), progress=not args.no_progress,
                            overwrite=args.overwrite)
        restore_source_fidelities(path, load_checkpoint(prepared["initial"]))
    except (ConfigError, CheckpointError, DataError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved {path} (work directory {prepared['workdir']})")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from .cli import parse

    parser = argparse.ArgumentParser(prog="aimnet2mult finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parse(parser, argv))
