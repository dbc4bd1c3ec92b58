"""LevelDB, Caffe's default data_param.backend: reading Caffe's layout through the Data layer,
writing it with the data tools, the same batches as LMDB, resume, errors, and `summary`.

Databases "as Caffe writes them" are made here with plain plyvel: Caffe's LevelDB::Open
options, keys %08d (convert_mnist_data) or %08d_<path> (convert_imageset), Datum values
serialized by hand, written in batches of 1000 as Caffe's transactions commit them.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from protonet import ProtonetError
from protonet.cli import main
from protonet.proto import caffe_pb2

from test_data_layers import close, datum_bytes, net_of
from test_data_layers import data_layer as lmdb_data_layer
from test_data_layers import write_lmdb as caffe_lmdb

plyvel = pytest.importorskip("plyvel")
lmdb = pytest.importorskip("lmdb")

CAFFE_OPEN = dict(block_size=65536, write_buffer_size=268435456, max_open_files=100)


# -- helpers -----------------------------------------------------------------------------------
def caffe_leveldb(path, records, batch=1000):
    """A LevelDB as Caffe's db_leveldb.cpp writes one (NEW mode: error_if_exists)."""
    db = plyvel.DB(str(path), create_if_missing=True, error_if_exists=True, **CAFFE_OPEN)
    for start in range(0, len(records), batch):
        with db.write_batch() as wb:
            for key, value in records[start:start + batch]:
                wb.put(key, value)
    db.close()
    return str(path)


def read_leveldb(path):
    db = plyvel.DB(str(path))
    items = list(db.iterator())
    db.close()
    return items


def digit_records(n=23, shape=(1, 6, 5), seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    return images, labels, [(b"%08d" % i, datum_bytes(images[i], labels[i])) for i in range(n)]


def data_layer(source, batch=7, transform="scale: 0.00390625", extra="", backend=None):
    """A Data layer; no backend by default: Caffe's default, LEVELDB."""
    return lmdb_data_layer(source, batch, transform, extra, backend=backend)


# -- reading Caffe's LevelDBs ------------------------------------------------------------------
@pytest.mark.parametrize("prefetch", [0, 3])
def test_caffe_leveldb_through_the_data_layer_in_key_order_with_wraparound(tmp_path, prefetch):
    images, labels, records = digit_records()
    shuffled = [records[i] for i in np.random.default_rng(1).permutation(len(records))]
    source = caffe_leveldb(tmp_path / "db", shuffled, batch=5)  # stored out of order
    net = net_of(tmp_path, data_layer(source, extra=f"prefetch: {prefetch}"))  # no backend
    assert net.blobs["data"].shape == (7, 1, 6, 5) and net.blobs["label"].shape == (7,)
    for b in range(7):  # 49 records from 23: wraps twice
        net.forward()
        idx = [(b * 7 + k) % 23 for k in range(7)]
        expected = images[idx].astype(np.float32) * np.float32(1 / 256)
        assert np.array_equal(net.blobs["data"].data, expected)
        assert np.array_equal(net.blobs["label"].data, labels[idx].astype(np.float32))
    close(net)


def test_caffe_leveldb_trains_a_net(tmp_path):
    """A small classifier learns from a Caffe-layout LevelDB (backend left at its default)."""
    from protonet.solvers import get_solver
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    images = rng.integers(0, 100, (200, 1, 8, 8)).astype(np.uint8)
    images[labels == 1, :, :4] += 120  # class 1 is bright in its top half
    records = [(b"%08d" % i, datum_bytes(images[i], labels[i])) for i in range(200)]
    caffe_leveldb(tmp_path / "train_leveldb", records)
    (tmp_path / "net.prototxt").write_text(
        'name: "t"\n' + data_layer(tmp_path / "train_leveldb", batch=20) + textwrap.dedent('''
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
          inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
        '''))
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.5\nmomentum: 0.9\nlr_policy: "fixed"\n'
        'max_iter: 60\ndisplay: 0\nsnapshot_after_train: false\nrandom_seed: 3\n')
    solver = get_solver(str(tmp_path / "solver.prototxt"))
    losses = []
    for it in range(60):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
        if it == 0:  # the first batch is records 0..19, scaled by 1/256
            first = images[:20].astype(np.float32) * np.float32(1 / 256)
            assert np.array_equal(solver.net.blobs["data"].data, first)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    close(solver.net)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_lmdb_and_leveldb_of_the_same_images_give_the_same_batches(tmp_path, prefetch):
    _, _, records = digit_records(n=17, shape=(3, 9, 9))
    order = np.random.default_rng(2).permutation(17)
    caffe_lmdb(tmp_path / "lmdb", [records[i] for i in order])
    caffe_leveldb(tmp_path / "leveldb", [records[i] for i in order[::-1]])
    transform = "crop_size: 6 mirror: true scale: 0.5 mean_value: 10 mean_value: 20 mean_value: 30"
    extra = f"rand_skip: 9 prefetch: {prefetch}"
    a = net_of(tmp_path, data_layer(tmp_path / "lmdb", 5, transform, extra, "LMDB"), seed=4)
    b = net_of(tmp_path, data_layer(tmp_path / "leveldb", 5, transform, extra, "LEVELDB"),
               seed=4, name="b.prototxt")
    for _ in range(9):
        a.forward()
        b.forward()
        assert np.array_equal(a.blobs["data"].data, b.blobs["data"].data)
        assert np.array_equal(a.blobs["label"].data, b.blobs["label"].data)
    assert a.layers[0].get_state() == b.layers[0].get_state()
    close(a)
    close(b)


