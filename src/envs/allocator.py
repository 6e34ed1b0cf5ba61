"""Keep freed memory in the process (glibc): the envs allocate fresh multi-MB tensors every step.

By default glibc serves allocations from 128 KB up with their own mappings and gives them back
to the OS on free, so every step's new observation tensor (2 MB for 1024 envs of 32 x 16) is
faulted in page by page again: on these machines that costs more than the kernel step itself.
``keep_freed_memory`` raises the mapping threshold to 64 MB and the trim threshold to 256 MB, so
such blocks are reused from the heap. A no-op where the C library is not glibc.
"""

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_BYTES = 64 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


def keep_freed_memory() -> bool:
    """Apply the thresholds; True if the C library took them."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (macOS, musl without mallopt): its allocator's own policy stands
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
