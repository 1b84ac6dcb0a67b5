"""Atomic file writing: nothing the program writes is ever left half-written."""

import errno
import io
import os
import shutil
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
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc, "", "; the previous file, if any, is unchanged") from None
        raise
    return path


def write_error(path: Union[str, Path], exc: OSError, where: str = "", note: str = "") -> "WriteError":
    """'could not write PATH{where}: why{note}', with the free space when the disk is full."""
    path = Path(path)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = f"no space left on device ({_free(path.parent)} free in {path.parent})"
    else:
        why = exc.strerror or str(exc)
    return WriteError(exc.errno, f"could not write {path}{where}: {why}{note}")


class WriteError(OSError):
    """A file could not be written (the message names it and why: e.g. no space left on device)."""

    def __str__(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else super().__str__()


def _free(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024.0
    return "unknown"


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return atomic_write(path, _write)


def serialized(save: Callable[[io.BytesIO], None]) -> bytes:
    """Bytes of ``save(buffer)`` (torch.save / torch.jit.save into memory): written to disk by
    Python's own I/O, a full disk is an OSError with errno ENOSPC, not a C++ abort or torch's
    'unexpected pos' message."""
    buf = io.BytesIO()
    save(buf)
    return buf.getvalue()


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)
    return atomic_write(path, _write)
