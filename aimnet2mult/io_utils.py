"""Atomic file writing: nothing the program writes is ever left half-written."""

import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence, Union


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def refuse_to_overwrite_inputs(outputs: Sequence[Union[str, Path]], inputs: Sequence[Union[str, Path, None]],
                               command: str) -> None:
    """Raise ValueError when one of ``outputs`` is (or links to) one of ``inputs``: a command never
    writes over its own input files."""
    def same(a: Path, b: Path) -> bool:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()

    for out in outputs:
        o = Path(out).expanduser()
        for inp in inputs:
            if inp is None:
                continue
            i = Path(inp).expanduser()
            if same(o, i):
                raise ValueError(f"{command}: refusing to write {o} over the input file {i}; "
                                 "choose another output name")


def atomic_write(path: Union[str, Path], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path``. On any error the temporary file is removed and ``path`` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would surprise users: the umask decides
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)
    return atomic_write(path, _write)
