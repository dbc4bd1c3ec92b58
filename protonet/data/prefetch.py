"""Reading batches ahead in a background thread (Caffe's ``BasePrefetchingDataLayer``).

A *loader* fills preallocated batch slots one after another and reports its
state after each one -- everything needed to produce the following batches
again (read position, random generator). The :class:`Prefetcher` runs the
loader in a daemon thread with ``depth`` slots: the thread fills free slots and
queues them; ``next()`` hands out the oldest full slot together with the state
that follows it, and ``release()`` gives the slot back.

So a layer always knows the state *as of the next batch it will deliver*, no
matter how far the thread has read ahead: that is the state to snapshot, and
restarting the loader from it reproduces the same batches byte for byte.

The thread holds no reference to the layer, so a layer that is dropped is
collected; :func:`weakref.finalize` then stops its thread.
"""
from __future__ import annotations

import queue
import threading
import time


class Loader:
    """What a prefetcher runs. Subclasses fill in the four methods."""

    def new_slot(self):
        """A fresh, preallocated batch (any object ``load`` knows how to fill)."""
        raise NotImplementedError

    def load(self, slot) -> None:
        """Fill ``slot`` with the next batch."""
        raise NotImplementedError

    def get_state(self) -> dict:
        """The state before the next batch (JSON-compatible)."""
        raise NotImplementedError

    def set_state(self, state: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_STOP = object()


def _run(loader: Loader, free: queue.Queue, full: queue.Queue, stop: threading.Event):
    """The thread body: fill free slots until told to stop. Holds no reference to the layer."""
    while True:
        slot = free.get()
        if slot is _STOP or stop.is_set():
            return
        try:
            loader.load(slot)
            state = loader.get_state()
        except BaseException as e:  # handed to the consumer, raised there
            full.put(_Failed(e))
            return
        full.put((slot, state))


class Prefetcher:
    """Keeps up to ``depth`` batches ready; ``depth`` 0 loads synchronously in :meth:`next`."""

    def __init__(self, loader: Loader, depth: int, name: str = "prefetch"):
        self.loader = loader
        self.depth = max(0, int(depth))
        self.name = name
        self._thread: threading.Thread | None = None
        self._slots: list = []
        self._sync_slot = None
        #: seconds ``next()`` spent waiting for a batch, and batches handed out
        self.wait_seconds = 0.0
        self.batches = 0

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start reading ahead from the loader's current state."""
        if self._thread is not None or self.depth == 0:
            return
        if not self._slots:
            self._slots = [self.loader.new_slot() for _ in range(self.depth)]
        self._free: queue.Queue = queue.Queue()
        self._full: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        for slot in self._slots:
            self._free.put(slot)
        self._thread = threading.Thread(target=_run, name=self.name, daemon=True,
                                        args=(self.loader, self._free, self._full, self._stop))
        self._thread.start()

    def next(self):
        """(slot, state after it): the next batch. Give the slot back with :meth:`release`."""
        start = time.perf_counter()
        if self.depth == 0:
            if self._sync_slot is None:
                self._sync_slot = self.loader.new_slot()
            self.loader.load(self._sync_slot)
            item = (self._sync_slot, self.loader.get_state())
        else:
            if self._thread is None:
                self.start()
            item = self._full.get()
            if isinstance(item, _Failed):
                self._thread.join()
                self._thread = None
                raise item.error
        self.wait_seconds += time.perf_counter() - start
        self.batches += 1
        return item

    def release(self, slot) -> None:
        if self._thread is not None and slot is not self._sync_slot:
            self._free.put(slot)

    def stop(self) -> None:
        """Stop the thread and drop what it read ahead (the loader is left wherever it got to)."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        self._stop.set()
        self._free.put(_STOP)
        if thread is not threading.current_thread():
            thread.join()

    def close(self) -> None:
        self.stop()
        self.loader.close()
