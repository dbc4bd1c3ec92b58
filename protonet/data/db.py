"""The two database backends of Caffe's ``db::GetDB``: LMDB and LevelDB.

Both hold serialized ``Datum`` records under byte keys, read in key order. This
module picks the reader or writer for a backend given by name (``"lmdb"``,
``"leveldb"``), by ``data_param.backend`` (``DataParameter.LMDB``/``LEVELDB``),
or by what a directory holds (``data.mdb``: LMDB; ``CURRENT``: LevelDB), and
words the errors a Data layer gives for a source it cannot read.
"""
from __future__ import annotations

import os
import shutil

from ..errors import ProtonetError

BACKENDS = ("lmdb", "leveldb")

#: the files a LevelDB directory may hold (a directory holding others is not replaced)
_LEVELDB_FILES = ("CURRENT", "LOCK", "LOG", "LOG.old")
_LEVELDB_PATTERNS = ("MANIFEST-", ".ldb", ".log", ".sst", ".dbtmp")


def backend_name(backend) -> str:
    """``"lmdb"`` or ``"leveldb"`` for a name (any case) or a ``DataParameter.DB`` value."""
    if isinstance(backend, str):
        name = backend.lower()
        if name in BACKENDS:
            return name
        raise ProtonetError(f"backend '{backend}' is not one of lmdb, leveldb")
    from ..proto import caffe_pb2
    names = {caffe_pb2.DataParameter.LMDB: "lmdb", caffe_pb2.DataParameter.LEVELDB: "leveldb"}
    if backend not in names:
        raise ProtonetError(f"data_param.backend {backend} is not LMDB (1) or LEVELDB (0)")
    return names[backend]


def detect(path: str) -> str | None:
    """The backend of the database at ``path`` (``"lmdb"``/``"leveldb"``), or None."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "data.mdb")):
            return "lmdb"
        if os.path.isfile(os.path.join(path, "CURRENT")):
            return "leveldb"
        return None
    return "lmdb" if os.path.isfile(path) else None  # an LMDB opened without a subdirectory


def _title(backend: str) -> str:
    return {"lmdb": "LMDB", "leveldb": "LevelDB"}[backend]


def _a(backend: str) -> str:
    """"an LMDB" / "a LevelDB"."""
    return {"lmdb": "an LMDB", "leveldb": "a LevelDB"}[backend]


def open_reader(path: str, backend=None, what: str = ""):
    """A reader (key order, wrapping, resumable by key) of the database at ``path``.
    ``backend`` None: whichever the directory holds."""
    what = what or path
    found = detect(path)
    if backend is None:
        if not os.path.exists(path):
            raise ProtonetError(f"{what}: '{path}' does not exist")
        if found is None:
            raise ProtonetError(f"{what}: '{path}' is neither an LMDB (data.mdb) nor a LevelDB "
                                "(CURRENT) database")
        backend = found
    backend = backend_name(backend)
    if found is not None and found != backend:
        raise ProtonetError(f"{what}: '{path}' is {_a(found)} database, not "
                            f"{_title(backend)}; use --backend {found}")
    if backend == "leveldb":
        from .leveldb_source import LevelDBDatumDB
        return LevelDBDatumDB(path, what)
    from .lmdb_source import DatumDB
    return DatumDB(path, what)


def open_writer(path: str, backend="lmdb", **options):
    """A writer of a new database (``put(key, value)``, ``close()``; a context manager).
    ``options`` go to the LMDB writer (``map_size``) and are ignored for LevelDB."""
    if backend_name(backend) == "leveldb":
        from .leveldb_source import LevelDBWriter
        return LevelDBWriter(path, options.get("commit_every", 1000))
    from .lmdb_source import LMDBWriter
    return LMDBWriter(path, **options)


def is_database_dir(path: str, backend: str) -> bool:
    """Whether ``path`` is a directory holding nothing but a ``backend`` database's files."""
    if not os.path.isdir(path):
        return False
    entries = set(os.listdir(path))
    if backend_name(backend) == "lmdb":
        return entries <= {"data.mdb", "lock.mdb"}
    return "CURRENT" in entries and all(
        e in _LEVELDB_FILES or any(p in e for p in _LEVELDB_PATTERNS) for e in entries)


def replace_db(new: str, path: str, backend: str = "lmdb") -> None:
    """Move the database directory ``new`` to ``path``; a ``backend`` database already there
    is replaced, anything else there is refused."""
    if os.path.lexists(path):
        if not is_database_dir(path, backend):
            shutil.rmtree(new, ignore_errors=True)
            raise ProtonetError(f"{path} exists and is not {_a(backend_name(backend))} database; "
                                "move it away or choose another --out")
        old = f"{new}.old"
        os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)


# -- the Data layer's source -------------------------------------------------------------------
def how_to_create(source: str, backend: str) -> str:
    """Which protonet command writes a database like ``source``."""
    low = source.lower()
    folder = os.path.dirname(os.path.normpath(source))
    out = f" --out {folder}" if folder and folder != os.path.join("data", "mnist") else ""
    if "siamese" in low:
        flag = " --backend lmdb" if backend == "lmdb" else ""
        return (f"create it with `protonet data fashion-mnist-siamese{out}{flag}` (or "
                "`protonet data mnist-siamese`)")
    flag = " --backend leveldb" if backend == "leveldb" else ""
    if "mnist" in low:
        return f"create it with `protonet data mnist{out}{flag}` (or `protonet data fashion-mnist`)"
    return f"create it with `protonet convert-imageset{flag} ROOT LIST DB`"


def open_layer_source(layer, source: str, backend):
    """The reader a Data layer reads ``source`` with (``backend``: ``DataParameter.DB``),
    or the layer's error saying what is wrong and how to make the database."""
    name = backend_name(backend)
    title = _title(name)
    if not source:
        raise layer.error(f"data_param.source is empty; name {_a(name)} directory")
    how = how_to_create(source, name)
    if not os.path.exists(source):
        raise layer.error(
            f"data source '{source}' does not exist (looked in {os.getcwd()}); {how}; "
            "or, for `summary`, give the shape with --input-shape TOP=N,C,H,W")
    if os.path.isfile(source) and name == "leveldb":
        raise layer.error(f"'{source}' is a file; a LevelDB database is a directory (with a "
                          f"CURRENT file inside); {how}")
    found = detect(source)
    if found is not None and found != name:
        default = " (Caffe's default when data_param gives none)" if name == "leveldb" else ""
        raise layer.error(
            f"'{source}' is {_a(found)} database but data_param.backend is {title}{default}; "
            f"set `backend: {found.upper()}` in data_param")
    if found is None:
        marker = "data.mdb" if name == "lmdb" else "CURRENT"
        raise layer.error(f"'{source}' is not {_a(name)} database (no {marker} inside); {how}")
    return open_reader(source, name, f"layer '{layer.name}' ({layer.type})")
