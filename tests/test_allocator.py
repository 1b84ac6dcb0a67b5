"""aimnet2mult.tools.allocator: glibc keeps freed memory when asked (checked in a fresh process)."""

import subprocess
import sys

import pytest

CODE = """
import ctypes, resource
from aimnet2mult.tools.allocator import keep_freed_memory
applied = keep_freed_memory()
# a 256 MB block freed and allocated again: with the default mmap threshold every allocation
# page-faults afresh (minor faults grow each time); kept in the heap, the second one does not
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 20
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# trimming: two 1.2 GB blocks (never touched, so only address space) freed back into the top of the
# heap; glibc gives the top back to the system (brk shrinks) once it exceeds the trim threshold, so
# any finite threshold (at most INT_MAX, ~2.1 GB) would shrink it here and a large system would
# fault the whole top in again at every call
libc.sbrk.restype = ctypes.c_void_p
libc.sbrk.argtypes = [ctypes.c_long]
blocks = [libc.malloc(1200 << 20) for _ in range(2)]
grown = libc.sbrk(0)
for p in reversed(blocks):
    libc.free(p)
kept = libc.sbrk(0) >= grown
print(applied, kept, *faults)
"""


FINITE_TRIM = """
libc = ctypes.CDLL("libc.so.6")
applied = libc.mallopt(-3, 2 ** 31 - 1) == 1 and libc.mallopt(-1, 2 ** 31 - 1) == 1
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_a_finite_trim_threshold_gives_the_heap_top_back():
    """The control for the trimming check below: the largest finite threshold still trims."""
    code = CODE.replace("applied = keep_freed_memory()", FINITE_TRIM)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True" and out[1] == "False", out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize("keep", [True, False])
def test_keep_freed_memory_avoids_repeated_page_faults(keep):
    code = CODE if keep else CODE.replace("applied = keep_freed_memory()", "applied = False")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    applied, kept, faults = out[0], out[1], [int(x) for x in out[2:]]
    pages = (256 << 20) // 4096
    if keep:
        assert applied == "True"
        assert faults[1] < pages // 10 and faults[2] < pages // 10, faults
        assert kept == "True", "glibc trimmed the heap top although trimming is disabled"
    else:
        assert all(f > pages // 2 for f in faults), faults