@pytest.mark.parametrize("prefetch", [0, 3])
def test_leveldb_exact_resume(tmp_path, prefetch):
    _, _, records = digit_records(n=23, shape=(3, 8, 8))
    source = caffe_leveldb(tmp_path / "db", records)
    layer = data_layer(source, 5, "crop_size: 5 mirror: true", f"prefetch: {prefetch}")
    net = net_of(tmp_path, layer, seed=1)
    for _ in range(3):
        net.forward()
    state = json.loads(json.dumps(net.layers[0].get_state()))
    assert state["key"] == "%08d" % 15
    following = []
    for _ in range(6):  # across the wrap-around
        net.forward()
        following.append((net.blobs["data"].data.copy(), net.blobs["label"].data.copy()))
    other = net_of(tmp_path, layer, seed=99, name="other.prototxt")
    other.forward()
    other.layers[0].set_state(state)
    for data, label in following:
        other.forward()
        assert np.array_equal(other.blobs["data"].data, data)
        assert np.array_equal(other.blobs["label"].data, label)
    close(other)
    state["key"] = "gone"
    with pytest.raises(ProtonetError, match="no record with key b'gone'; the database changed"):
        net.layers[0].set_state(state)
    close(net)


def test_train_and_test_nets_share_one_leveldb_and_release_it(tmp_path):
    """LevelDB opens a database once per process: readers of one path share the handle."""
    images, _, records = digit_records()
    source = caffe_leveldb(tmp_path / "db", records)
    train = net_of(tmp_path, data_layer(source, 4, ""), "TRAIN")
    test = net_of(tmp_path, data_layer(source, 3, ""), "TEST", name="test.prototxt")
    train.forward()
    test.forward()
    assert np.array_equal(train.blobs["data"].data, images[:4])
    assert np.array_equal(test.blobs["data"].data, images[:3])
    close(train)
    test.forward()
    assert np.array_equal(test.blobs["data"].data, images[3:6])
    close(test)
    assert len(read_leveldb(source)) == 23  # closed: another handle can open it again


# -- errors ------------------------------------------------------------------------------------
def test_missing_empty_mismatched_and_bad_record_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProtonetError, match=r"layer 'd' \(Data\): data source "
                       r"'examples/mnist/mnist_train_leveldb' does not exist.*`protonet data "
                       r"mnist --out examples/mnist --backend leveldb`"):
        net_of(tmp_path, data_layer("examples/mnist/mnist_train_leveldb"))
    with pytest.raises(ProtonetError, match="'data/mnist/mnist_siamese_train_leveldb' does not "
                       "exist.*`protonet data fashion-mnist-siamese`"):
        net_of(tmp_path, data_layer("data/mnist/mnist_siamese_train_leveldb"))
    with pytest.raises(ProtonetError, match="'pics_leveldb' does not exist.*`protonet "
                       "convert-imageset --backend leveldb ROOT LIST DB`"):
        net_of(tmp_path, data_layer("pics_leveldb"))
    caffe_lmdb(tmp_path / "an_lmdb", digit_records(n=2)[2])
    with pytest.raises(ProtonetError, match="'an_lmdb' is an LMDB database but data_param."
                       "backend is LevelDB \\(Caffe's default.*set `backend: LMDB`"):
        net_of(tmp_path, data_layer("an_lmdb"))
    (tmp_path / "notes.txt").write_text("not a database")
    with pytest.raises(ProtonetError, match="'notes.txt' is a file; a LevelDB database is a "
                       "directory"):
        net_of(tmp_path, data_layer("notes.txt"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ProtonetError, match="'plain' is not a LevelDB database \\(no CURRENT"):
        net_of(tmp_path, data_layer("plain"))
    caffe_leveldb(tmp_path / "empty", [])
    with pytest.raises(ProtonetError, match="LevelDB 'empty' is empty"):
        net_of(tmp_path, data_layer("empty"))
    caffe_leveldb(tmp_path / "bad", [(b"0", datum_bytes(np.zeros((1, 2, 2)), 1)),
                                     (b"1", b"\xff\xff not a datum")])
    net = net_of(tmp_path, data_layer("bad", batch=1, transform=""))
    net.forward()
    with pytest.raises(ProtonetError, match="layer 'd' .*'bad'.*not a Datum"):
        net.forward()
    close(net)


def test_a_corrupted_leveldb_is_named(tmp_path):
    source = caffe_leveldb(tmp_path / "db", digit_records(n=3)[2])
    manifest = next(p for p in os.listdir(source) if p.startswith("MANIFEST-"))
    (tmp_path / "db" / manifest).write_bytes(b"\x00garbage" * 20)
    with pytest.raises(ProtonetError, match=f"LevelDB '{source}' is corrupted"):
        net_of(tmp_path, data_layer(source))


def test_a_leveldb_locked_by_another_process_is_named(tmp_path):
    source = caffe_leveldb(tmp_path / "db", digit_records(n=3)[2])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import plyvel, sys; db = plyvel.DB(sys.argv[1]); "
         "print('open', flush=True); sys.stdin.read()", source],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ProtonetError, match=f"LevelDB '{source}' is locked by another "
                           "process.*one process"):
            net_of(tmp_path, data_layer(source))
        assert main(["compute-mean", source]) == 1
    finally:
        holder.communicate("")
    net = net_of(tmp_path, data_layer(source, batch=3))  # free again
    close(net)


