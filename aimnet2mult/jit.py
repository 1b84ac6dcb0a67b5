"""The package's TorchScript calls (script, save, load), without torch's deprecation notice.

From torch 2.10 on every ``torch.jit.script``, ``torch.jit.save`` and ``torch.jit.load`` emits a
FutureWarning ("`torch.jit.script` is deprecated. Please switch to `torch.compile` or
`torch.export`"). The exported potentials are TorchScript files on purpose (OpenMM-Torch and C++
callers load them with ``torch::jit::load``; ``docs/torch-export.md`` records what a move to
``torch.export`` would take), so the notice says nothing a user of this package can act on: the
package's own calls filter it, and only it. Code that calls ``torch.jit`` itself still sees it.
"""

import contextlib
import warnings
from typing import Any, Iterator

import torch

#: the message torch (>= 2.10) gives for torch.jit.script / save / load / trace / freeze ...
DEPRECATION_MESSAGE = r"`torch\.jit\.\w+` is deprecated"


@contextlib.contextmanager
def quiet_deprecation() -> Iterator[None]:
    """Inside: TorchScript's deprecation FutureWarning is not shown (other warnings are)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DEPRECATION_MESSAGE, category=FutureWarning)
        yield


def script(module: Any) -> Any:
    """``torch.jit.script(module)`` without the deprecation notice."""
    with quiet_deprecation():
        return torch.jit.script(module)


def save(module: Any, f: Any, **kwargs: Any) -> None:
    """``torch.jit.save(module, f, **kwargs)`` without the deprecation notice."""
    with quiet_deprecation():
        torch.jit.save(module, f, **kwargs)


def load(f: Any, **kwargs: Any) -> Any:
    """``torch.jit.load(f, **kwargs)`` without the deprecation notice."""
    with quiet_deprecation():
        return torch.jit.load(f, **kwargs)
