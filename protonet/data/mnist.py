"""MNIST and Fashion-MNIST: find (or download) the IDX files, write Caffe's LMDBs (or LevelDBs).

The databases are what ``examples/mnist/convert_mnist_data.cpp`` writes: keys
``%08d`` (the item's index), values ``Datum{channels: 1, height: 28, width: 28,
data: 784 bytes, label}``, in the order of the IDX files.

Where the files come from, in order: ``--from DIR``; the directory a system
package installs them in (Debian's ``dataset-fashion-mnist`` puts Fashion-MNIST
in /usr/share/datasets/fashion-mnist; no package ships MNIST); an earlier
download under the output directory; a download from the canonical
addresses, checked against the published MD5 sums.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import urllib.request
from dataclasses import dataclass

import numpy as np

from ..errors import ProtonetError

#: the four files, by role, without the ".gz"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: the URL opener, replaced by tests (they never touch the network)
urlopen = urllib.request.urlopen


@dataclass
class Dataset:
    key: str
    title: str
    system_dirs: list
    mirrors: list
    md5: dict  # file name (with .gz) -> MD5 of the published gzip file
    package: str | None = None


DATASETS = {
    "mnist": Dataset(
        key="mnist", title="MNIST",
        system_dirs=["/usr/share/datasets/mnist"],
        mirrors=["https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"],
        md5={"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion-mnist": Dataset(
        key="fashion-mnist", title="Fashion-MNIST",
        system_dirs=["/usr/share/datasets/fashion-mnist"],
        mirrors=["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/"
                 "data/fashion/"],
        md5={"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
             "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
             "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
             "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        package="dataset-fashion-mnist"),
}

TRAIN_DB, TEST_DB = "mnist_train_lmdb", "mnist_test_lmdb"


def _log(message: str) -> None:
    print(message, file=sys.stderr)


# -- finding the files -------------------------------------------------------------------------
def find_files(directory: str) -> tuple[dict, list]:
    """({role: path} for the files found in ``directory``, [names missing])."""
    found, missing = {}, []
    for role, base in FILES.items():
        dotted = base.replace("-idx", ".idx")  # train-images.idx3-ubyte, as some mirrors name it
        for name in (base + ".gz", base, dotted + ".gz", dotted):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                found[role] = path
                break
        else:
            missing.append(base + ".gz")
    return found, missing


def download_dir(dataset: Dataset, out_dir: str) -> str:
    return os.path.join(out_dir, f"{dataset.key}-idx")


def locate(dataset: Dataset, from_dir: str | None, out_dir: str, allow_download: bool = True,
           log=_log) -> dict:
    """The four files' paths, from ``from_dir``, the system, an earlier download or the web."""
    if from_dir:
        found, missing = find_files(from_dir)
        if missing:
            raise ProtonetError(f"{from_dir}: missing {', '.join(missing)} (the {dataset.title} "
                                "IDX files, gzipped or not)")
        return found
    candidates = dataset.system_dirs + [download_dir(dataset, out_dir)]
    if dataset.key == "mnist":
        candidates.append(out_dir)  # where Caffe's data/mnist/get_mnist.sh leaves them
    for directory in candidates:
        found, missing = find_files(directory)
        if not missing:
            return found
    if not allow_download:
        raise ProtonetError(_not_found_message(dataset, candidates, None, out_dir))
    try:
        return download(dataset, download_dir(dataset, out_dir), log)
    except _DownloadFailed as e:
        raise ProtonetError(_not_found_message(dataset, candidates, str(e), out_dir)) from None


def _not_found_message(dataset: Dataset, looked: list, failure: str | None, out_dir: str) -> str:
    lines = [f"the {dataset.title} files ({', '.join(dataset.md5)}) are not in "
             f"{', '.join(looked)}"]
    if failure:
        lines[0] += f", and downloading them failed: {failure}"
    if dataset.package:
        lines.append(f"install them with `sudo apt-get install {dataset.package}` (Debian/Ubuntu) "
                     f"and run this again, or download them from {dataset.mirrors[0]} into a "
                     f"directory and run `protonet data {dataset.key} --from DIR`")
    else:
        lines.append(f"no system package ships {dataset.title}: download the four files from "
                     f"{dataset.mirrors[0]} (or {dataset.mirrors[1]}) into a directory and run "
                     f"`protonet data {dataset.key} --from DIR`; or train on Fashion-MNIST "
                     "instead: `sudo apt-get install dataset-fashion-mnist && protonet data "
                     "fashion-mnist`")
    return "; ".join(lines)


# -- downloading -------------------------------------------------------------------------------
class _DownloadFailed(Exception):
    pass


