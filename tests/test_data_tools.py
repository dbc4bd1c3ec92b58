"""`protonet data`, `convert-imageset`, `compute-mean`, and the IDX reader."""
import gzip
import hashlib
import io
import os
import urllib.error

import numpy as np
import pytest

from protonet import ProtonetError
from protonet.cli import main
from protonet.data import idx
from protonet.proto import caffe_pb2

from conftest import varint

lmdb = pytest.importorskip("lmdb")

FASHION = "/usr/share/datasets/fashion-mnist"


def mnist_datum(pixels: np.ndarray, label: int) -> bytes:
    """What convert_mnist_data serializes: channels 1, height, width, data, label (a char)."""
    rows, cols = pixels.shape
    signed = label - 256 if label > 127 else label
    return (b"\x08\x01\x10" + varint(rows) + b"\x18" + varint(cols) +
            b"\x22" + varint(rows * cols) + pixels.tobytes() + b"\x28" + varint(signed))


def read_lmdb(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = list(txn.cursor())
    env.close()
    return items


def tiny_mnist(directory, n_train=12, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        suffix = ".gz" if gz else ""
        idx.write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte{suffix}"), images)
        idx.write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte{suffix}"), labels)
        arrays[split] = (images, labels)
    return arrays


# -- IDX ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / name
    idx.write_idx(path, array)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    header = (gzip.decompress(raw) if name.endswith(".gz") else raw)[:16]
    assert header == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])
    assert np.array_equal(idx.read_idx(str(path), idx.IMAGES_MAGIC), array)


