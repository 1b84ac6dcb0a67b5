"""Keep freed memory inside the process (glibc), for large systems on CPU.

glibc serves every allocation above its mmap threshold (at most 32 MB by default) with a fresh
``mmap`` and returns it with ``munmap`` when freed. A 12k-atom periodic system allocates
temporaries of hundreds of MB at every call, so each call page-faults (and zeroes) gigabytes
again: on a 2-core machine this made the time per atom at 12k atoms 2.4x that at 1.5k. Heap
trimming must be off too, not merely set to its largest finite value: a 12k-atom call frees 2.6 GB
at the top of the heap, which glibc otherwise gives back (brk) and faults in again at the next call
(1.3-1.6x). With both, the 12k/1.5k ratio is 0.96x (``bench/bench_scale.py``). The cost: the process keeps its
peak memory instead of returning it to the system between calls. ``aimnet2mult md`` and the
scaling benchmark call :func:`keep_freed_memory`; library users opt in by calling it once.
"""

import ctypes
import sys

#: mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2 ** 31 - 1
_NEVER = -1


def keep_freed_memory() -> bool:
    """Raise glibc's mmap threshold to its maximum and turn heap trimming off (process-wide). Returns True when
    applied, False where the C library is not glibc (nothing is changed there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # -1 disables trimming altogether (glibc reads it as SIZE_MAX); INT_MAX, the largest positive
    # value, still let a 12k-atom call give back its top 2.6 GB of heap and fault it in again.
    results = [mallopt(_M_MMAP_THRESHOLD, _INT_MAX), mallopt(_M_TRIM_THRESHOLD, _NEVER),
               mallopt(_M_TOP_PAD, 1 << 28)]
    return all(r == 1 for r in results)
