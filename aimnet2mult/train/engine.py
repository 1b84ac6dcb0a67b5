"""Training and evaluation steps, optimizer and scheduler construction (pytorch-ignite)."""

import importlib
import logging
import re
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from ..model_config import ConfigError
from .loss import MaskedMultiTaskLoss
from .metrics import FidelityMetrics

log = logging.getLogger("aimnet2mult.train")


def import_object(path: str) -> Any:
    module, _, name = str(path).rpartition(".")
    if not module:
        raise ConfigError(f"'{path}' is not a dotted import path (e.g. torch.optim.AdamW)")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"cannot import '{path}'") from None


def to_device(batch: Dict[str, Tensor], device: torch.device) -> Dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def forward(model: nn.Module, batch: Dict[str, Tensor], need_forces: bool, create_graph: bool) -> Dict[str, Tensor]:
    """Model outputs; with ``need_forces`` also forces = -dE/dx (graph kept for training)."""
    if not need_forces:
        return model(batch)
    coord = batch["coord"].detach().requires_grad_(True)
    out = model(dict(batch, coord=coord))
    grad = torch.autograd.grad(out["energy"].sum(), coord, create_graph=create_graph)[0]
    out["forces"] = -grad
    return out


def hold_fidelities(model: nn.Module, fidelities: List[int]) -> List[str]:
    """Keep the parameters that belong to these fidelities alone fixed: their rows of the element
    embedding (the gradient of those rows is zeroed by a hook, so Adam never moves them) and, with
    per-fidelity readouts, their readout heads (``requires_grad`` off). The shared backbone trains.
    Returns the names of the frozen readout parameters (log lines are the caller's)."""
    n_fid = int(model.num_fidelities)
    bad = [k for k in fidelities if not 0 <= k < n_fid]
    if bad:
        raise ConfigError(f"optimizer.hold_fidelities: fidelities {bad} do not exist (the model has {n_fid})")
    if len(set(fidelities)) == n_fid:
        raise ConfigError("optimizer.hold_fidelities: names every fidelity, so no element embedding row would train")
    off = int(model.fidelity_offset)
    emb = model.backbone.embedding.weight
    keep = torch.ones(emb.shape[0], 1, dtype=emb.dtype, device=emb.device)
    for k in fidelities:
        keep[k * off:(k + 1) * off] = 0.0
    emb.register_hook(lambda grad: grad * keep.to(grad.dtype))
    frozen: List[str] = []
    if model.use_fidelity_readouts:
        for k in fidelities:
            for pname, param in model.readouts[k].named_parameters():
                param.requires_grad_(False)
                frozen.append(f"readouts.{k}.{pname}")
    return frozen


def build_optimizer(model: nn.Module, cfg: Dict[str, Any]) -> torch.optim.Optimizer:
    """Optimizer with regex parameter groups; ``force_no_train`` regexes freeze parameters,
    ``hold_fidelities`` a fidelity's own parameters (:func:`hold_fidelities`)."""
    cls = import_object(cfg.get("class", "torch.optim.AdamW"))
    held_cfg = cfg.get("hold_fidelities") or []
    if not isinstance(held_cfg, (list, tuple)) or not all(isinstance(k, int) and not isinstance(k, bool)
                                                          for k in held_cfg):
        raise ConfigError(f"optimizer.hold_fidelities: a list of fidelity indices, got {held_cfg!r}")
    held = list(held_cfg)
    if held:
        names = hold_fidelities(model, held)
        log.info("hold_fidelities %s: their embedding rows%s do not train", held,
                 f" and readouts ({len(names)} tensors)" if names else "")
    frozen = [re.compile(p) for p in cfg.get("force_no_train") or []]
    groups_cfg = cfg.get("param_groups") or {}
    patterns = [(name, re.compile(g["re"]), {k: v for k, v in g.items() if k != "re"})
                for name, g in groups_cfg.items()]
    grouped: Dict[str, List[nn.Parameter]] = {name: [] for name, _, _ in patterns}
    default: List[nn.Parameter] = []
    n_frozen = 0
    for pname, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if any(p.fullmatch(pname) for p in frozen):
            param.requires_grad_(False)
            n_frozen += 1
            continue
        for name, rx, _ in patterns:
            if rx.fullmatch(pname):
                grouped[name].append(param)
                break
        else:
            default.append(param)
    if frozen:
        log.info("force_no_train froze %d parameter tensors", n_frozen)
    groups = [{"params": default}] + [{"params": grouped[name], **opts} for name, _, opts in patterns if grouped[name]]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("no trainable parameters left (check optimizer.force_no_train)")
    try:
        return cls(groups, **(cfg.get("kwargs") or {}))
    except TypeError as exc:
        raise ConfigError(f"optimizer {cfg.get('class')}: {exc}") from None


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Optional[Dict[str, Any]]):
    """(scheduler, how) with how in {'iteration', 'epoch', 'validation', None}."""
    if not cfg or not cfg.get("class"):
        return None, None
    cls = import_object(cfg["class"])
    kwargs = dict(cfg.get("kwargs") or {})
    from ignite.handlers.param_scheduler import LRScheduler, ParamScheduler, ReduceLROnPlateauScheduler

    try:
        if cls is ReduceLROnPlateauScheduler:
            kwargs.setdefault("metric_name", "loss")
            return cls(optimizer, **kwargs), "validation"
        if isinstance(cls, type) and issubclass(cls, ParamScheduler):
            kwargs.setdefault("param_name", "lr")
            return cls(optimizer, **kwargs), "iteration"
        if isinstance(cls, type) and issubclass(cls, torch.optim.lr_scheduler.LRScheduler):
            if cls is torch.optim.lr_scheduler.ReduceLROnPlateau:
                raise ConfigError("use ignite.handlers.param_scheduler.ReduceLROnPlateauScheduler "
                                  "for plateau schedules")
            step = cfg.get("step", "epoch")
            return LRScheduler(cls(optimizer, **kwargs)), step
    except TypeError as exc:
        raise ConfigError(f"scheduler {cfg['class']}: {exc}") from None
    raise ConfigError(f"scheduler class {cfg['class']} is neither an ignite parameter scheduler nor a "
                      "torch.optim.lr_scheduler")


