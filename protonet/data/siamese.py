"""Paired (Fashion-)MNIST for the siamese example, as Caffe's
``examples/siamese/create_mnist_siamese.sh`` and ``convert_mnist_siamese_data.cpp`` make it.

Each split of N images becomes N records under keys ``%08d``: a random pair of
images (i, j), each drawn uniformly from the whole split (with replacement),
stored as one ``Datum{channels: 2, height: 28, width: 28}`` whose first channel
is image i and second image j, with label 1 when their classes are equal and 0
otherwise (about 10% of the pairs are similar). The databases are LevelDB by
default, as Caffe's script writes them, named ``mnist_siamese_train_leveldb``
and ``mnist_siamese_test_leveldb``.

Caffe draws the pairs from its global generator, seeded at random unless a seed
is set, so its pairs cannot be reproduced; protonet draws them from
``numpy.random.default_rng(seed)`` (the train pairs, then the test pairs), so the
same seed gives the same databases.
"""
from __future__ import annotations

import os

import numpy as np

#: the databases of each split, by backend
TRAIN_DB, TEST_DB = "mnist_siamese_train_{}", "mnist_siamese_test_{}"


def draw_pairs(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) indices of random pairs among n images, with replacement."""
    return rng.integers(0, n, size=(n, 2))


def pair_datum_bytes(images: np.ndarray, labels: np.ndarray, pairs: np.ndarray):
    """Serialized 2-channel Datums, one per row (i, j) of ``pairs``: images[i] and images[j]
    ((rows, cols) uint8 each) as channels 0 and 1, label 1 if labels[i] == labels[j] else 0."""
    from ..proto import caffe_pb2
    _, rows, cols = images.shape
    same = (labels[pairs[:, 0]] == labels[pairs[:, 1]]).astype(np.int64).tolist()
    for (i, j), label in zip(pairs.tolist(), same):
        yield caffe_pb2.Datum(channels=2, height=rows, width=cols,
                              data=images[i].tobytes() + images[j].tobytes(),
                              label=label).SerializeToString()


def write_pairs(images: np.ndarray, labels: np.ndarray, path: str, rng: np.random.Generator,
                backend: str = "leveldb", desc: str = "") -> int:
    """Write ``len(images)`` random pairs of one split as a new database at ``path``."""
    from .mnist import write_records
    pairs = draw_pairs(len(images), rng)
    return write_records(pair_datum_bytes(images, labels, pairs), len(pairs), path, desc,
                         backend, map_size=max(1 << 24, 4 * (images.size + 64 * len(images))))


def prepare_siamese(dataset_key: str, from_dir: str | None = None,
                    out_dir: str = "data/mnist", allow_download: bool = True,
                    backend: str = "leveldb", seed: int = 0, log=None) -> dict:
    """Find/download the IDX files and write ``out_dir``/mnist_siamese_{train,test}_<backend>.
    Returns a summary like :func:`protonet.data.mnist.prepare`'s."""
    from .mnist import DATASETS, _log, locate, read_split
    dataset = DATASETS[dataset_key]
    files = locate(dataset, from_dir, out_dir, allow_download, log or _log)
    rng = np.random.default_rng(seed)
    written = {}
    for split, name in (("train", TRAIN_DB), ("test", TEST_DB)):
        images, labels = read_split(files, split)
        path = os.path.join(out_dir, name.format(backend))
        write_pairs(images, labels, path, rng, backend, f"{dataset.title} {split} pairs")
        written[split] = (path, len(images), (2,) + images.shape[1:])
    return {"dataset": f"{dataset.title} pairs", "source":
            os.path.dirname(files["train_images"]), "written": written}
