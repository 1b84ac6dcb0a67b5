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
print(applied, *faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize("keep", [True, False])
def test_keep_freed_memory_avoids_repeated_page_faults(keep):
    code = CODE if keep else CODE.replace("applied = keep_freed_memory()", "applied = False")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    applied, faults = out[0], [int(x) for x in out[1:]]
    pages = (256 << 20) // 4096
    if keep:
        assert applied == "True"
        assert faults[1] < pages // 10 and faults[2] < pages // 10, faults
    else:
        assert all(f > pages // 2 for f in faults), faults
