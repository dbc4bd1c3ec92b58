"""Caffe's ``tools/convert_imageset.cpp`` and ``tools/compute_image_mean.cpp``."""
from __future__ import annotations

import os
import sys

import numpy as np

from ..errors import ProtonetError


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _match_ext(filename: str, encoding: str) -> bool:
    """io.cpp's matchExt: the file's extension is the encoding (jpeg counts as jpg)."""
    dot = filename.rfind(".")
    ext = (filename[dot + 1:] if dot >= 0 else filename).lower()
    encoding = encoding.lower()
    return ext == encoding or (encoding == "jpg" and ext == "jpeg")


def read_image_to_datum(path: str, label: int, height: int, width: int, is_color: bool,
                        encoding: str):
    """io.cpp's ReadImageToDatum: a Datum for one image file, or None when it cannot be read.

    With an ``encoding``, the file's own bytes are stored when no resizing is asked
    and its extension matches; otherwise the image is re-encoded."""
    from ..proto import caffe_pb2
    from .images import encode_image, read_image
    from .lmdb_source import array_to_datum
    try:
        image = read_image(path, height, width, is_color)
    except (FileNotFoundError, ProtonetError):
        return None
    if encoding:
        datum = caffe_pb2.Datum()
        if (image.shape[0] == 3) == is_color and not height and not width and \
                _match_ext(path, encoding):
            with open(path, "rb") as f:
                datum.data = f.read()
        else:
            datum.data = encode_image(image, encoding, path)
        datum.label = label
        datum.encoded = True
        return datum
    return array_to_datum(image, label, encoded_false=True)


def convert_imageset(root: str, list_file: str, db_path: str, *, gray: bool = False,
                     shuffle: bool = False, resize_height: int = 0, resize_width: int = 0,
                     check_size: bool = False, encoded: bool = False, encode_type: str = "",
                     seed: int = 0, log=_log, backend: str = "lmdb") -> dict:
    """Write the images listed in ``list_file`` (``path label`` lines, paths relative to
    ``root``) into a new LMDB (or LevelDB, ``backend="leveldb"``) at ``db_path``; keys
    ``%08d_<path>``. Returns a summary."""
    from .db import backend_name, open_writer
    from .images import read_image_list
    from .progress import progress
    backend = backend_name(backend)
    lines = read_image_list(list_file, "convert-imageset")
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(lines))
        lines = [lines[i] for i in order]
    if os.path.lexists(db_path):
        raise ProtonetError(f"{db_path} already exists; remove it first (convert_imageset "
                            "writes a new database)")
    is_color = not gray
    resize_height, resize_width = max(0, resize_height), max(0, resize_width)
    failed: list[str] = []
    first_size = None
    count = 0
    bar = progress(len(lines), "convert-imageset", unit="img")
    try:
        with open_writer(db_path, backend) as db:
            for line_id, (name, label) in enumerate(lines):
                bar.update(1)
                enc = encode_type
                if encoded and not enc:
                    dot = name.rfind(".")
                    enc = name[dot + 1:].lower()  # as Caffe does; no dot: the whole name
                datum = read_image_to_datum(root + name, label, resize_height, resize_width,
                                            is_color, enc) if name else None
                if datum is None:
                    if name:
                        failed.append(root + name)
                    continue
                if check_size:
                    size = _datum_size(datum, name)
                    if first_size is None:
                        first_size = size
                    elif size != first_size:
                        raise ProtonetError(
                            f"{root + name}: {_describe(size)} differs from the first image's "
                            f"{_describe(first_size)} (--check_size); resize with "
                            "--resize_height/--resize_width")
                key = f"{line_id:08d}_{name}".encode("utf-8", "surrogateescape")
                if len(key) > 511 and backend == "lmdb":
                    raise ProtonetError(f"{name}: the key '{key[:40]!r}...' is longer than "
                                        "LMDB's 511 bytes; shorten the paths in the list")
                db.put(key, datum.SerializeToString())
                count += 1
    except BaseException:
        bar.close()
        raise
    bar.close()
    return {"count": count, "lines": len(lines), "failed": failed, "db": db_path}