# -- writing -----------------------------------------------------------------------------------
def test_convert_imageset_leveldb_is_caffes_layout_and_matches_lmdb(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(3)
    (tmp_path / "root").mkdir()
    bgr = {}
    for name in ("a.png", "b c.png", "d.png"):
        rgb = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / "root" / name)
        bgr[name] = rgb[:, :, ::-1].transpose(2, 0, 1)
    (tmp_path / "list.txt").write_text("d.png 3\na.png 1\nb c.png 2\n")
    args = [str(tmp_path / "root") + "/", str(tmp_path / "list.txt")]
    assert main(["convert-imageset", "--backend=leveldb", *args, str(tmp_path / "ldb")]) == 0
    assert main(["convert-imageset", "--backend", "lmdb", *args, str(tmp_path / "mdb")]) == 0
    items = read_leveldb(tmp_path / "ldb")  # plain plyvel + caffe_pb2.Datum
    assert [k for k, _ in items] == [b"00000000_d.png", b"00000001_a.png", b"00000002_b c.png"]
    for (_, value), (name, label) in zip(items, (("d.png", 3), ("a.png", 1), ("b c.png", 2))):
        datum = caffe_pb2.Datum.FromString(value)
        assert (datum.channels, datum.height, datum.width, datum.label) == (3, 5, 4, label)
        assert datum.data == bgr[name].tobytes()
    env = lmdb.open(str(tmp_path / "mdb"), readonly=True, lock=False)
    with env.begin() as txn:
        assert list(txn.cursor()) == items  # byte for byte the same records
    env.close()


