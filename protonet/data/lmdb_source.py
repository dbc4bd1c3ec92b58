"""``Datum`` records in LMDB: Caffe's cursor for reading, its transaction for writing.

Reading follows ``src/caffe/util/db_lmdb.cpp`` and ``DataLayer::Next``: records
come in key order and the cursor goes back to the first record after the last.
A reader's position is the key of the next record, so it can be saved and
restored exactly.

Writing follows the converters (``convert_mnist_data``, ``convert_imageset``):
a new directory, puts committed every 1000 records, and the memory map doubled
whenever it fills up.
"""
from __future__ import annotations

import functools
import os
import sys
import threading

import numpy as np

from ..errors import ProtonetError


def _lmdb():
    try:
        import lmdb
    except ImportError:
        raise ProtonetError("LMDB databases need the 'lmdb' package: "
                            "pip install 'protonet[data]' (or pip install lmdb)") from None
    return lmdb


# -- Datum <-> arrays --------------------------------------------------------------------------
def parse_datum(value: bytes, what: str = "record"):
    from ..proto import caffe_pb2
    try:
        return caffe_pb2.Datum.FromString(value)
    except Exception:
        raise ProtonetError(f"{what} is not a Datum (is this a Caffe database?)") from None


def datum_to_array(datum, mode: str = "native", what: str = "record") -> np.ndarray:
    """A Datum's pixels as (C, H, W): uint8 from ``data``, float32 from ``float_data``, or
    decoded from ``encoded`` image bytes (BGR, as OpenCV gives them; ``mode`` as in
    :func:`protonet.data.images.decode_image`)."""
    if datum.encoded:
        from .images import decode_image
        return decode_image(datum.data, mode, what)
    shape = (datum.channels, datum.height, datum.width)
    size = shape[0] * shape[1] * shape[2]
    if len(datum.data):
        if len(datum.data) != size:
            raise ProtonetError(f"{what}: {len(datum.data)} bytes of data for a "
                                f"{'x'.join(map(str, shape))} Datum")
        return np.frombuffer(datum.data, np.uint8).reshape(shape)
    if len(datum.float_data) != size:
        raise ProtonetError(f"{what}: {len(datum.float_data)} float_data values for a "
                            f"{'x'.join(map(str, shape))} Datum")
    return np.asarray(datum.float_data, np.float32).reshape(shape)


