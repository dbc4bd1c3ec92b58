"""Keep glibc malloc from handing large numpy temporaries back to the OS after each use.

glibc's default malloc serves blocks above ``M_MMAP_THRESHOLD`` (128 KiB, growing
dynamically up to 32 MiB) with fresh ``mmap`` calls and unmaps them on ``free``, and trims
the heap top above ``M_TRIM_THRESHOLD``. A training step allocates and frees many
multi-megabyte temporaries (im2col buffers, GEMM outputs), so each step pays the page faults
of touching fresh zero pages again. Raising both thresholds makes the freed memory reusable.
"""
import os
import platform
import sys

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 512 << 20


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds; True if both were set.

    Does nothing (returns False) off Linux/glibc, when ``PROTONET_NO_MALLOC_TUNING=1`` is set,
    or on any failure; never raises.
    """
    try:
        if os.environ.get("PROTONET_NO_MALLOC_TUNING", "") not in ("", "0"):
            return False
        if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
            return False
        import ctypes
        libc = ctypes.CDLL(None)
        mallopt = getattr(libc, "mallopt", None)
        if mallopt is None:
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        # mallopt returns 1 on success, 0 on error
        ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    except Exception:  # noqa: BLE001 -- a tuning knob must never break the import
        return False