def current_lrs(optimizer: torch.optim.Optimizer) -> List[float]:
    return [float(g["lr"]) for g in optimizer.param_groups]


class TrainStep:
    """ignite process function: one optimizer step on one batch."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: MaskedMultiTaskLoss,
                 device: torch.device, grad_clip: Optional[float]):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.device, self.grad_clip = device, grad_clip
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, engine, batch: Dict[str, Tensor]) -> Dict[str, float]:
        self.model.train()
        batch = to_device(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        out = forward(self.model, batch, self.loss_fn.needs_forces(batch), create_graph=True)
        loss, terms = self.loss_fn(out, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {float(loss)} at iteration {engine.state.iteration} "
                                     "(lower optimizer.kwargs.lr or check the data)")
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_value_(self.params, self.grad_clip)
        self.optimizer.step()
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}


def evaluate(model: nn.Module, loader, loss_fn: MaskedMultiTaskLoss, device: torch.device) -> FidelityMetrics:
    """Validation pass: per-fidelity metrics (forces by autograd, no graph kept)."""
    model.eval()
    metrics = FidelityMetrics()
    for batch in loader:
        batch = to_device(batch, device)
        with torch.enable_grad():
            out = forward(model, batch, "forces" in batch, create_graph=False)
        loss, terms = loss_fn({k: v.detach() for k, v in out.items()}, batch)
        metrics.update(out, batch, terms, loss)
    return metrics


class EpochData:
    """Iterable over a DataLoader that advances the batch sampler's epoch on every new pass, so a
    run resumed after epoch e draws exactly the batches an uninterrupted run draws; with
    ``skip_batches`` the first pass starts at that batch of its epoch (a mid-epoch resume)."""

    def __init__(self, loader, start_epoch: int = 0, skip_batches: int = 0):
        self.loader = loader
        self.epoch = start_epoch
        self.skip_batches = int(skip_batches)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.epoch += 1
        sampler = getattr(self.loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        if self.skip_batches:
            if not hasattr(sampler, "skip_next"):
                raise RuntimeError("resuming mid-epoch needs the mixed-fidelity batch sampler")
            sampler.skip_next(self.skip_batches)
            self.skip_batches = 0
        return iter(self.loader)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def plain_state(obj: Any) -> Any:
    """A copy of a state dict loadable with ``torch.load(weights_only=True)``: numpy arrays and
    scalars become tensors / Python numbers, callables (bound methods some schedulers keep in
    their state) are dropped."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: plain_state(v) for k, v in obj.items() if not callable(v) or isinstance(v, torch.Tensor)}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_state(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def rng_state() -> Dict[str, Any]:
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.copy()), int(pos), int(has_gauss),
                                                      float(cached)], "python": list(random.getstate())}


def set_rng_state(state: Dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def summarize(metrics: Dict[str, float]) -> str:
    keys = ["loss"] + sorted(k for k in metrics if k.endswith("_rmse"))
    return "  ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)