def test_idx_errors(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(ProtonetError, match="truncated or damaged"):
        idx.read_idx(str(path))
    with pytest.raises(ProtonetError, match="magic number 2049 where 2051"):
        path.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01a")
        idx.read_idx(str(path), idx.IMAGES_MAGIC)
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(ProtonetError, match="not an IDX file"):
        idx.read_idx(str(path))


# -- protonet data -----------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_data_from_dir_writes_convert_mnist_data_records(tmp_path, gz, capsys):
    arrays = tiny_mnist(tmp_path / "idx", gz=gz)
    arrays["train"][1][3] = 200  # a label above 127 is a negative char in Caffe
    idx.write_idx(tmp_path / "idx" / ("train-labels-idx1-ubyte" + (".gz" if gz else "")),
                  arrays["train"][1])
    out = tmp_path / "out"
    assert main(["data", "mnist", "--from", str(tmp_path / "idx"), "--out", str(out)]) == 0
    assert "mnist_train_lmdb (12 images, 1x28x28)" in capsys.readouterr().err
    for split, db in (("train", "mnist_train_lmdb"), ("t10k", "mnist_test_lmdb")):
        images, labels = arrays[split]
        items = read_lmdb(out / db)
        assert [k for k, _ in items] == [b"%08d" % i for i in range(len(images))]
        for i, (_, value) in enumerate(items):
            assert value == mnist_datum(images[i], int(labels[i]))
    assert caffe_pb2.Datum.FromString(read_lmdb(out / "mnist_train_lmdb")[3][1]).label == -56


def test_data_replaces_an_lmdb_but_nothing_else(tmp_path):
    tiny_mnist(tmp_path / "idx")
    out = tmp_path / "out"
    args = ["data", "fashion-mnist", "--from", str(tmp_path / "idx"), "--out", str(out)]
    assert main(args) == 0
    tiny_mnist(tmp_path / "idx", n_train=3, seed=1)
    assert main(args) == 0
    assert len(read_lmdb(out / "mnist_train_lmdb")) == 3
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary left behind
    os.rename(out / "mnist_test_lmdb", out / "moved")
    (out / "mnist_test_lmdb").mkdir()
    (out / "mnist_test_lmdb" / "notes.txt").write_text("mine")
    with pytest.raises(ProtonetError, match="is not an LMDB database"):
        from protonet.data.mnist import prepare
        prepare("fashion-mnist", str(tmp_path / "idx"), str(out))


def test_data_missing_from_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "mnist", "--from", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing train-images-idx3-ubyte.gz" in err


class FakeResponse(io.BytesIO):
    headers = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def no_system_files(monkeypatch, tmp_path):
    from protonet.data import mnist
    for dataset in mnist.DATASETS.values():
        monkeypatch.setattr(dataset, "system_dirs", [str(tmp_path / "nowhere")])
    calls = []

    def offline(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("no network in tests")
    monkeypatch.setattr(mnist, "urlopen", offline)
    return calls


def test_data_offline_says_what_to_do(tmp_path, no_system_files, capsys):
    out = str(tmp_path / "out")
    assert main(["data", "fashion-mnist", "--out", out]) == 1
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and "--from DIR" in err
    assert "downloading them failed" in err and "no network in tests" in err
    assert main(["data", "mnist", "--out", out]) == 1
    err = capsys.readouterr().err
    assert "no system package ships MNIST" in err and "--from DIR" in err
    assert no_system_files[-2].startswith("https://ossci-datasets.s3.amazonaws.com/mnist/")
    calls = len(no_system_files)
    assert main(["data", "mnist", "--out", out, "--no-download"]) == 1
    assert len(no_system_files) == calls


def test_data_download_checks_md5(tmp_path, monkeypatch, no_system_files, capsys):
    from protonet.data import mnist
    tiny_mnist(tmp_path / "served")
    served = {name: (tmp_path / "served" / name).read_bytes() for name in mnist.FILES.values()
              for name in [name + ".gz"]}
    dataset = mnist.DATASETS["mnist"]
    monkeypatch.setattr(dataset, "md5", {n: hashlib.md5(b).hexdigest() for n, b in served.items()})
    fetched = []

    def fake(url, timeout=None):
        fetched.append(url)
        return FakeResponse(served[url.rsplit("/", 1)[1]])
    monkeypatch.setattr(mnist, "urlopen", fake)
    out = tmp_path / "out"
    assert main(["data", "mnist", "--out", str(out)]) == 0
    assert len(fetched) == 4 and (out / "mnist-idx" / "t10k-labels-idx1-ubyte.gz").exists()
    assert len(read_lmdb(out / "mnist_test_lmdb")) == 5
    assert main(["data", "mnist", "--out", str(out)]) == 0
    assert len(fetched) == 4  # the earlier download is reused
    # a corrupted download is refused, on every mirror
    monkeypatch.setattr(dataset, "md5", {n: "0" * 32 for n in served})
    assert main(["data", "mnist", "--out", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err
    assert "expected 00000000" in err and "yann.lecun.com" in err


def test_data_prefers_system_files(tmp_path, monkeypatch, no_system_files):
    from protonet.data import mnist
    arrays = tiny_mnist(tmp_path / "system")
    monkeypatch.setattr(mnist.DATASETS["fashion-mnist"], "system_dirs", [str(tmp_path / "system")])
    out = tmp_path / "out"
    assert main(["data", "fashion-mnist", "--out", str(out)]) == 0
    assert not no_system_files  # no network
    assert len(read_lmdb(out / "mnist_train_lmdb")) == len(arrays["train"][0])


def test_no_progress_output_when_not_a_terminal(tmp_path, capsys):
    tiny_mnist(tmp_path / "idx", n_train=2500)
    assert main(["data", "mnist", "--from", str(tmp_path / "idx"),
                 "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package(tmp_path):
    out = tmp_path / "mnist"
    assert main(["data", "fashion-mnist", "--out", str(out)]) == 0
    for split, db, count in (("train", "mnist_train_lmdb", 60000),
                             ("t10k", "mnist_test_lmdb", 10000)):
        images = idx.read_idx(f"{FASHION}/{split}-images-idx3-ubyte.gz", idx.IMAGES_MAGIC)
        labels = idx.read_idx(f"{FASHION}/{split}-labels-idx1-ubyte.gz", idx.LABELS_MAGIC)
        items = read_lmdb(out / db)
        assert len(items) == count == len(images)
        assert items[0][0] == b"00000000" and items[-1][0] == b"%08d" % (count - 1)
        for i in (0, 1, 4321, count - 1):
            assert items[i][1] == mnist_datum(images[i], int(labels[i]))
        assert sorted(set(labels.tolist())) == list(range(10))


# -- convert-imageset --------------------------------------------------------------------------
@pytest.fixture
def images(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(3)
    root = tmp_path / "root"
    root.mkdir()
    pixels = {}
    for name, size in (("a.png", (5, 4)), ("b c.png", (5, 4)), ("d.jpg", (6, 6))):
        rgb = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        Image.fromarray(rgb).save(root / name, quality=95)
        pixels[name] = np.asarray(Image.open(root / name).convert("RGB"))
    (tmp_path / "list.txt").write_text("a.png 1\nb c.png 2\nd.jpg 3\n")
    return tmp_path, pixels


def convert(tmp_path, *flags, db="db"):
    return main(["convert-imageset", *flags, str(tmp_path / "root") + "/",
                 str(tmp_path / "list.txt"), str(tmp_path / db)])


def test_convert_imageset_raw_datums(images):
    tmp_path, pixels = images
    assert convert(tmp_path) == 0
    items = read_lmdb(tmp_path / "db")
    assert [k for k, _ in items] == [b"00000000_a.png", b"00000001_b c.png", b"00000002_d.jpg"]
    for (key, value), (name, label) in zip(items, (("a.png", 1), ("b c.png", 2), ("d.jpg", 3))):
        bgr_chw = pixels[name][:, :, ::-1].transpose(2, 0, 1)
        c, h, w = bgr_chw.shape
        # CVMatToDatum sets encoded=false explicitly: field 7 is serialized
        expected = (b"\x08" + varint(c) + b"\x10" + varint(h) + b"\x18" + varint(w) +
                    b"\x22" + varint(bgr_chw.size) + bgr_chw.tobytes() +
                    b"\x28" + varint(label) + b"\x38\x00")
        assert value == expected


def test_convert_imageset_gray_resize_check_size(images):
    from protonet.data.images import resize_linear
    Image = pytest.importorskip("PIL.Image")
    tmp_path, pixels = images
    assert convert(tmp_path, "--gray", "--resize_height=3", "--resize_width", "2",
                   "--check_size") == 0
    datum = caffe_pb2.Datum.FromString(read_lmdb(tmp_path / "db")[0][1])
    assert (datum.channels, datum.height, datum.width) == (1, 3, 2)
    gray = np.asarray(Image.fromarray(pixels["a.png"]).convert("L"))
    assert np.array_equal(np.frombuffer(datum.data, np.uint8).reshape(1, 3, 2),
                          resize_linear(gray[None], 3, 2))
    with pytest.raises(ProtonetError, match="differs from the first image's 60 bytes"):
        from protonet.data.imageset import convert_imageset
        convert_imageset(str(tmp_path / "root") + "/", str(tmp_path / "list.txt"),
                         str(tmp_path / "db2"), check_size=True)


def test_convert_imageset_encoded(images):
    tmp_path, pixels = images
    assert convert(tmp_path, "--encoded") == 0
    items = read_lmdb(tmp_path / "db")
    first = caffe_pb2.Datum.FromString(items[0][1])
    assert first.encoded and first.label == 1
    assert first.data == (tmp_path / "root" / "a.png").read_bytes()  # the file itself
    assert not first.HasField("channels")
    assert convert(tmp_path, "--encode_type=png", db="db_png") == 0
    jpg_as_png = caffe_pb2.Datum.FromString(read_lmdb(tmp_path / "db_png")[2][1])
    assert jpg_as_png.data[:4] == b"\x89PNG"
    from protonet.data.images import decode_image
    decoded = decode_image(jpg_as_png.data)
    assert np.array_equal(decoded, pixels["d.jpg"][:, :, ::-1].transpose(2, 0, 1))


def test_convert_imageset_shuffle_and_unreadable(images, capsys):
    tmp_path, _ = images
    with open(tmp_path / "list.txt", "a") as f:
        f.write("gone.png 4\n")
    assert convert(tmp_path, "--shuffle", "--seed", "1") == 0
    err = capsys.readouterr().err
    assert "could not read image" in err and "gone.png" in err and "wrote 3 of 4" in err
    keys = [k for k, _ in read_lmdb(tmp_path / "db")]
    order = np.random.default_rng(1).permutation(4)
    names = ["a.png", "b c.png", "d.jpg", "gone.png"]
    expected = [f"{i:08d}_{names[j]}".encode() for i, j in enumerate(order) if j != 3]
    assert keys == sorted(expected)


def test_convert_imageset_errors(images, capsys):
    tmp_path, _ = images
    assert convert(tmp_path) == 0
    assert convert(tmp_path) == 1
    assert "already exists" in capsys.readouterr().err
    assert convert(tmp_path, "--backend=rocksdb", db="other") == 1
    assert "rocksdb' is not supported; use lmdb or leveldb" in capsys.readouterr().err
    (tmp_path / "list.txt").write_text("none.png 1\n")
    assert convert(tmp_path, db="third") == 1
    assert "no image in" in capsys.readouterr().err


# -- compute-mean ------------------------------------------------------------------------------
def test_compute_mean_writes_caffes_blobproto(tmp_path, capsys):
    arrays = tiny_mnist(tmp_path / "idx", n_train=30)
    assert main(["data", "mnist", "--from", str(tmp_path / "idx"), "--out", str(tmp_path)]) == 0
    out = tmp_path / "mean.binaryproto"
    assert main(["compute-mean", str(tmp_path / "mnist_train_lmdb"), str(out)]) == 0
    assert "mean_value channel [0]:" in capsys.readouterr().out
    images = arrays["train"][0]
    expected = np.zeros((28, 28), np.float32)
    for image in images:  # compute_image_mean: float sums, record after record
        expected += image
    expected /= np.float32(len(images))
    proto = caffe_pb2.BlobProto.FromString(out.read_bytes())
    assert (proto.num, proto.channels, proto.height, proto.width) == (1, 1, 28, 28)
    assert not proto.HasField("shape")
    assert np.array_equal(np.asarray(proto.data, np.float32).reshape(28, 28), expected)
    manual = caffe_pb2.BlobProto(num=1, channels=1, height=28, width=28)
    manual.data.extend(expected.ravel().tolist())
    assert out.read_bytes() == manual.SerializeToString()


def test_compute_mean_float_rounding_matches_sequential_sums(tmp_path):
    """Past 2**24 float32 sums round; the result must still be Caffe's record-by-record sum."""
    from protonet.data.imageset import compute_mean
    from protonet.data.lmdb_source import LMDBWriter, array_to_datum
    rng = np.random.default_rng(0)
    images = rng.integers(200, 256, (70000, 1, 1, 2), dtype=np.uint8)
    with LMDBWriter(str(tmp_path / "db")) as db:
        for i, image in enumerate(images):
            db.put(b"%08d" % i, array_to_datum(image, 0).SerializeToString())
    expected = np.zeros((1, 1, 2), np.float32)
    for image in images:
        expected += image
    result = compute_mean(str(tmp_path / "db"))
    assert np.array_equal(result["mean"], expected / np.float32(len(images)))


def test_compute_mean_used_as_mean_file(tmp_path):
    from protonet.net import Net
    arrays = tiny_mnist(tmp_path / "idx", n_train=4)
    assert main(["data", "mnist", "--from", str(tmp_path / "idx"), "--out", str(tmp_path)]) == 0
    mean_path = tmp_path / "mean.binaryproto"
    assert main(["compute-mean", str(tmp_path / "mnist_train_lmdb"), str(mean_path)]) == 0
    net_path = tmp_path / "net.prototxt"
    net_path.write_text(f"""layer {{ name: "d" type: "Data" top: "data" top: "label"
  transform_param {{ mean_file: "{mean_path}" }}
  data_param {{ source: "{tmp_path / 'mnist_train_lmdb'}" batch_size: 4 backend: LMDB }} }}""")
    net = Net(str(net_path), "TRAIN")
    net.forward()
    images = arrays["train"][0].astype(np.float32)
    assert np.allclose(net.blobs["data"].data[:, 0], images - images.mean(0), atol=1e-4)
    net.layers[0].close()


def test_progress_bar_only_on_a_terminal():
    from protonet.data.progress import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    pytest.importorskip("tqdm")
    term, pipe = Terminal(), io.StringIO()
    for stream in (term, pipe):
        bar = progress(10, "demo", stream=stream)
        bar.update(10)
        bar.close()
    assert "demo" in term.getvalue() and pipe.getvalue() == ""