def _datum_size(datum, name):
    """Caffe compares byte counts of raw Datums; for encoded ones, the decoded shape."""
    if datum.encoded:
        from .images import decode_image
        return decode_image(datum.data, "native", name).shape
    return len(datum.data)


def _describe(size) -> str:
    return f"{size} bytes" if isinstance(size, int) else "x".join(map(str, size))


def compute_mean(db_path: str, out_path: str | None = None, log=_log,
                 backend: str | None = None) -> dict:
    """The mean image of an LMDB or LevelDB of Datums (``backend`` None: whichever
    ``db_path`` is; decoded natively when encoded), summed in float32 record by record as
    compute_image_mean does; written as a binary BlobProto (1, C, H, W)."""
    from ..io.blobs import array_to_blob_proto
    from .db import open_reader
    from .lmdb_source import decode_batch
    from .progress import progress
    if not os.path.exists(db_path):
        raise ProtonetError(f"{db_path} does not exist; create it with `protonet data mnist` or "
                            "`protonet convert-imageset`")
    db = open_reader(db_path, backend, "compute-mean")
    try:
        total = db.entries
        shape = db.record_shape()
        acc_float = np.zeros(shape, np.float32)
        acc_int = np.zeros(shape, np.int64)
        exact_int = True  # uint8 records summed in int64 until float32 could round
        count = 0
        bar = progress(total, "compute-mean", unit="rec")
        try:
            while count < total:
                n = min(1000, total - count)
                pixels, _ = decode_batch(db.read(n), "native", f"{db_path}: a record")
                if isinstance(pixels, list) or pixels.shape[1:] != shape:
                    bad = next((p.shape for p in pixels if p.shape != shape), None)
                    raise ProtonetError(f"{db_path}: a record of shape {list(bad)} differs from "
                                        f"the first record's {list(shape)}; all must be equal")
                if pixels.dtype == np.uint8 and exact_int:
                    acc_int += pixels.sum(axis=0, dtype=np.int64)
                    if acc_int.max(initial=0) >= 1 << 24:
                        # from here on float32 sums round: replay the records in float32, in order
                        exact_int = False
                        acc_float = _replay_float32(db_path, count + n, shape, backend)
                else:
                    if exact_int:
                        acc_float = acc_int.astype(np.float32)
                        exact_int = False
                    for row in pixels:
                        acc_float += row
                count += n
                bar.update(n)
        finally:
            bar.close()
    finally:
        db.close()
    total_sum = acc_int.astype(np.float32) if exact_int else acc_float
    mean = total_sum / np.float32(count)
    if out_path:
        proto = array_to_blob_proto(mean[None], legacy_4d=True)
        try:
            with open(out_path, "wb") as f:
                f.write(proto.SerializeToString())
        except OSError as e:
            raise ProtonetError(f"{out_path}: cannot write ({e.strerror})") from None
    # the log line's per-channel means, accumulated in float32 one value after another
    channel_means = [float(np.add.accumulate(mean[c].ravel(), dtype=np.float32)[-1]
                           / np.float32(shape[1] * shape[2])) for c in range(shape[0])]
    return {"count": count, "shape": shape, "mean": mean, "channel_means": channel_means}


def _replay_float32(db_path: str, upto: int, shape, backend=None) -> np.ndarray:
    """Sum the first ``upto`` records in float32, one record after another (Caffe's order)."""
    from .db import open_reader
    from .lmdb_source import decode_batch
    db = open_reader(db_path, backend, "compute-mean")
    acc = np.zeros(shape, np.float32)
    try:
        done = 0
        while done < upto:
            n = min(1000, upto - done)
            pixels, _ = decode_batch(db.read(n), "native", f"{db_path}: a record")
            for row in pixels:
                acc += row
            done += n
    finally:
        db.close()
    return acc