def array_to_datum(array, label: int | None = None, encoded_false: bool = False):
    """A Datum holding (C, H, W) ``array``: uint8 arrays go to ``data``, others to
    ``float_data`` (pycaffe's ``array_to_datum``). ``encoded_false`` also sets
    ``encoded: false`` explicitly, as ``convert_imageset`` (through CVMatToDatum) does."""
    from ..proto import caffe_pb2
    array = np.asarray(array)
    if array.ndim != 3:
        raise ProtonetError(f"a Datum holds a (C, H, W) array, got shape {list(array.shape)}")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in array.shape)
    if array.dtype == np.uint8:
        datum.data = array.tobytes()
    else:
        datum.float_data.extend(array.astype(np.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    if encoded_false:
        datum.encoded = False
    return datum


def decode_batch(values: list, mode: str = "native", what: str = "record"):
    """Serialized Datums -> (pixels, labels float32 (N,)).

    ``pixels`` is one (N, C, H, W) array when every record has the same shape and
    kind (the fast path: uint8 records are joined and viewed with ``np.frombuffer``),
    else a list of (C, H, W) arrays."""
    from ..proto import caffe_pb2
    parse = caffe_pb2.Datum.FromString
    try:
        datums = [parse(v) for v in values]
    except Exception:
        datums = [parse_datum(v, what) for v in values]  # names the problem
    labels = np.fromiter([d.label for d in datums], np.float32, len(datums))
    first = datums[0]
    shape = (first.channels, first.height, first.width)
    size = shape[0] * shape[1] * shape[2]
    if size and not first.encoded:
        # every access to .data copies the bytes out of the message: take each once
        data = [d.data for d in datums]
        if all(len(b) == size for b in data) and \
                all((d.channels, d.height, d.width) == shape and not d.encoded for d in datums):
            pixels = np.frombuffer(b"".join(data), np.uint8)
            return pixels.reshape((len(datums),) + shape), labels
    arrays = [datum_to_array(d, mode, what) for d in datums]
    if all(a.shape == arrays[0].shape and a.dtype == arrays[0].dtype for a in arrays):
        return np.stack(arrays), labels
    return arrays, labels


# -- reading -----------------------------------------------------------------------------------
class SharedHandles:
    """Database handles shared by every reader of one path (LMDB and LevelDB both open a
    path at most once per process), counted, and closed when the last reader releases
    its own."""

    def __init__(self, open_handle):
        self._open = open_handle  # (path, what) -> handle with .close()
        self._entries: dict = {}  # realpath -> [handle, number of readers]
        self._lock = threading.Lock()

    def acquire(self, path: str, what: str):
        """``(key, handle)`` for ``path``, opened by the first reader."""
        key = os.path.realpath(path)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = [self._open(path, what), 0]
            entry[1] += 1
            return key, entry[0]

    def release(self, key: str) -> None:
        """One reader fewer for ``key``; the last one closes the handle."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self._entries[key]
                entry[0].close()


def _open_env(path: str, what: str):
    lmdb = _lmdb()
    try:
        # lock=False: no reader table, so transactions may move between threads
        return lmdb.open(path, readonly=True, lock=False, readahead=False,
                         subdir=os.path.isdir(path), max_dbs=0)
    except lmdb.Error as e:
        raise ProtonetError(f"{what}: cannot open LMDB '{path}': {e}") from None


_ENVS = SharedHandles(_open_env)  # py-lmdb opens a path once per process


DROP_PAGES_EVERY = 4 << 20  # bytes a reader reads between two drop_mapped_pages calls


def drop_mapped_pages(path: str) -> bool:
    """Drop an open LMDB's file pages from this process's resident set (Linux).

    LMDB reads through a memory map, so every page a reader has touched counts
    in the process's resident memory until it exits: a training run that
    cycles through a database would show its whole size. The pages are clean
    copies of the file; ``madvise(MADV_DONTNEED)`` unmaps them from the process
    (they stay in the kernel's page cache, and the next read maps them back
    without disk I/O). Returns whether any mapping was found and released.
    """
    if not sys.platform.startswith("linux"):
        return False
    real = os.path.realpath(path)
    data_file = os.path.join(real, "data.mdb") if os.path.isdir(real) else real
    try:
        with open("/proc/self/maps") as maps:
            ranges = [tuple(int(a, 16) for a in fields[0].split("-"))
                      for fields in (line.split(None, 5) for line in maps)
                      if len(fields) == 6 and fields[5].rstrip("\n") == data_file]
    except OSError:
        return False
    madvise = _madvise()
    if madvise is None:
        return False
    return any([madvise(start, end - start, 4) == 0 for start, end in ranges])  # MADV_DONTNEED


@functools.cache
def _madvise():
    """libc's ``madvise`` through ctypes, or None."""
    try:
        import ctypes
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


class DatumRecords:
    """The parsed view of a reader's next record; a reader supplies ``peek()`` (the raw
    bytes), ``what``, ``key`` and ``path`` (LMDB's :class:`DatumDB`, the LevelDB reader)."""

    def peek_datum(self):
        """The next record, parsed (without moving on)."""
        return parse_datum(self.peek(), f"{self.what}: record {self.key!r} of '{self.path}'")

    def record_shape(self, mode: str = "native") -> tuple[int, int, int]:
        """(C, H, W) of the next record."""
        return tuple(datum_to_array(self.peek_datum(), mode,
                                    f"{self.what}: record {self.key!r}").shape)


class DatumDB(DatumRecords):
    """An LMDB database of Datum records read in key order, wrapping at the end.

    Readers of one path share its environment, each with its own transaction and
    cursor. Not thread-safe: one thread at a time may use a reader (the prefetch
    thread, or the layer while the prefetcher is stopped)."""

    def __init__(self, path: str, what: str = ""):
        self.path = path
        self.what = what or path
        self._read_bytes = 0
        self._key, self.env = _ENVS.acquire(path, self.what)
        try:
            self.entries = int(self.env.stat()["entries"])
            self.txn = self.env.begin(buffers=False)
            self.cursor = self.txn.cursor()
        except BaseException:
            _ENVS.release(self._key)
            self.env = None
            raise
        if not self.cursor.first():
            self.close()
            raise ProtonetError(f"{self.what}: LMDB '{path}' is empty")

    def close(self) -> None:
        if self.env is not None:
            try:
                self.txn.abort()
            finally:
                self.env = None
                _ENVS.release(self._key)

    # position -----------------------------------------------------------------------------
    @property
    def key(self) -> bytes:
        """The key of the next record to be read."""
        return self.cursor.key()

    def seek(self, key: bytes) -> None:
        if not self.cursor.set_key(key):
            raise ProtonetError(f"{self.what}: LMDB '{self.path}' has no record with key "
                                f"{key!r}; the database changed since the snapshot")

    def skip(self, n: int) -> None:
        for _ in range(n % self.entries if self.entries else n):
            self._advance()

    def _advance(self) -> None:
        if not self.cursor.next():
            self.cursor.first()

    # records ------------------------------------------------------------------------------
    def peek(self) -> bytes:
        return self.cursor.value()

    def read(self, n: int) -> list:
        """The next ``n`` serialized records, wrapping around at the end."""
        cursor = self.cursor
        values = []
        for _ in range(n):
            values.append(cursor.value())
            if not cursor.next():
                cursor.first()
        self._read_bytes += sum(map(len, values))
        if self._read_bytes >= DROP_PAGES_EVERY:  # keep resident memory flat over epochs
            self._read_bytes = 0
            drop_mapped_pages(self.path)
        return values



# -- writing -----------------------------------------------------------------------------------
class LMDBWriter:
    """Puts records into a new LMDB database, committing every ``commit_every`` records."""

    def __init__(self, path: str, commit_every: int = 1000, map_size: int = 1 << 26):
        lmdb = _lmdb()
        self._lmdb = lmdb
        self.path = path
        try:
            os.makedirs(path)
        except FileExistsError:
            raise ProtonetError(f"{path} already exists; remove it first") from None
        except OSError as e:
            raise ProtonetError(f"{path}: cannot create directory ({e.strerror})") from None
        self.env = lmdb.open(path, map_size=map_size, subdir=True, meminit=False,
                             map_async=True)
        self.commit_every = commit_every
        self.pending: list = []
        self.count = 0

    def put(self, key: bytes, value: bytes) -> None:
        self.pending.append((key, value))
        self.count += 1
        if len(self.pending) >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        while self.pending:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self.pending:
                        txn.put(key, value)
                self.pending = []
            except self._lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def close(self) -> None:
        if self.env is not None:
            self.commit()
            self.env.sync(True)
            self.env.close()
            self.env = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif self.env is not None:
            self.env.close()
            self.env = None
