"""Training and validation DataLoaders from the ``data:`` section of the training configuration.

For each fidelity ``f`` (indices 0..K-1, no gaps):

1. open ``fidelity_datasets[f]`` (lazy unless ``in_memory``);
2. validation set: ``val_fidelity_datasets[f]`` when given (the whole training file is then used
   for training), else a deterministic ``val_fraction`` split of the training file (seeded by
   ``(seed, f)``; at least one validation molecule when the file has two or more and
   ``val_fraction > 0``). Validation molecules containing an element that no training molecule
   has are moved to the training split (logged), so that every element gets an SAE and is trained;
3. SAE: read ``sae.energy.files[f]`` when given, else fitted on the training split
   (:func:`aimnet2mult.data.sae.fit_sae`);
4. checks before any training: every element of the training and validation data has an SAE entry
   of its fidelity, and every atomic number is below ``fidelity_offset``.

Relative paths resolve against the current working directory. Missing keys of ``data_cfg`` take
the packaged defaults (``default_train.yaml``); per-fidelity maps may use int or string keys.
"""

import copy
import logging
import math
import os
from importlib import resources
from typing import Any, Dict, Mapping, Optional, Tuple

import yaml
from torch.utils.data import DataLoader

from ..elements import format_elements, symbol
from ..model_config import ConfigError
from .collate import collate
from .h5dataset import DataError, SizeGroupedDataset, split_indices
from .mixed import MixedFidelityDataset, check_fidelity_indices
from .sae import SAEError, fit_sae, read_sae
from .sampler import MixedFidelityBatchSampler

log = logging.getLogger(__name__)

SAMPLER_KEYS = ("batch_mode", "batch_size", "batches_per_epoch", "shuffle")
LOADER_KEYS = ("num_workers", "pin_memory", "prefetch_factor", "timeout", "persistent_workers",
               "multiprocessing_context")


def default_data_config() -> Dict[str, Any]:
    text = resources.files("aimnet2mult.resources.config").joinpath("default_train.yaml").read_text()
    return yaml.safe_load(text)["data"]


