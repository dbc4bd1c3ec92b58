"""``Datum`` records in LevelDB, as Caffe's ``src/caffe/util/db_leveldb.cpp`` keeps them.

LevelDB is Caffe's default ``data_param.backend``. A database is a directory
(``CURRENT``, ``LOCK``, ``LOG``, ``MANIFEST-*``, ``*.ldb``/``*.log`` tables) whose
records are sorted by key bytewise, the order LMDB uses too: the same keys give
the same batches from either backend.

Reading (:class:`LevelDBDatumDB`) has the interface of
:class:`protonet.data.lmdb_source.DatumDB`: records in key order, back to the
first after the last, and a position that is the key of the next record, so a
snapshot resumes exactly. Writing (:class:`LevelDBWriter`) opens the database
with Caffe's options (64 KiB blocks, a 256 MiB write buffer, 100 open files,
LevelDB's default Snappy compression) and writes a batch every 1000 records, as
``convert_imageset`` commits its transactions.

LevelDB lets one process open a database at a time (it holds ``LOCK``), and one
process cannot open it twice either: readers of one path in this process share
one handle, each with its own iterator.
"""
from __future__ import annotations

import os

from ..errors import ProtonetError
from .lmdb_source import DatumRecords, SharedHandles

#: Caffe's LevelDB::Open options (db_leveldb.cpp)
CAFFE_OPTIONS = {"block_size": 65536, "write_buffer_size": 268435456, "max_open_files": 100}


def _plyvel():
    try:
        import plyvel
    except ImportError:
        raise ProtonetError("LevelDB databases need the 'plyvel' package: "
                            "pip install 'protonet[data]' (or pip install plyvel)") from None
    return plyvel


def is_leveldb(path: str) -> bool:
    """Whether ``path`` is a LevelDB directory (it holds a ``CURRENT`` file)."""
    return os.path.isfile(os.path.join(path, "CURRENT"))


def _message(error) -> str:
    text = error.args[0] if error.args else str(error)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text)


def open_leveldb(path: str, what: str, *, create: bool = False):
    """A ``plyvel.DB`` for ``path`` (a new one with ``create``), or a ProtonetError that
    names the database and says what is wrong: missing, locked, corrupted."""
    plyvel = _plyvel()
    if not create and not os.path.exists(path):
        raise ProtonetError(f"{what}: LevelDB '{path}' does not exist")
    if not create and not is_leveldb(path):
        raise ProtonetError(f"{what}: '{path}' is not a LevelDB database (no CURRENT file "
                            "inside)")
    try:
        if create:
            return plyvel.DB(path, create_if_missing=True, error_if_exists=True, **CAFFE_OPTIONS)
        return plyvel.DB(path, max_open_files=CAFFE_OPTIONS["max_open_files"])
    except plyvel.CorruptionError as e:
        raise ProtonetError(
            f"{what}: LevelDB '{path}' is corrupted ({_message(e)}); re-create it, or try "
            "`python -c \"import plyvel; plyvel.repair_db('PATH')\"` on a copy") from None
    except plyvel.IOError as e:
        text = _message(e)
        if "lock" in text.lower():
            if "already held by process" in text:
                where = "elsewhere in this process (a writer that is still open?)"
            else:
                where = "by another process (a running caffe or protonet?)"
            raise ProtonetError(
                f"{what}: LevelDB '{path}' is locked {where}; LevelDB lets one process open a "
                f"database at a time: wait for it to finish, or copy the directory "
                f"({text})") from None
        raise ProtonetError(f"{what}: cannot open LevelDB '{path}': {text}") from None
    except plyvel.Error as e:
        raise ProtonetError(f"{what}: cannot open LevelDB '{path}': {_message(e)}") from None


# -- reading -----------------------------------------------------------------------------------
_DBS = SharedHandles(open_leveldb)  # LevelDB opens a path once per process