def test_data_mnist_leveldb_and_compute_mean(tmp_path, capsys):
    from protonet.data import idx
    rng = np.random.default_rng(0)
    (tmp_path / "idx").mkdir()
    arrays = {}
    for split, n in (("train", 12), ("t10k", 5)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        idx.write_idx(str(tmp_path / "idx" / f"{split}-images-idx3-ubyte"), images)
        idx.write_idx(str(tmp_path / "idx" / f"{split}-labels-idx1-ubyte"), labels)
        arrays[split] = (images, labels)
    out = tmp_path / "out"
    for backend in ("leveldb", "lmdb"):
        assert main(["data", "mnist", "--from", str(tmp_path / "idx"), "--out", str(out),
                     "--backend", backend]) == 0
    assert "mnist_train_leveldb (12 images, 1x28x28)" in capsys.readouterr().err
    for split, db in (("train", "mnist_train_leveldb"), ("t10k", "mnist_test_leveldb")):
        images, labels = arrays[split]
        items = read_leveldb(out / db)
        assert [k for k, _ in items] == [b"%08d" % i for i in range(len(images))]
        for i, (_, value) in enumerate(items):
            assert value == datum_bytes(images[i][None], int(labels[i]))
    # a second run replaces the LevelDB
    assert main(["data", "mnist", "--from", str(tmp_path / "idx"), "--out", str(out),
                 "--backend", "leveldb"]) == 0
    assert len(read_leveldb(out / "mnist_train_leveldb")) == 12
    # compute-mean finds the backend itself, and agrees with the LMDB's mean byte for byte
    for db in ("mnist_train_leveldb", "mnist_train_lmdb"):
        assert main(["compute-mean", str(out / db), str(tmp_path / f"{db}.binaryproto")]) == 0
    mean_l = (tmp_path / "mnist_train_leveldb.binaryproto").read_bytes()
    assert mean_l == (tmp_path / "mnist_train_lmdb.binaryproto").read_bytes()
    proto = caffe_pb2.BlobProto.FromString(mean_l)
    expected = arrays["train"][0].astype(np.float32).sum(0) / np.float32(12)
    assert np.array_equal(np.asarray(proto.data, np.float32).reshape(28, 28), expected)
    assert main(["compute-mean", str(out / "mnist_train_leveldb"), "--backend", "lmdb"]) == 1
    assert "is a LevelDB database, not LMDB; use --backend leveldb" in capsys.readouterr().err


def test_writer_refuses_an_existing_path(tmp_path):
    from protonet.data.leveldb_source import LevelDBWriter
    caffe_leveldb(tmp_path / "db", [])
    with pytest.raises(ProtonetError, match="already exists; remove it first"):
        LevelDBWriter(str(tmp_path / "db"))


# -- summary -----------------------------------------------------------------------------------
def summary_json(capsys, *args):
    assert main(["summary", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_summary_of_a_leveldb_net_reads_the_database(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    records = [(b"%08d" % i, datum_bytes(np.full((2, 28, 28), i, np.uint8), i % 2))
               for i in range(3)]
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    for split in ("train", "test"):
        caffe_leveldb(tmp_path / f"data/mnist/mnist_siamese_{split}_leveldb", records)
    from conftest import REPO
    net = str(REPO / "models/siamese/mnist_siamese_train_test.prototxt")
    for phase, batch in (("TRAIN", 64), ("TEST", 100)):
        summary = summary_json(capsys, net, "--phase", phase)
        assert summary["notes"] == []
        rows = {r["name"]: r for r in summary["layers"]}
        assert rows["pair_data"]["top_shapes"] == [[batch, 2, 28, 28], [batch]]
        assert rows["slice_pair"]["top_shapes"] == [[batch, 1, 28, 28]] * 2
        assert rows["feat_p"]["top_shapes"] == [[batch, 2]]
        assert rows["loss"]["top_shapes"] == [[]]


def test_summary_of_the_corpus_leveldb_nets(corpus, tmp_path, monkeypatch, capsys):
    """The corpus's LevelDB nets (siamese; CIFAR-10 quick of 2014, V1; LeNet of 2013, V0)
    read their databases as LMDB nets do, once the databases exist."""
    monkeypatch.chdir(tmp_path)
    pairs = [(b"%08d" % i, datum_bytes(np.zeros((2, 28, 28), np.uint8), 0)) for i in range(2)]
    os.makedirs("examples/siamese")
    caffe_leveldb("examples/siamese/mnist_siamese_train_leveldb", pairs)
    summary = summary_json(capsys, str(corpus / "BVLC/caffe/examples/siamese/"
                                                "mnist_siamese_train_test.prototxt"),
                           "--phase", "TRAIN")
    assert summary["layers"][0]["top_shapes"] == [[64, 2, 28, 28], [64]]
    assert summary["notes"] == []

    os.makedirs("examples/cifar10")
    colour = [(b"%08d" % i, datum_bytes(np.full((3, 32, 32), 10 * i, np.uint8), i))
              for i in range(4)]
    caffe_leveldb("examples/cifar10/cifar10_test_leveldb", colour)
    assert main(["compute-mean", "examples/cifar10/cifar10_test_leveldb",
                 "examples/cifar10/mean.binaryproto"]) == 0
    capsys.readouterr()
    summary = summary_json(capsys, str(corpus / "BVLC/caffe@c7f63da/examples/cifar10/"
                                                "cifar10_quick_train_test.prototxt"),
                           "--phase", "TEST")
    rows = {r["name"]: r for r in summary["layers"]}
    assert rows["cifar"]["top_shapes"] == [[100, 3, 32, 32], [100]]
    assert rows["ip2"]["top_shapes"] == [[100, 10]]

    caffe_leveldb("mnist-train-leveldb", [(b"%08d" % i, datum_bytes(
        np.zeros((1, 28, 28), np.uint8), 1)) for i in range(2)])
    summary = summary_json(capsys, str(corpus / "BVLC/caffe@3213bd8/data/lenet.prototxt"),
                           "--phase", "TRAIN")
    assert summary["layers"][0]["top_shapes"] == [[64, 1, 28, 28], [64]]
