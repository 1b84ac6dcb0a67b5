"""Workdir layout, atomic file writes, run lock and progress reporting.

Everything the ``run`` command produces goes into one work directory::

    WORKDIR/
      config.json              settings of the run (fixed at the first ``run``)
      plan.json                molecules, per-molecule conformer counts, held-out molecules, splits
      run.log                  log with per-stage progress lines (counts, rate, ETA)
      conformers/<key>.npz     sampled geometries of one molecule (pools "xtb" and "dft")
      labels/gfn2/<key>.npz    GFN2-xTB energy/forces/charges for the xtb pool of one molecule
      labels/gfn1/<key>.npz    GFN1-xTB energies for the xtb pool of one molecule
      labels/dft/<key>/<i>.npz one B3LYP label (``<i>.failed.json`` when the SCF failed)
      selfcheck/<level>.json   finite-difference force checks
      DONE.json                written when all stages have finished

Every file is written to a temporary name in the same directory and moved into place with
``os.replace``, so an interrupted run never leaves a half-written file under a final name; a
restarted ``run`` skips every file that exists.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LOGGER_NAME = "aimnet2mult.datagen"


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def tmp_path_for(path: Path) -> str:
    """A fresh temporary file next to ``path`` with ordinary (umask) permissions."""
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def atomic_write_npz(path: str | os.PathLike, **arrays: Any) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class Workdir:
    """Paths inside a datagen work directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def log(self) -> Path:
        return self.root / "run.log"

    @property
    def done(self) -> Path:
        return self.root / "DONE.json"

    @property
    def lockfile(self) -> Path:
        return self.root / ".lock"

    def conformers(self, key: str) -> Path:
        return self.root / "conformers" / f"{key}.npz"

    def xtb_label(self, level_tag: str, key: str) -> Path:
        return self.root / "labels" / level_tag / f"{key}.npz"

    def dft_label(self, key: str, idx: int) -> Path:
        return self.root / "labels" / "dft" / key / f"{idx:04d}.npz"

    def dft_failed(self, key: str, idx: int) -> Path:
        return self.root / "labels" / "dft" / key / f"{idx:04d}.failed.json"

    def selfcheck(self, level_tag: str) -> Path:
        return self.root / "selfcheck" / f"{level_tag}.json"


class RunLock:
    """Exclusive, non-blocking lock on the workdir so two runs never write into it at once."""

    def __init__(self, wd: Workdir):
        self.path = wd.lockfile
        self.fh = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            self.fh = None
            raise RuntimeError(
                f"another `run` holds the lock on {self.path.parent}; wait for it or stop it first"
            ) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{os.getpid()}\n")
        self.fh.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None

    @staticmethod
    def is_held(wd: Workdir) -> bool:
        if not wd.lockfile.exists():
            return False
        with open(wd.lockfile, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return False


def setup_logging(wd: Workdir | None, verbose: bool = True) -> logging.Logger:
    """Log to stdout and (when given a workdir) append to WORKDIR/run.log."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if verbose:
        sh = logging.StreamHandler(sys.stdout)
        sh.setFormatter(fmt)
        logger.addHandler(sh)
    if wd is not None:
        wd.root.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(wd.log)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    logger.propagate = False
    return logger


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def _fmt_seconds(s: float) -> str:
    if not np.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{sec:02d}"


class Progress:
    """Progress of one stage: a tqdm bar on an interactive terminal, and in any case log lines
    (done/total, rate, ETA) at most every ``interval_s`` seconds and at the end."""

    def __init__(self, stage: str, total: int, done: int = 0, unit: str = "item",
                 interval_s: float = 30.0):
        self.stage, self.total, self.done, self.unit = stage, total, done, unit
        self.start_done = done
        self.t0 = self.t_last = time.monotonic()
        self.interval_s = interval_s
        self.log = get_logger()
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=done, desc=stage, unit=unit, leave=True)
            except ImportError:  # pragma: no cover - tqdm is optional
                self.bar = None
        self.log.info("[%s] start: %d/%d %s(s) already done", stage, done, total, unit)

    def eta(self) -> float:
        new = self.done - self.start_done
        if new <= 0:
            return float("nan")
        rate = (time.monotonic() - self.t0) / new
        return rate * (self.total - self.done)

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        now = time.monotonic()
        if now - self.t_last >= self.interval_s or self.done >= self.total:
            self.t_last = now
            new = self.done - self.start_done
            elapsed = now - self.t0
            per = elapsed / new if new else float("nan")
            self.log.info("[%s] %d/%d %s(s) done, %.2f s/%s, elapsed %s, ETA %s%s",
                          self.stage, self.done, self.total, self.unit, per, self.unit,
                          _fmt_seconds(elapsed), _fmt_seconds(self.eta()),
                          f" ({extra})" if extra else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        new = self.done - self.start_done
        self.log.info("[%s] finished: %d/%d (%d new) in %s", self.stage, self.done, self.total,
                      new, _fmt_seconds(time.monotonic() - self.t0))
