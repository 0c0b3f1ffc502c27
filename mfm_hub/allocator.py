"""Keep freed CPU memory in the training process instead of handing it back to the kernel.

PyTorch allocates CPU tensors with ``malloc``. glibc serves large blocks with ``mmap`` (the
threshold adapts, up to 32 MiB) and returns freed memory at the top of the heap to the
kernel, so every training step maps its activations afresh and touches them in page by page
(tens of thousands of page faults per step); with the settings below, none once the heap has
grown to the step's working set (in the first few steps). The step gets faster at the same
peak memory (figures in docs/SPEED.md). The process keeps what it freed mapped until it
exits, which a training process does anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it (glibc's ``mallopt``), for the
    rest of the process. Returns whether the settings took effect: ``False`` where the C
    library is not glibc (macOS, musl) or another allocator is preloaded."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


__all__ = ["keep_freed_memory"]
