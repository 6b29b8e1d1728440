"""What runs inside Spark's Python workers, kept free of pyspark imports.

Each task limits BLAS to its task's cores (so N workers on N cores do not oversubscribe the
machine) and keeps freed large blocks in the heap (see ``tune_process``).
"""
from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)
_tuned: int | None = None
_limiter = None


def tune_process(blas_threads: int) -> None:
    """Once per process: cap BLAS threads; keep large freed blocks for reuse.

    glibc returns every freed block above its mmap threshold to the kernel, so each step's
    40 MB of temporaries page-fault again (~5 ms per 40 MB here). Raising the threshold keeps
    them in the heap; measured in benchmarks/kernel.py.
    """
    global _tuned, _limiter
    if _tuned == blas_threads:
        return
    import scipy.linalg.blas  # noqa: F401  (load SciPy's own BLAS too, or the limit misses it)
    from threadpoolctl import threadpool_limits
    _limiter = threadpool_limits(limits=blas_threads)
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 512 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except OSError:  # not glibc: keep the default allocator
        log.debug("mallopt not available")
    _tuned = blas_threads


def blas_threads() -> list[int]:
    """Thread counts of the BLAS libraries loaded in this process (for tests)."""
    from threadpoolctl import threadpool_info
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def pid() -> int:
    return os.getpid()
