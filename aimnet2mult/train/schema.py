"""Types and ranges of the training configuration, checked when it is loaded (before any work).

Every error names the dotted key and the value. YAML and command-line overrides give strings
for quoted or misspelt values (``'false'``, ``maybe``, ``ten``): those are refused, never coerced
(a non-empty string would otherwise count as True).
"""

import math
from typing import Any, Callable, Dict, Optional

from ..model_config import ConfigError

_MISSING = object()


def _boolean(key: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ConfigError(f"{key} must be true or false, got {v!r}" +
                          (" (a string: write it without quotes)" if isinstance(v, str) else ""))


def _integer(low: Optional[int] = None, allow: tuple = ()) -> Callable[[str, Any], None]:
    def check(key: str, v: Any) -> None:
        if v in allow and not isinstance(v, bool):
            return
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{key} must be an integer, got {v!r}")
        if low is not None and v < low:
            extra = f" (or {', '.join(map(str, allow))})" if allow else ""
            raise ConfigError(f"{key} must be >= {low}{extra}, got {v}")
    return check


def _number(low: Optional[float] = None, strict: bool = False, high: Optional[float] = None,
            nullable: bool = False) -> Callable[[str, Any], None]:
    def check(key: str, v: Any) -> None:
        if v is None and nullable:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{key} must be a finite number{' or null' if nullable else ''}, got {v!r}")
        if low is not None and (v <= low if strict else v < low):
            raise ConfigError(f"{key} must be {'>' if strict else '>='} {low}, got {v}")
        if high is not None and v >= high:
            raise ConfigError(f"{key} must be < {high}, got {v}")
    return check


def _choice(*options: str) -> Callable[[str, Any], None]:
    def check(key: str, v: Any) -> None:
        if v not in options:
            raise ConfigError(f"{key} must be one of {', '.join(options)}, got {v!r}")
    return check


def _count_or_null(key: str, v: Any) -> None:
    """null or 0: off; a positive integer: every that many iterations."""
    if v is not None:
        _integer(0)(key, v)


SCHEMA: Dict[str, Callable[[str, Any], None]] = {
    "seed": _integer(0),
    "deterministic": _boolean,
    "fidelity_offset": _integer(119),
    "use_fidelity_readouts": _boolean,
    "data.val_fraction": _number(0.0, high=1.0, nullable=True),
    "data.in_memory": _boolean,
    "loss.kwargs.components.*.weight": _number(0.0),
    "optimizer.kwargs.lr": _number(0.0),
    "optimizer.kwargs.weight_decay": _number(0.0),
    "trainer.epochs": _integer(1),
    "trainer.grad_clip": _number(0.0, strict=True, nullable=True),
    "checkpoint.n_saved": _integer(1),
    "log_frequency.train": _count_or_null,
    "log_frequency.val": _count_or_null,
    "scheduler.terminate_on_low_lr": _number(0.0, nullable=True),
    "wandb.enabled": _boolean,
    "fidelity_schedule.pretrain_epochs": _integer(0),
}
for _which in ("train", "val"):
    SCHEMA.update({
        f"data.samplers.{_which}.kwargs.batch_size": _integer(1),
        f"data.samplers.{_which}.kwargs.batches_per_epoch": _integer(1, allow=(-1,)),
        f"data.samplers.{_which}.kwargs.shuffle": _boolean,
        f"data.samplers.{_which}.kwargs.batch_mode": _choice("molecules", "atoms"),
        f"data.loaders.{_which}.num_workers": _integer(0),
        f"data.loaders.{_which}.pin_memory": _boolean,
    })


def _get(cfg: Dict[str, Any], parts):
    node: Any = cfg
    for p in parts:
        if not isinstance(node, dict) or p not in node:
            return _MISSING
        node = node[p]
    return node


def check_schema(cfg: Dict[str, Any]) -> None:
    """Raise :class:`ConfigError` for the first key of ``cfg`` whose type or range is wrong."""
    for path, check in SCHEMA.items():
        head, _, tail = path.partition(".*.")
        if tail:
            group = _get(cfg, head.split("."))
            if isinstance(group, dict):
                for name, sub in group.items():
                    value = _get(sub, tail.split(".")) if isinstance(sub, dict) else sub
                    if value is not _MISSING:
                        check(f"{head}.{name}.{tail}", value)
            continue
        value = _get(cfg, path.split("."))
        if value is not _MISSING:
            check(path, value)