def download(dataset: Dataset, dest: str, log=_log) -> dict:
    """Fetch the four gzip files into ``dest``, each checked against its MD5."""
    from .progress import progress
    os.makedirs(dest, exist_ok=True)
    for name, md5 in dataset.md5.items():
        target = os.path.join(dest, name)
        if os.path.isfile(target) and _md5(target) == md5:
            continue
        errors = []
        for mirror in dataset.mirrors:
            url = mirror + name
            try:
                data = _fetch(url, progress)
            except Exception as e:  # URLError, HTTPError, timeouts, resets
                errors.append(f"{url}: {getattr(e, 'reason', None) or e}")
                continue
            digest = hashlib.md5(data).hexdigest()
            if digest != md5:
                errors.append(f"{url}: MD5 {digest}, expected {md5}")
                continue
            tmp = f"{target}.part{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
            log(f"downloaded {url} ({len(data)} bytes, MD5 verified)")
            break
        else:
            raise _DownloadFailed("; ".join(errors))
    found, missing = find_files(dest)
    return found


def _fetch(url: str, progress) -> bytes:
    with urlopen(url, timeout=30) as response:
        total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        bar = progress(int(total) if total else None, os.path.basename(url), unit="B")
        chunks = []
        try:
            while True:
                chunk = response.read(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
    return b"".join(chunks)


def _md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- converting --------------------------------------------------------------------------------
def datum_bytes(images: np.ndarray, labels: np.ndarray):
    """Serialized Datums for (N, rows, cols) uint8 images, as convert_mnist_data writes them."""
    from ..proto import caffe_pb2
    n, rows, cols = images.shape
    # convert_mnist_data reads the label into a (signed) char
    signed = labels.view(np.int8).astype(np.int64).tolist()
    for i in range(n):
        yield caffe_pb2.Datum(channels=1, height=rows, width=cols, data=images[i].tobytes(),
                              label=signed[i]).SerializeToString()


def write_records(values, count: int, path: str, desc: str = "", backend: str = "lmdb",
                  map_size: int = 1 << 24) -> int:
    """Write ``count`` serialized records under keys ``%08d`` (0, 1, ...) as a new LMDB or
    LevelDB at ``path``, replacing a database of that kind already there. Returns ``count``."""
    from .db import open_writer, replace_db
    from .progress import progress
    tmp = _fresh_path(path)
    bar = progress(count, desc or os.path.basename(path), unit="img")
    options = {"map_size": map_size} if backend == "lmdb" else {}
    try:
        with open_writer(tmp, backend, **options) as db:
            for i, value in enumerate(values):
                db.put(b"%08d" % i, value)
                if i % 1000 == 999:
                    bar.update(1000)
        bar.update(count % 1000)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    replace_db(tmp, path, backend)
    return count


def write_mnist_lmdb(images: np.ndarray, labels: np.ndarray, path: str, desc: str = "",
                     backend: str = "lmdb") -> int:
    """Write one split as an LMDB (or, with ``backend="leveldb"``, a LevelDB) at ``path``,
    replacing a database of that kind already there."""
    return write_records(datum_bytes(images, labels), len(images), path, desc, backend,
                         map_size=max(1 << 24, 2 * (images.size + 64 * len(images))))


def _fresh_path(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def replace_lmdb(new: str, path: str) -> None:
    """Move the LMDB directory ``new`` to ``path``; an LMDB already there is replaced, anything
    else there is refused."""
    from .db import replace_db
    replace_db(new, path, "lmdb")


def read_split(files: dict, split: str):
    """(images (N, rows, cols) uint8, labels (N,) uint8) of the ``train`` or ``test`` split."""
    from .idx import read_mnist_pair
    images, labels = read_mnist_pair(files[f"{split}_images"], files[f"{split}_labels"])
    if images.ndim != 3:
        raise ProtonetError(f"{files[f'{split}_images']}: IDX images must be (N, rows, cols), "
                            f"got {list(images.shape)}")
    return images, labels


def prepare(dataset_key: str, from_dir: str | None = None, out_dir: str = "data/mnist",
            allow_download: bool = True, log=_log, backend: str = "lmdb") -> dict:
    """Find/download the files and write ``out_dir``/mnist_{train,test}_lmdb (``_leveldb``
    with ``backend="leveldb"``, as Caffe's create_mnist.sh names them). Returns a summary."""
    dataset = DATASETS[dataset_key]
    files = locate(dataset, from_dir, out_dir, allow_download, log)
    written = {}
    for split, db_name in (("train", TRAIN_DB), ("test", TEST_DB)):
        images, labels = read_split(files, split)
        path = os.path.join(out_dir, db_name.replace("_lmdb", f"_{backend}"))
        write_mnist_lmdb(images, labels, path, f"{dataset.title} {split}", backend)
        written[split] = (path, len(images), images.shape[1:])
    return {"dataset": dataset.title, "source": os.path.dirname(files["train_images"]),
            "written": written}
