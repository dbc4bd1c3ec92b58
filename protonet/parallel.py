"""Split a layer's memory-bound batch work over a few threads.

BLAS runs GEMMs on all cores, but the work between them (im2col, col2im,
pooling taps, transposes) is numpy loops on one core. numpy releases the GIL
inside its loops, so a layer cuts its batch into one part per thread and
runs each part -- its copies and its own GEMMs -- in its own thread, with
BLAS set to one thread meanwhile (two-thread BLAS workers spin between calls
and would take the cores from the parts). On two cores this nearly halves
the memory-bound work and keeps the GEMMs as fast. The GIL is held between
numpy calls, though, so a part should make few large calls rather than many
small ones (im2col is one strided copy for that reason), and :func:`matmul`
covers the small products for which numpy's matmul keeps the GIL.

A net pass holds BLAS at one thread (:func:`blas_held`). After a pass that split its
work, BLAS is left *parked* at one thread rather than given its threads back: raising
OpenBLAS's count wakes its workers, which then spin for about 0.1 s (its default
``OPENBLAS_THREAD_TIMEOUT``) on the cores the next pass's parts need -- measured to
cost batch-8 forwards 25-35%. The next pass that does not split, or
:func:`restore_blas_threads`, gives BLAS its count back.

The thread count is ``PROTONET_NUM_THREADS`` if set, else the first of
``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` that is
set (so one knob limits BLAS and protonet together), else the CPUs this
process may run on, at most :data:`DEFAULT_MAX_THREADS`. Each part gets at
least :data:`MIN_ITEMS` elements of work, so small work stays on the calling
thread: handing it over would cost more than it saves.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import threading

import numpy as np

MIN_ITEMS = 1 << 17  # elements of work below which a part does not pay for its thread
DEFAULT_MAX_THREADS = 8  # without a setting, use at most this many (parts get too small)
_ENV = ("PROTONET_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_lock = threading.Lock()
_threads: int | None = None


def num_threads() -> int:
    """Threads that batch work is split over (read once from the environment)."""
    global _threads
    if _threads is None:
        for name in _ENV:
            value = os.environ.get(name, "").strip()
            if value.isdigit() and int(value) > 0:
                _threads = int(value)
                break
        else:
            try:
                _threads = min(DEFAULT_MAX_THREADS, len(os.sched_getaffinity(0)))
            except AttributeError:  # not Linux
                _threads = min(DEFAULT_MAX_THREADS, os.cpu_count() or 1)
    return _threads


def set_num_threads(n: int | None) -> None:
    """Override the thread count (``None``: read the environment again)."""
    global _threads, _workers
    with _busy, _lock:  # not while a run() has the workers
        if _workers is not None:
            for worker in _workers:
                worker.stop()
            _workers = None
        _threads = None if n is None else max(1, int(n))
        _unpark()


class _Worker:
    """A thread that runs one part at a time.

    The part is handed over and reported back through two locks used as
    binary semaphores: a layer hands its parts over several times per pass,
    and this costs about half of an executor's futures.
    """

    def __init__(self, name: str):
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._job = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            if self._job is None:
                return
            fn, k, s = self._job
            try:
                _inside(fn, k, s)
                self.error = None
            except BaseException as e:  # handed to the caller of run()
                self.error = e
            self._done.release()

    def start(self, fn, k: int, s: slice) -> None:
        self._job = (fn, k, s)
        self._go.release()

    def wait(self) -> BaseException | None:
        """Wait for the part; its exception, if it raised one."""
        self._done.acquire()
        return self.error

    def stop(self) -> None:
        self._job = None
        self._go.release()
        self._thread.join()


_workers: list[_Worker] | None = None
_busy = threading.Lock()  # held by the run() that has the workers


def _get_workers() -> list[_Worker]:
    global _workers
    with _lock:
        if _workers is None:
            _workers = [_Worker(f"protonet-{k}") for k in range(1, max(2, num_threads()))]
        return _workers


def _drop_workers() -> None:
    """Forget the workers without waiting for them: each finishes its part, then idles
    (a daemon thread) until the process ends."""
    global _workers
    with _lock:
        _workers = None


def _forget_workers_in_child() -> None:  # a forked child has the objects but not the threads
    global _workers, _busy
    _workers, _busy = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers_in_child)


def chunks(n: int, parts: int) -> list[slice]:
    """``parts`` contiguous slices covering ``range(n)``, sizes differing by at most 1."""
    parts = max(1, min(parts, n))
    bounds = [n * k // parts for k in range(parts + 1)]
    return [slice(bounds[k], bounds[k + 1]) for k in range(parts)]


#: bytes of one tile of work that passes over its data several times (pooling's taps, a
#: convolution's columns copied and then multiplied): about what stays in cache; such work
#: runs much faster tile by tile
TILE_BYTES = 1 << 22


def tile_items(item_bytes: int, tile_bytes: int | None = None) -> int:
    """How many items of ``item_bytes`` make a tile of about ``tile_bytes`` (default
    :data:`TILE_BYTES`; at least 1)."""
    return max(1, (TILE_BYTES if tile_bytes is None else tile_bytes) // item_bytes)


def tiles(s: slice, item_bytes: int, tile_bytes: int | None = None) -> list[slice]:
    """``s`` cut into consecutive tiles of :func:`tile_items` items (the last may be short)."""
    step = tile_items(item_bytes, tile_bytes)
    return [slice(a, min(a + step, s.stop)) for a in range(s.start, s.stop, step)]


class Parts(list):
    """The parts :func:`split` cut a batch into; ``small`` when the work was kept whole for
    being too little to split (not for being a single image): BLAS's threads would not
    pay for it either, so :func:`run` leaves BLAS as it is."""

    def __init__(self, parts=(), small: bool = False):
        super().__init__(parts)
        self.small = small


def split(n: int, items: int) -> Parts:
    """How to cut a batch of ``n`` whose work touches ``items`` elements.

    One slice per thread when splitting pays (several threads, a BLAS whose
    thread count can be lowered while the parts run, enough work, not
    already inside a part); else the single slice ``0:n``.
    """
    threads = num_threads()
    parts = min(threads, items // max(1, MIN_ITEMS))  # each part gets MIN_ITEMS of work
    if parts < 2 or n < 2 or getattr(_local, "inside", False) or _blas() is None:
        return Parts([slice(0, n)], small=n >= 2 and threads >= 2 and parts < 2)
    return Parts(chunks(n, parts))


def run(fn, parts: list[slice]) -> None:
    """Call ``fn(k, parts[k])`` for every part, concurrently when there are several.

    ``fn`` must write only the rows of its own part (and buffers of its own
    ``k``). BLAS runs single-threaded meanwhile, so the parts' GEMMs do not
    fight BLAS's own threads for the cores. Exceptions reach the caller.
    """
    if len(parts) == 1:
        if getattr(parts, "small", False):  # too little work for any thread to take
            fn(0, parts[0])
            return
        with blas_released():  # work that could not be split (batch 1): BLAS's threads do it
            fn(0, parts[0])
        return
    _split_seen[0] = True
    get_threads, set_threads = _blas()
    before = get_threads()
    if before != 1:
        set_threads(1)
    try:
        _run_parts(fn, parts)
    finally:
        if before != 1:
            set_threads(before)


def _run_parts(fn, parts: list[slice]) -> None:
    """Parts 1.. on the workers, part 0 (and any beyond the workers) here; then raise the
    first error. Without the workers (another thread's run() has them) all parts run here."""
    if not _busy.acquire(blocking=False):
        for k, s in enumerate(parts):
            _inside(fn, k, s)
        return
    try:
        started = list(zip(_get_workers(), range(1, len(parts))))
        for worker, k in started:
            worker.start(fn, k, parts[k])
        errors = []
        try:
            for k in [0] + list(range(len(started) + 1, len(parts))):
                _inside(fn, k, parts[k])
        except BaseException as e:
            errors.append(e)
        finally:
            try:
                errors += [worker.wait() for worker, _ in started]
            except BaseException:  # interrupted while parts still run: new workers next time
                _drop_workers()
                raise
    finally:
        _busy.release()
    errors = [e for e in errors if e is not None]
    if errors:
        raise errors[0]


#: numpy's matmul keeps the GIL through products of at most this many elements
MATMUL_GIL_MAX = 500


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` that releases the GIL: for the products parts compute.

    numpy's matmul deems a product of at most :data:`MATMUL_GIL_MAX` elements
    too small to release the GIL for, however long its inner dimension: a
    convolution's weight gradient ``(O, K)`` summed over a part's
    ``n*Ho*Wo`` positions would then hold up the other parts for its whole
    GEMM. ``np.dot`` releases it; such products go through it, matrix by matrix.
    """
    m, n = a.shape[-2], b.shape[-1]
    if m * n > MATMUL_GIL_MAX:  # the usual case, decided without looking at the stack
        return np.matmul(a, b, out=out)
    stack = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if math.prod(stack) * m * n > MATMUL_GIL_MAX:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty(stack + (m, n), np.result_type(a, b))
    a = np.broadcast_to(a, stack + a.shape[-2:])
    b = np.broadcast_to(b, stack + b.shape[-2:])
    for i in np.ndindex(stack):
        out[i] = np.dot(a[i], b[i])
    return out


_held = [0, None]  # nesting depth of blas_held(), BLAS thread count to give back
_parked = [None]   # BLAS's own thread count while a split pass left it at one thread
_split_seen = [False]  # run() split work during the current held pass


@contextlib.contextmanager
def blas_held():
    """Keep BLAS at one thread for a whole net pass (re-entrant).

    Between the layers' split parts, BLAS's own idle workers would spin on the
    cores the next layer's parts need; with BLAS at one thread throughout,
    every core runs protonet's parts. A no-op when layers do not split. On
    leaving, BLAS gets its threads back only if no work was split: else it
    stays parked at one thread (see the module's docstring).
    """
    blas = _blas() if num_threads() > 1 else None
    if blas is None:
        yield
        return
    with _lock:
        if _held[0] == 0:
            current = blas[0]()
            _held[1] = current if _parked[0] is None else _parked[0]
            _parked[0] = None
            _split_seen[0] = False
            if current != 1:
                blas[1](1)
        _held[0] += 1
    try:
        yield
    finally:
        with _lock:
            _held[0] -= 1
            if _held[0] == 0 and _held[1] != 1:
                if _split_seen[0]:
                    _parked[0] = _held[1]
                else:
                    blas[1](_held[1])


def restore_blas_threads() -> None:
    """Give BLAS back the thread count a split net pass left parked at one thread (for
    user code that runs its own large GEMMs between passes). A no-op otherwise."""
    with _lock:
        _unpark()


def _unpark() -> None:
    """(Under ``_lock``) give a parked BLAS its count back, outside any held pass."""
    if _parked[0] is not None and _held[0] == 0:
        _blas()[1](_parked[0])
        _parked[0] = None


def blas_for(layer) -> contextlib.AbstractContextManager:
    """The BLAS setting ``layer`` runs under in a net pass: :func:`blas_released` for a
    layer that leaves its GEMMs to BLAS (``runs_gemms``), else as held (a layer that
    splits its work gives BLAS its threads back itself when it cannot split)."""
    return blas_released() if layer.runs_gemms and not layer.splits_work else \
        contextlib.nullcontext()


@contextlib.contextmanager
def blas_released():
    """Within :func:`blas_held`, give BLAS its threads back (for layers that do not split).

    A layer that leaves its GEMMs to BLAS (Deconvolution, a Python layer, any
    user code) then runs them on every core, as outside a net pass.
    """
    threads = _held[1]
    if not _held[0] or threads in (None, 1) or getattr(_local, "inside", False):
        yield
        return
    set_threads = _blas()[1]
    set_threads(threads)
    try:
        yield
    finally:
        set_threads(1)


_local = threading.local()  # .inside: this thread runs a part


def _inside(fn, k, s):
    outer = getattr(_local, "inside", False)
    _local.inside = True
    try:
        fn(k, s)
    finally:
        _local.inside = outer


_BLAS_NAMES = ("scipy_openblas{}_num_threads64_", "scipy_openblas{}_num_threads",
               "openblas{}_num_threads64_", "openblas{}_num_threads")


@functools.cache
def _blas():
    """``(get, set)`` for the thread count of the OpenBLAS numpy uses, or None."""
    import ctypes

    import numpy  # noqa: F401  (loads its BLAS)
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps
                     if "openblas" in line.lower() and len(line.split(None, 5)) == 6}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _BLAS_NAMES:
            getter = getattr(lib, name.format("_get"), None)
            setter = getattr(lib, name.format("_set"), None)
            if getter is not None and setter is not None:
                getter.restype = ctypes.c_int
                setter.argtypes = [ctypes.c_int]
                return getter, setter
    return None
