"""The siamese example: `protonet data (fashion-)mnist-siamese` writes the paired databases of
Caffe's create_mnist_siamese.sh, and models/siamese (Caffe's example files) trains on them."""
import os
import shutil

import numpy as np
import pytest

from protonet.cli import main
from protonet.data import idx
from protonet.io import read_net, read_solver, write_text_file
from protonet.proto import caffe_pb2

from conftest import REPO, varint

plyvel = pytest.importorskip("plyvel")

FASHION = "/usr/share/datasets/fashion-mnist"


def pair_datum(first: np.ndarray, second: np.ndarray, similar: bool) -> bytes:
    """What convert_mnist_siamese_data serializes: channels 2, rows, cols, both images' pixels,
    label 1 or 0 -- built by hand."""
    rows, cols = first.shape
    data = first.tobytes() + second.tobytes()
    return (b"\x08\x02\x10" + varint(rows) + b"\x18" + varint(cols) +
            b"\x22" + varint(len(data)) + data + b"\x28" + varint(int(similar)))


def read_leveldb(path):
    db = plyvel.DB(str(path))
    items = list(db.iterator())
    db.close()
    return items


@pytest.fixture
def tiny_idx(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 30), ("t10k", 12)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 3, n).astype(np.uint8)  # three classes: many similar pairs
        idx.write_idx(str(tmp_path / f"{split}-images-idx3-ubyte.gz"), images)
        idx.write_idx(str(tmp_path / f"{split}-labels-idx1-ubyte.gz"), labels)
        arrays[split] = (images, labels)
    return tmp_path, arrays


def test_siamese_pairs_are_caffes_records(tiny_idx, capsys):
    folder, arrays = tiny_idx
    out = folder / "out"
    assert main(["data", "fashion-mnist-siamese", "--from", str(folder), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "mnist_siamese_train_leveldb (30 pairs, 2x28x28)" in err
    rng = np.random.default_rng(0)  # the documented draw: train pairs, then test pairs
    similar = 0
    for split, db in (("train", "mnist_siamese_train_leveldb"),
                      ("t10k", "mnist_siamese_test_leveldb")):
        images, labels = arrays[split]
        pairs = rng.integers(0, len(images), size=(len(images), 2))
        items = read_leveldb(out / db)  # LevelDB by default, as Caffe's script
        assert [k for k, _ in items] == [b"%08d" % i for i in range(len(images))]
        for (_, value), (i, j) in zip(items, pairs):
            assert value == pair_datum(images[i], images[j], labels[i] == labels[j])
            datum = caffe_pb2.Datum.FromString(value)
            assert datum.channels == 2 and datum.label == int(labels[i] == labels[j])
            similar += datum.label
    assert 0 < similar < 42
    # --backend lmdb: the very same records in an LMDB
    lmdb = pytest.importorskip("lmdb")
    assert main(["data", "mnist-siamese", "--from", str(folder), "--out", str(out),
                 "--backend", "lmdb"]) == 0
    env = lmdb.open(str(out / "mnist_siamese_train_lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        assert list(txn.cursor()) == read_leveldb(out / "mnist_siamese_train_leveldb")
    env.close()
    # another seed, other pairs; the same seed again, the same databases (replaced in place)
    first = read_leveldb(out / "mnist_siamese_train_leveldb")
    assert main(["data", "fashion-mnist-siamese", "--from", str(folder), "--out", str(out),
                 "--seed", "5"]) == 0
    assert read_leveldb(out / "mnist_siamese_train_leveldb") != first
    assert main(["data", "fashion-mnist-siamese", "--from", str(folder), "--out", str(out)]) == 0
    assert read_leveldb(out / "mnist_siamese_train_leveldb") == first


def test_models_siamese_are_caffes_example_files(corpus):
    """Layer for layer Caffe's examples/siamese; only the data paths and the device differ."""
    ours = read_net(str(REPO / "models/siamese/mnist_siamese_train_test.prototxt"))
    caffe = read_net(str(corpus / "BVLC/caffe/examples/siamese/mnist_siamese_train_test.prototxt"))
    sources = {}
    for key, net in (("ours", ours), ("caffe", caffe)):
        sources[key] = [layer.data_param.source for layer in net.layer if layer.type == "Data"]
        for layer in net.layer:
            layer.data_param.ClearField("source")
    assert ours == caffe
    assert sources == {"ours": ["data/mnist/mnist_siamese_train_leveldb",
                                "data/mnist/mnist_siamese_test_leveldb"],
                       "caffe": ["examples/siamese/mnist_siamese_train_leveldb",
                                 "examples/siamese/mnist_siamese_test_leveldb"]}
    assert read_net(str(REPO / "models/siamese/mnist_siamese.prototxt")) == read_net(
        str(corpus / "BVLC/caffe/examples/siamese/mnist_siamese.prototxt"))
    solver = read_solver(str(REPO / "models/siamese/mnist_siamese_solver.prototxt"))
    reference = read_solver(str(corpus / "BVLC/caffe/examples/siamese/"
                                         "mnist_siamese_solver.prototxt"))
    assert solver.net == "models/siamese/mnist_siamese_train_test.prototxt"
    assert solver.snapshot_prefix == "models/siamese/mnist_siamese"
    assert solver.solver_mode == caffe_pb2.SolverParameter.CPU
    for field in ("net", "snapshot_prefix", "solver_mode"):
        solver.ClearField(field)
        reference.ClearField(field)
    assert solver == reference


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FASHION), reason="Debian's dataset-fashion-mnist is not "
                    "installed")
def test_siamese_solver_trains_on_fashion_mnist_pairs(tmp_path, monkeypatch):
    """`protonet data fashion-mnist-siamese`, then Caffe's siamese solver for 300 iterations:
    the contrastive loss falls, on the training batches and on the test pairs."""
    from protonet.solvers import get_solver
    monkeypatch.chdir(tmp_path)
    assert main(["data", "fashion-mnist-siamese"]) == 0  # -> data/mnist/*_leveldb
    labels = [caffe_pb2.Datum.FromString(v).label
              for _, v in read_leveldb("data/mnist/mnist_siamese_test_leveldb")]
    assert len(labels) == 10000 and 0.08 < np.mean(labels) < 0.12  # ten balanced classes
    shutil.copytree(REPO / "models" / "siamese", tmp_path / "models" / "siamese")
    solver = read_solver("models/siamese/mnist_siamese_solver.prototxt")
    solver.max_iter, solver.test_iter[0], solver.display, solver.random_seed = 300, 10, 0, 1
    solver.snapshot, solver.snapshot_after_train = 0, False
    write_text_file(solver, "solver.prototxt")
    solver = get_solver("solver.prototxt")
    assert solver.net.blobs["pair_data"].shape == (64, 2, 28, 28)

    def test_loss():
        net = solver.test_nets[0]
        return np.mean([float(net.forward()["loss"]) for _ in range(10)])
    before = test_loss()
    losses = []
    for _ in range(300):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    after = test_loss()
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-50:]) < 0.6 * np.mean(losses[:20])
    assert after < 0.5 * before
    for net in [solver.net] + solver.test_nets:
        for layer in net.layers:
            getattr(layer, "close", lambda: None)()