class LevelDBDatumDB(DatumRecords):
    """A LevelDB database of Datum records read in key order, wrapping at the end.

    The same interface as the LMDB reader (``key``, ``seek``, ``skip``, ``peek``,
    ``read``, ``peek_datum``, ``record_shape``, ``entries``, ``close``). Not
    thread-safe: one thread at a time may use a reader."""

    def __init__(self, path: str, what: str = ""):
        self.path = path
        self.what = what or path
        self._entries = None
        self._key, self.db = _DBS.acquire(path, self.what)
        try:
            self._it = self.db.iterator()
            self._current = self._guard(self._first)
        except BaseException:
            self.db = None
            _DBS.release(self._key)
            raise
        if self._current is None:
            self.close()
            raise ProtonetError(f"{self.what}: LevelDB '{path}' is empty")

    def close(self) -> None:
        if self.db is not None:
            try:
                self._it.close()
            finally:
                self.db = None
                _DBS.release(self._key)

    def _guard(self, fn, *args):
        """Run a LevelDB read, turning its errors into ProtonetErrors that name the database."""
        plyvel = _plyvel()
        try:
            return fn(*args)
        except plyvel.CorruptionError as e:
            raise ProtonetError(f"{self.what}: LevelDB '{self.path}' is corrupted "
                                f"({_message(e)}); re-create it") from None
        except plyvel.Error as e:
            raise ProtonetError(f"{self.what}: reading LevelDB '{self.path}' failed: "
                                f"{_message(e)}") from None

    def _first(self):
        self._it.seek_to_start()
        return next(self._it, None)

    def _advance(self) -> None:
        self._current = next(self._it, None) or self._first()

    # position -----------------------------------------------------------------------------
    @property
    def entries(self) -> int:
        """The number of records (counted once, by walking the keys)."""
        if self._entries is None:
            def count():
                with self.db.iterator(include_value=False) as keys:
                    return sum(1 for _ in keys)
            self._entries = self._guard(count)
        return self._entries

    @property
    def key(self) -> bytes:
        """The key of the next record to be read."""
        return self._current[0]

    def seek(self, key: bytes) -> None:
        def go():
            self._it.seek(key)
            return next(self._it, None)
        item = self._guard(go)
        if item is None or item[0] != key:
            self._current = self._guard(self._first)
            raise ProtonetError(f"{self.what}: LevelDB '{self.path}' has no record with key "
                                f"{key!r}; the database changed since the snapshot")
        self._current = item

    def skip(self, n: int) -> None:
        for _ in range(n % self.entries if n else 0):
            self._guard(self._advance)

    # records ------------------------------------------------------------------------------
    def peek(self) -> bytes:
        return self._current[1]

    def read(self, n: int) -> list:
        """The next ``n`` serialized records, wrapping around at the end."""
        def take():
            values = []
            for _ in range(n):
                values.append(self._current[1])
                self._advance()
            return values
        return self._guard(take)


# -- writing -----------------------------------------------------------------------------------
class LevelDBWriter:
    """Puts records into a new LevelDB database, writing a batch every ``commit_every``
    records (the interface of :class:`protonet.data.lmdb_source.LMDBWriter`)."""

    def __init__(self, path: str, commit_every: int = 1000):
        if os.path.lexists(path):
            raise ProtonetError(f"{path} already exists; remove it first")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ProtonetError(f"{path}: cannot create the database: {parent} is not a "
                                "directory")
        self.path = path
        self.db = open_leveldb(path, "writing", create=True)
        self.commit_every = commit_every
        self.pending: list = []
        self.count = 0

    def put(self, key: bytes, value: bytes) -> None:
        self.pending.append((key, value))
        self.count += 1
        if len(self.pending) >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        if not self.pending:
            return
        with self.db.write_batch() as batch:
            for key, value in self.pending:
                batch.put(key, value)
        self.pending = []

    def close(self) -> None:
        if self.db is not None:
            try:
                self.commit()
            finally:
                self.db.close()
                self.db = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif self.db is not None:
            self.db.close()
            self.db = None