def _merge(base: Dict[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and out[k]:
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(dict(v)) if isinstance(v, Mapping) else copy.deepcopy(v)
    return out


def _fid_map(mapping: Any, where: str) -> Dict[int, Any]:
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"data.{where} must be a mapping of fidelity index -> value, got {mapping!r}")
    out = {}
    for k, v in mapping.items():
        try:
            f = int(k)
        except (TypeError, ValueError):
            raise ConfigError(f"data.{where}: key {k!r} is not a fidelity index (0, 1, ...)") from None
        if f in out:
            raise ConfigError(f"data.{where}: fidelity {f} is given twice")
        out[f] = v
    return out


def _resolve(path: Any) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


def _sampler_kwargs(cfg: Mapping, which: str) -> Dict[str, Any]:
    kwargs = dict(((cfg.get("samplers") or {}).get(which) or {}).get("kwargs") or {})
    unknown = sorted(set(kwargs) - set(SAMPLER_KEYS))
    if unknown:
        raise ConfigError(f"data.samplers.{which}.kwargs: unknown key(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(SAMPLER_KEYS)}")
    return kwargs


def _loader_kwargs(cfg: Mapping, which: str) -> Dict[str, Any]:
    kwargs = dict((cfg.get("loaders") or {}).get(which) or {})
    unknown = sorted(set(kwargs) - set(LOADER_KEYS))
    if unknown:
        raise ConfigError(f"data.loaders.{which}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(LOADER_KEYS)}")
    nw = kwargs.get("num_workers", 0)
    if isinstance(nw, bool) or not isinstance(nw, int) or nw < 0:
        raise ConfigError(f"data.loaders.{which}.num_workers must be a non-negative integer, got {nw!r}")
    kwargs["num_workers"] = nw
    kwargs["pin_memory"] = bool(kwargs.get("pin_memory", False))
    kwargs.setdefault("persistent_workers", nw > 0)
    if nw == 0:
        kwargs["persistent_workers"] = False
        kwargs.pop("prefetch_factor", None)
    return kwargs


def build_loaders(data_cfg: Mapping[str, Any], seed: int, fidelity_offset: int, num_replicas: int = 1,
                  rank: int = 0, paused_until_epoch: Optional[Mapping[int, int]] = None
                  ) -> Tuple[DataLoader, Optional[DataLoader], Dict[str, Any]]:
    """(train_loader, val_loader or None, info); see the module docstring.

    ``info``: ``sae`` {f: {Z: eV}}, ``sae_sources`` {f: path or "fitted"}, ``elements`` {f: [Z]},
    ``labels`` {f: sorted label keys}, ``n_train`` {f: n}, ``n_val`` {f: n}, ``files`` {f: path},
    ``val_files`` {f: path or None}, ``weights`` {f: sampling weight}.
    """
    cfg = _merge(default_data_config(), data_cfg or {})
    seed = int(seed)
    fidelity_offset = int(fidelity_offset)
    files = _fid_map(cfg.get("fidelity_datasets"), "fidelity_datasets")
    if not files:
        raise DataError("no training data: set data.fidelity_datasets (e.g. data.fidelity_datasets.0=fid0.h5)")
    fids = check_fidelity_indices(files, "data.fidelity_datasets")
    val_files = _fid_map(cfg.get("val_fidelity_datasets"), "val_fidelity_datasets")
    sae_files = _fid_map(((cfg.get("sae") or {}).get("energy") or {}).get("files"), "sae.energy.files")
    weights = _fid_map(cfg.get("fidelity_weights"), "fidelity_weights")
    for name, mapping in (("val_fidelity_datasets", val_files), ("sae.energy.files", sae_files),
                          ("fidelity_weights", weights)):
        extra = sorted(set(mapping) - set(fids))
        if extra:
            raise DataError(f"data.{name} names fidelit{'y' if len(extra) == 1 else 'ies'} "
                            f"{', '.join(map(str, extra))} that have no training data (have {fids})")
    val_fraction = cfg.get("val_fraction", 0.1)
    try:
        val_fraction = float(0.0 if val_fraction is None else val_fraction)
    except (TypeError, ValueError):
        raise ConfigError(f"data.val_fraction must be a number in [0, 1), got {val_fraction!r}") from None
    if not (0.0 <= val_fraction < 1.0) or math.isnan(val_fraction):
        raise ConfigError(f"data.val_fraction must lie in [0, 1), got {val_fraction}")
    in_memory = bool(cfg.get("in_memory", False))
    train_skw = _sampler_kwargs(cfg, "train")
    val_skw = _sampler_kwargs(cfg, "val")
    train_lkw = _loader_kwargs(cfg, "train")
    val_lkw = _loader_kwargs(cfg, "val")

    train_sets, val_sets = {}, {}
    sae, sae_sources = {}, {}
    info: Dict[str, Any] = {"sae": sae, "sae_sources": sae_sources, "elements": {}, "labels": {},
                            "n_train": {}, "n_val": {}, "files": {}, "val_files": {}, "weights": {}}
    for f in fids:
        path = _resolve(files[f])
        full = SizeGroupedDataset(path, in_memory=in_memory)
        info["files"][f] = path
        if f in val_files:
            vpath = _resolve(val_files[f])
            train_ds, val_ds = full, SizeGroupedDataset(vpath, in_memory=in_memory)
            info["val_files"][f] = vpath
        else:
            tr, va = split_indices(len(full), val_fraction, seed=[seed, f])
            train_ds, val_ds = full.subset(tr), full.subset(va)
            extra = sorted(set(val_ds.elements) - set(train_ds.elements))
            if extra:
                cols = [val_ds.elements.index(z) for z in extra]
                move = val_ds.element_counts()[:, cols].any(axis=1)
                log.info("fidelity %d: %d validation molecule(s) moved to training so that every element "
                         "is trained (%s occur only there)", f, int(move.sum()), format_elements(extra))
                tr = sorted(set(tr.tolist()) | set(va[move].tolist()))
                va = va[~move]
                train_ds, val_ds = full.subset(tr), full.subset(va)
            info["val_files"][f] = None
        if f in sae_files:
            spath = _resolve(sae_files[f])
            try:
                sae[f] = read_sae(spath)
            except SAEError as exc:
                raise SAEError(f"data.sae.energy.files.{f}: {exc}") from None
            sae_sources[f] = spath
        else:
            sae[f] = fit_sae(train_ds, seed=seed)
            sae_sources[f] = "fitted"
            if 1 in sae[f] and -0.7 < sae[f][1] < -0.3:
                log.warning("fidelity %d: the SAE of H fitted on %s is %.3f eV, close to the H atom's -0.5 Hartree: "
                            "are the energies in Hartree? This format needs eV (1 Hartree = 27.211 eV)", f, path,
                            sae[f][1])
            log.info("fidelity %d: SAE fitted on %d training molecules of %s: %s", f, len(train_ds), path,
                     ", ".join(f"{symbol(z)} {v:.6f}" for z, v in sae[f].items()))
        elements = sorted(set(train_ds.elements) | set(val_ds.elements))
        too_big = [z for z in elements if z >= fidelity_offset]
        if too_big:
            raise DataError(f"fidelity {f}: atomic number(s) {', '.join(map(str, too_big))} in {path} are not "
                            f"below fidelity_offset={fidelity_offset}")
        train_sets[f], val_sets[f] = train_ds, val_ds
        info["elements"][f] = elements
        info["labels"][f] = sorted(set(train_ds.label_keys) | set(val_ds.label_keys))
        info["n_train"][f] = len(train_ds)
        for ds in (train_ds, val_ds):
            m = ds.mults()
            if len(m) and (m != 1).any():
                info.setdefault("open_shell_data", {})[f] = (ds.path, float(m[m != 1][0]), int((m != 1).sum()))
        info["n_val"][f] = len(val_ds)
        log.info("fidelity %d: %s: %d training, %d validation molecules; elements %s; labels %s", f, path,
                 len(train_ds), len(val_ds), format_elements(elements), ", ".join(info["labels"][f]) or "energy only")

    sources = {f: (f"SAE fitted on the training split of {info['files'][f]}; an element absent from the "
                   "training data cannot be fitted: give an SAE file") if s == "fitted" else f"SAE file {s}"
               for f, s in sae_sources.items()}
    train_mixed = MixedFidelityDataset(train_sets, sae, sources)
    val_mixed = MixedFidelityDataset(val_sets, sae, sources)

    train_sampler = MixedFidelityBatchSampler(train_mixed.fidelity_of, train_mixed.n_atoms, weights=weights,
                                              seed=seed, num_replicas=num_replicas, rank=rank,
                                              paused_until_epoch=paused_until_epoch,
                                              **{"shuffle": True, **train_skw})
    info["weights"] = dict(train_sampler.weights)
    train_loader = DataLoader(train_mixed, batch_sampler=train_sampler, collate_fn=collate, **train_lkw)
    val_loader = None
    if len(val_mixed) > 0:
        val_sampler = MixedFidelityBatchSampler(val_mixed.fidelity_of, val_mixed.n_atoms,
                                                weights=None, seed=seed, num_replicas=num_replicas, rank=rank,
                                                **{"shuffle": False, **val_skw})
        val_loader = DataLoader(val_mixed, batch_sampler=val_sampler, collate_fn=collate, **val_lkw)
    return train_loader, val_loader, info
