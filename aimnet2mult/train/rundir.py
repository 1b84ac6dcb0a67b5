"""One training run per run directory: a lock, no silent overwrite, no stale temporaries.

``--save DIR/NAME.pt`` owns ``DIR/NAME.pt``, ``DIR/NAME_config.yaml`` and ``DIR/NAME_run/``.
:class:`RunDirectory` (entered before anything is logged or written):

* takes an exclusive lock on ``NAME_run/.lock`` for the life of the process, so a second training
  with the same ``--save`` fails at once instead of interleaving logs and overwriting models;
* refuses a run directory that already holds a run (``NAME.pt``, ``last.pt``, ``best_*.pt``,
  ``history.json``) unless the run resumes (``--resume``) or ``--overwrite`` is given; with
  ``--overwrite`` the previous run's files are removed first (no stale ``best_*.pt`` beside the new
  run's files);
* removes temporaries (``.*.tmp``) left by a killed process, which is safe under the lock.
"""

import fcntl
import logging
import os
from pathlib import Path
from typing import List, Optional

from ..model_config import ConfigError

log = logging.getLogger("aimnet2mult.train")

RUN_FILES = ("last.pt", "history.json", "learning_curves.png", "train.log")
RUN_PATTERNS = ("best_*.pt", "parity_fid*.png")


class RunDirectory:
    def __init__(self, save_path: Path, run_dir: Path, resuming: bool, overwrite: bool):
        self.save_path, self.run_dir = Path(save_path), Path(run_dir)
        self.resuming, self.overwrite = bool(resuming), bool(overwrite)
        self._fh = None
        self.removed_temporaries: List[Path] = []

    def previous_run_files(self) -> List[Path]:
        files = [self.save_path, self.save_path.with_name(f"{self.save_path.stem}_config.yaml")]
        files += [self.run_dir / name for name in RUN_FILES]
        for pattern in RUN_PATTERNS:
            files += sorted(self.run_dir.glob(pattern))
        return [f for f in files if f.exists()]

    def __enter__(self) -> "RunDirectory":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.run_dir / ".lock", "a+")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            self._fh = None
            raise ConfigError(f"another training is running into {self.run_dir} (--save {self.save_path}); "
                              "wait for it, stop it, or choose another --save") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"{os.getpid()}\n")
        self._fh.flush()
        try:
            self._check_previous()
            self._clean_temporaries()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _check_previous(self) -> None:
        previous = [f for f in self.previous_run_files() if f.name != "train.log"]
        if not previous or self.resuming:
            return
        if not self.overwrite:
            names = ", ".join(str(f) for f in previous[:4]) + (" ..." if len(previous) > 4 else "")
            raise ConfigError(f"--save {self.save_path}: a previous run is there ({names}); continue it with "
                              f"--resume {self.run_dir / 'last.pt'}, replace it with --overwrite, or choose "
                              "another --save")
        for f in self.previous_run_files():
            f.unlink()
        log.info("--overwrite: removed the previous run's %d file(s) in %s", len(previous), self.run_dir)

    def _clean_temporaries(self) -> None:
        stale = list(self.run_dir.glob(".*.tmp")) + list(self.save_path.parent.glob(f".{self.save_path.name}.*.tmp"))
        stale += list(self.save_path.parent.glob(f".{self.save_path.stem}_config.yaml.*.tmp"))
        for f in stale:
            f.unlink(missing_ok=True)
        self.removed_temporaries = stale

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def describe_cleanup(rd: Optional[RunDirectory]) -> None:
    if rd is not None and rd.removed_temporaries:
        log.info("removed %d stale temporary file(s) of an interrupted run: %s", len(rd.removed_temporaries),
                 ", ".join(f.name for f in rd.removed_temporaries))
