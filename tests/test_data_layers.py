"""Data, ImageData, HDF5Data, HDF5Output, MemoryData and WindowData layers.

Expected batches are computed here independently, from the arrays the test
wrote, the way Caffe's layers would produce them.
"""
import gc
import io
import json
import threading
import warnings

import numpy as np
import pytest

from protonet import ProtonetError
from protonet.net import Net

from conftest import varint

lmdb = pytest.importorskip("lmdb")


# -- helpers -----------------------------------------------------------------------------------
def datum_bytes(pixels: np.ndarray, label: int) -> bytes:
    """A serialized Datum{channels, height, width, data, label}, built by hand."""
    c, h, w = pixels.shape
    data = pixels.astype(np.uint8).tobytes()
    return (b"\x08" + varint(c) + b"\x10" + varint(h) + b"\x18" + varint(w) +
            b"\x22" + varint(len(data)) + data + b"\x28" + varint(label))


def write_lmdb(path, records):
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in records:
            txn.put(key, value)
    env.close()
    return str(path)


def digits_lmdb(tmp_path, n=20, shape=(1, 6, 5), name="db", seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    path = write_lmdb(tmp_path / name, [(b"%08d" % i, datum_bytes(images[i], labels[i]))
                                        for i in range(n)])
    return path, images, labels


def net_of(tmp_path, layers: str, phase="TRAIN", seed=0, name="net.prototxt"):
    path = tmp_path / name
    path.write_text('name: "t"\n' + layers)
    return Net(str(path), phase, seed=seed)


def data_layer(source, batch=7, transform="scale: 0.00390625", extra="", tops=("data", "label"),
               backend="LMDB"):
    """A Data layer; ``backend=None`` leaves it to Caffe's default (LEVELDB)."""
    top_lines = "".join(f'  top: "{t}"\n' for t in tops)
    backend = f"backend: {backend} " if backend else ""
    return (f'layer {{\n  name: "d"\n  type: "Data"\n{top_lines}'
            f'  transform_param {{ {transform} }}\n'
            f'  data_param {{ source: "{source}" batch_size: {batch} {backend}'
            f'{extra} }}\n}}\n')


def close(net):
    for layer in net.layers:
        getattr(layer, "close", lambda: None)()


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("protonet-")]


# -- Data --------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefetch", [0, 1, 4])
def test_data_batches_are_caffes_with_wraparound(tmp_path, prefetch):
    source, images, labels = digits_lmdb(tmp_path)
    net = net_of(tmp_path, data_layer(source, extra=f"prefetch: {prefetch}"))
    assert net.blobs["data"].shape == (7, 1, 6, 5) and net.blobs["label"].shape == (7,)
    for b in range(6):  # 42 records from 20: wraps twice
        net.forward()
        idx = [(b * 7 + k) % 20 for k in range(7)]
        expected = images[idx].astype(np.float32) * np.float32(1 / 256)
        assert np.array_equal(net.blobs["data"].data, expected)
        assert np.array_equal(net.blobs["label"].data, labels[idx].astype(np.float32))
    close(net)


def test_data_single_top_and_float_data_and_key_order(tmp_path):
    from protonet.proto import caffe_pb2
    values = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) / 7
    records = []
    for i, key in enumerate([b"b", b"a", b"c"]):  # stored out of order; read in key order
        d = caffe_pb2.Datum(channels=2, height=3, width=2, label=i)
        d.float_data.extend((values + i).ravel().tolist())
        records.append((key, d.SerializeToString()))
    source = write_lmdb(tmp_path / "f", records)
    net = net_of(tmp_path, data_layer(source, batch=3, transform="scale: 2", tops=("data",)))
    net.forward()
    expected = np.stack([values + 1, values, values + 2]).astype(np.float32) * np.float32(2)
    assert np.array_equal(net.blobs["data"].data, expected)
    close(net)


def test_data_encoded_png_and_jpeg(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from protonet.proto import caffe_pb2
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    png = caffe_pb2.Datum(data=buf.getvalue(), label=3, encoded=True).SerializeToString()
    source = write_lmdb(tmp_path / "enc", [(b"0", png)])
    net = net_of(tmp_path, data_layer(source, batch=2, transform=""))
    net.forward()
    bgr = rgb[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
    assert np.array_equal(net.blobs["data"].data[0], bgr)
    assert np.array_equal(net.blobs["label"].data, [3, 3])
    close(net)
    gray = net_of(tmp_path, data_layer(source, batch=1, transform="force_gray: true"),
                  name="g.prototxt")
    assert gray.blobs["data"].shape == (1, 1, 6, 5)
    gray.forward()
    expected = np.asarray(Image.fromarray(rgb).convert("L"), np.float32)
    assert np.array_equal(gray.blobs["data"].data[0, 0], expected)
    close(gray)
    buf = io.BytesIO()
    Image.fromarray(rgb[:, :, 0]).save(buf, "JPEG")
    jpg = caffe_pb2.Datum(data=buf.getvalue(), label=1, encoded=True).SerializeToString()
    source = write_lmdb(tmp_path / "jpg", [(b"0", jpg)])
    color = net_of(tmp_path, data_layer(source, batch=1, transform="force_color: true"),
                   name="c.prototxt")
    assert color.blobs["data"].shape == (1, 3, 6, 5)
    color.forward()
    planes = color.blobs["data"].data[0]
    assert np.array_equal(planes[0], planes[1]) and np.array_equal(planes[1], planes[2])
    close(color)


def test_data_crop_mirror_mean_file(tmp_path):
    from protonet.io.blobs import array_to_blob_proto
    source, images, _ = digits_lmdb(tmp_path, n=4, shape=(1, 6, 6))
    mean = np.linspace(0, 50, 36, dtype=np.float32).reshape(1, 6, 6)
    (tmp_path / "mean.binaryproto").write_bytes(
        array_to_blob_proto(mean[None], legacy_4d=True).SerializeToString())
    net = net_of(tmp_path, data_layer(
        source, batch=4, transform=f'crop_size: 4 mirror: true scale: 0.5 '
        f'mean_file: "{tmp_path / "mean.binaryproto"}"'), phase="TEST", seed=3)
    net.forward()
    out = net.blobs["data"].data
    centred = (images[:, :, 1:5, 1:5].astype(np.float32) - mean[:, 1:5, 1:5]) * np.float32(0.5)
    for i in range(4):  # TEST: centre crop; mirror still random
        assert np.array_equal(out[i], centred[i]) or np.array_equal(out[i], centred[i][..., ::-1])
    close(net)


def test_data_rand_skip(tmp_path):
    source, images, _ = digits_lmdb(tmp_path)
    starts = set()
    for seed in range(12):
        net = net_of(tmp_path, data_layer(source, batch=1, transform="", extra="rand_skip: 5"),
                     seed=seed)
        net.forward()
        first = net.blobs["data"].data[0]
        starts.add(next(i for i in range(20) if np.array_equal(images[i], first)))
        close(net)
    assert starts <= set(range(5)) and len(starts) > 1


@pytest.mark.parametrize("prefetch", [0, 3])
def test_data_exact_resume(tmp_path, prefetch):
    """A snapshot's state gives the very batches that would have come next, read-ahead or not."""
    source, _, _ = digits_lmdb(tmp_path, n=23, shape=(3, 8, 8))
    layer = data_layer(source, batch=5, transform="crop_size: 5 mirror: true",
                       extra=f"prefetch: {prefetch}")
    net = net_of(tmp_path, layer, seed=1)
    for _ in range(3):
        net.forward()
    state = json.loads(json.dumps(net.layers[0].get_state()))  # JSON-compatible
    assert state["key"] == "%08d" % 15
    following = []
    for _ in range(6):
        net.forward()
        following.append((net.blobs["data"].data.copy(), net.blobs["label"].data.copy()))
    other = net_of(tmp_path, layer, seed=99, name="other.prototxt")
    other.forward()  # a different position and generator, then restored
    other.layers[0].set_state(state)
    for data, label in following:
        other.forward()
        assert np.array_equal(other.blobs["data"].data, data)
        assert np.array_equal(other.blobs["label"].data, label)
    net.layers[0].set_state(state)  # rewinding the original works too
    net.forward()
    assert np.array_equal(net.blobs["data"].data, following[0][0])
    close(net)
    close(other)


def test_prefetch_threads_stop(tmp_path):
    source, _, _ = digits_lmdb(tmp_path)
    layer = data_layer(source).replace('name: "d"', 'name: "threadcheck"')

    def mine():
        return [t for t in prefetch_threads() if t.name == "protonet-Data-threadcheck"]
    net = net_of(tmp_path, layer)
    assert not mine()  # started by the first forward, not by building the net
    net.forward()
    assert len(mine()) == 1 and mine()[0].daemon
    close(net)
    assert not mine()
    net = net_of(tmp_path, layer)
    net.forward()
    del net
    gc.collect()
    assert not mine()


def test_prefetch_error_reaches_forward(tmp_path):
    source = write_lmdb(tmp_path / "bad", [(b"0", datum_bytes(np.zeros((1, 2, 2)), 1)),
                                           (b"1", b"\xff\xff not a datum")])
    net = net_of(tmp_path, data_layer(source, batch=1, transform=""))
    net.forward()
    with pytest.raises(ProtonetError, match="layer 'd' .*not a Datum"):
        net.forward()
    close(net)


def test_data_source_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProtonetError, match=r"layer 'd' \(Data\).*'data/mnist/mnist_train_lmdb'"
                       r" does not exist.*protonet data mnist"):
        net_of(tmp_path, data_layer("data/mnist/mnist_train_lmdb"))
    with pytest.raises(ProtonetError, match="'images_lmdb' does not exist.*convert-imageset"):
        net_of(tmp_path, data_layer("images_lmdb"))
    with pytest.raises(ProtonetError, match="'x' does not exist.*convert-imageset --backend "
                       "leveldb"):
        net_of(tmp_path, data_layer("x", backend="LEVELDB"))
    (tmp_path / "ldb").mkdir()
    (tmp_path / "ldb" / "CURRENT").write_text("MANIFEST-000001\n")
    with pytest.raises(ProtonetError, match="'ldb' is a LevelDB database but data_param.backend "
                       "is LMDB; set `backend: LEVELDB`"):
        net_of(tmp_path, data_layer("ldb"))
    source, _, _ = digits_lmdb(tmp_path, shape=(1, 4, 4))
    with pytest.raises(ProtonetError, match="crop_size 5 is larger than the 4x4"):
        net_of(tmp_path, data_layer(source, transform="crop_size: 5"))


def test_data_shape_override_reads_nothing(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text('name: "t"\n' + data_layer("missing_lmdb"))
    net = Net(str(path), "TRAIN", shape_overrides={"data": (2, 1, 28, 28)})
    assert net.blobs["data"].shape == (2, 1, 28, 28) and net.blobs["label"].shape == (2,)
    with pytest.raises(ProtonetError, match="--input-shape"):
        net.forward()


def test_legacy_fields_in_data_param_warn(tmp_path):
    source, _, _ = digits_lmdb(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = net_of(tmp_path, data_layer(source, transform="", extra="scale: 0.5"))
    assert any("ignored" in str(w.message) and "transform_param" in str(w.message)
               for w in caught)
    net.forward()
    assert net.blobs["data"].data.max() > 1  # not scaled, as in Caffe
    close(net)


def test_lenet_train_test_reads_protonet_lmdbs(tmp_path, monkeypatch):
    """models/lenet reads data/mnist/mnist_{train,test}_lmdb relative to the working directory."""
    import pathlib
    repo = pathlib.Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    for name, n in (("mnist_train_lmdb", 70), ("mnist_test_lmdb", 100)):
        digits_lmdb(tmp_path / "data" / "mnist", n=n, shape=(1, 28, 28), name=name)
    model = str(repo / "models" / "lenet" / "lenet_train_test.prototxt")
    train, test = Net(model, "TRAIN", seed=0), Net(model, "TEST", seed=0)
    assert train.blobs["data"].shape == (64, 1, 28, 28)
    assert test.blobs["data"].shape == (100, 1, 28, 28)
    assert np.isfinite(train.forward()["loss"])
    assert 0 <= float(test.forward()["accuracy"]) <= 1
    close(train)
    close(test)


# -- ImageData ---------------------------------------------------------------------------------
@pytest.fixture
def image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(2)
    root = tmp_path / "imgs"
    (root / "sub dir").mkdir(parents=True)
    arrays, lines = [], []
    for i in range(5):
        rgb = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
        name = f"sub dir/im {i}.png"
        Image.fromarray(rgb).save(root / name)
        arrays.append(rgb[:, :, ::-1].transpose(2, 0, 1))  # BGR, CHW
        lines.append(f"{name} {i * 2}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path, arrays


def image_layer(tmp_path, extra="", transform="", batch=3):
    return ('layer { name: "img" type: "ImageData" top: "data" top: "label"\n'
            f'  transform_param {{ {transform} }}\n'
            f'  image_data_param {{ source: "{tmp_path / "list.txt"}" root_folder: '
            f'"{tmp_path / "imgs"}/" batch_size: {batch} {extra} }} }}\n')


def test_image_data_in_order_with_wraparound(image_folder):
    tmp_path, arrays = image_folder
    net = net_of(tmp_path, image_layer(tmp_path))
    assert net.blobs["data"].shape == (3, 3, 6, 4)
    for b in range(3):
        net.forward()
        idx = [(b * 3 + k) % 5 for k in range(3)]
        assert np.array_equal(net.blobs["data"].data, np.stack([arrays[i] for i in idx]))
        assert np.array_equal(net.blobs["label"].data, [2 * i for i in idx])
    close(net)


def test_image_data_gray_and_resize(image_folder):
    from protonet.data.images import resize_linear
    Image = pytest.importorskip("PIL.Image")
    tmp_path, arrays = image_folder
    net = net_of(tmp_path, image_layer(tmp_path, "is_color: false new_height: 3 new_width: 8"))
    assert net.blobs["data"].shape == (3, 1, 3, 8)
    net.forward()
    gray = np.asarray(Image.open(tmp_path / "imgs" / "sub dir" / "im 0.png").convert("L"))
    assert np.array_equal(net.blobs["data"].data[0], resize_linear(gray[None], 3, 8))
    close(net)


def test_image_data_shuffle_covers_every_image_each_pass_and_resumes(image_folder):
    tmp_path, arrays = image_folder
    layer = image_layer(tmp_path, "shuffle: true", "mirror: true", batch=5)
    net = net_of(tmp_path, layer, seed=4)
    orders = []
    for _ in range(3):
        net.forward()
        orders.append(tuple(net.blobs["label"].data.astype(int)))
    assert all(sorted(o) == [0, 2, 4, 6, 8] for o in orders)
    assert len(set(orders)) > 1  # reshuffled after each pass
    state = json.loads(json.dumps(net.layers[0].get_state()))
    net.forward()
    expected = net.blobs["data"].data.copy(), net.blobs["label"].data.copy()
    other = net_of(tmp_path, layer, seed=7, name="o.prototxt")
    other.layers[0].set_state(state)
    other.forward()
    assert np.array_equal(other.blobs["data"].data, expected[0])
    assert np.array_equal(other.blobs["label"].data, expected[1])
    close(net)
    close(other)


def test_image_data_errors(image_folder):
    tmp_path, _ = image_folder
    with open(tmp_path / "list.txt", "a") as f:
        f.write("missing.png 1\n")
    net = net_of(tmp_path, image_layer(tmp_path, batch=6))
    with pytest.raises(ProtonetError, match=r"layer 'img' \(ImageData\): could not load "
                       r"'.*missing.png'"):
        net.forward()
    close(net)
    bad = image_layer(tmp_path).replace(str(tmp_path / "list.txt"), str(tmp_path / "none.txt"))
    with pytest.raises(ProtonetError, match="cannot read image list .*none.txt.*LABEL"):
        net_of(tmp_path, bad)
    with pytest.raises(ProtonetError, match="new_height and new_width together"):
        net_of(tmp_path, image_layer(tmp_path, "new_height: 4"))


def test_image_list_parsing():
    from protonet.data.images import parse_image_list
    assert parse_image_list("a b/c d.jpg 7\nno_label\nx.png  -3\r\n\n") == [
        ("a b/c d.jpg", 7), ("no_label", 0), ("x.png ", -3), ("", 0)]


# -- HDF5Data / HDF5Output ---------------------------------------------------------------------
@pytest.fixture
def h5_files(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    data, labels, names = [], [], []
    for k, n in enumerate((4, 3)):
        x = rng.normal(size=(n, 2, 3)).astype(np.float64)
        y = np.arange(n, dtype=np.int32) + 10 * k
        with h5py.File(tmp_path / f"part{k}.h5", "w") as f:
            f["data"] = x
            f["label"] = y
        data.append(x)
        labels.append(y)
        names.append(f"part{k}.h5")
    (tmp_path / "files.txt").write_text("\n".join(names) + "\n")
    return tmp_path, np.concatenate(data).astype(np.float32), np.concatenate(labels)


def h5_layer(tmp_path, extra="", batch=5):
    return ('layer { name: "h" type: "HDF5Data" top: "data" top: "label"\n'
            f'  hdf5_data_param {{ source: "{tmp_path / "files.txt"}" batch_size: {batch} '
            f'{extra} }} }}\n')


def test_hdf5_data_runs_across_files(h5_files):
    tmp_path, data, labels = h5_files
    net = net_of(tmp_path, h5_layer(tmp_path))
    assert net.blobs["data"].shape == (5, 2, 3) and net.blobs["label"].shape == (5,)
    for b in range(3):
        net.forward()
        idx = [(b * 5 + k) % 7 for k in range(5)]
        assert np.array_equal(net.blobs["data"].data, data[idx])
        assert np.array_equal(net.blobs["label"].data, labels[idx])


def test_hdf5_data_shuffle_and_resume(h5_files):
    tmp_path, data, labels = h5_files
    net = net_of(tmp_path, h5_layer(tmp_path, "shuffle: true", batch=7), seed=2)
    seen = []
    for _ in range(4):
        net.forward()
        seen.append(tuple(net.blobs["label"].data.astype(int)))
    assert all(sorted(s) == sorted(labels.tolist()) for s in seen)  # one file pass per batch
    assert len(set(seen)) > 1
    state = json.loads(json.dumps(net.layers[0].get_state()))
    net.forward()
    expected = net.blobs["data"].data.copy()
    other = net_of(tmp_path, h5_layer(tmp_path, "shuffle: true", batch=7), seed=5,
                   name="o.prototxt")
    other.layers[0].set_state(state)
    other.forward()
    assert np.array_equal(other.blobs["data"].data, expected)


def test_hdf5_data_errors(h5_files):
    tmp_path, _, _ = h5_files
    bad = h5_layer(tmp_path).replace('top: "label"', 'top: "target"')
    with pytest.raises(ProtonetError, match="has no dataset 'target'.*named after the top"):
        net_of(tmp_path, bad)
    with pytest.raises(ProtonetError, match="does not transform"):
        net_of(tmp_path, h5_layer(tmp_path).replace("hdf5_data_param",
                                                    "transform_param { scale: 2 } hdf5_data_param"))
    (tmp_path / "files.txt").write_text("nothere.h5\n")
    with pytest.raises(ProtonetError, match="cannot open HDF5 file 'nothere.h5'"):
        net_of(tmp_path, h5_layer(tmp_path))
    missing = h5_layer(tmp_path).replace("files.txt", "nolist.txt")
    with pytest.raises(ProtonetError, match="nolist.txt.*text file listing .h5 files"):
        net_of(tmp_path, missing)


def test_hdf5_output_writes_4d_and_appends(tmp_path):
    h5py = pytest.importorskip("h5py")
    out = tmp_path / "out.h5"
    net = net_of(tmp_path, f"""
layer {{ name: "in" type: "DummyData" top: "x" top: "y"
  dummy_data_param {{ shape {{ dim: 2 dim: 3 }} shape {{ dim: 2 }}
                      data_filler {{ type: "uniform" }} }} }}
layer {{ name: "out" type: "HDF5Output" bottom: "x" bottom: "y"
  hdf5_output_param {{ file_name: "{out}" }} }}
""")
    net.forward()
    first = net.blobs["x"].data.copy(), net.blobs["y"].data.copy()
    net.forward()
    close(net)
    with h5py.File(out, "r") as f:
        assert f["data"].shape == (4, 3, 1, 1) and f["label"].shape == (4, 1, 1, 1)
        assert f["data"].dtype == np.float32
        assert np.array_equal(f["data"][:2, :, 0, 0], first[0])
        assert np.array_equal(f["label"][2:, 0, 0, 0], net.blobs["y"].data)


# -- MemoryData / WindowData -------------------------------------------------------------------
MEMORY = ('layer { name: "m" type: "MemoryData" top: "data" top: "label"\n'
          '  memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }\n')


def test_memory_data(tmp_path):
    net = net_of(tmp_path, MEMORY)
    layer = net.layers[0]
    with pytest.raises(ProtonetError, match="set_input_arrays"):
        net.forward()
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    layer.set_input_arrays(data, np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1))
    for b in (0, 1, 0):
        net.forward()
        assert np.array_equal(net.blobs["data"].data, data[2 * b:2 * b + 2])
        assert net.blobs["label"].shape == (2, 1, 1, 1)
        assert np.array_equal(net.blobs["label"].data.ravel(), [2 * b, 2 * b + 1])
    with pytest.raises(ProtonetError, match="does not match"):
        layer.set_input_arrays(np.zeros((2, 1, 3, 3)), np.zeros(2))
    with pytest.raises(ProtonetError, match="multiple of batch_size 2"):
        layer.set_input_arrays(np.zeros((3, 1, 2, 3)), np.zeros(3))
    with pytest.raises(ProtonetError, match="one label per row"):
        layer.set_input_arrays(np.zeros((2, 1, 2, 3)), np.zeros(4))
    with pytest.raises(ProtonetError, match="must be given and positive"):
        net_of(tmp_path, MEMORY.replace("height: 2", "height: 0"), name="bad.prototxt")


def test_window_data_without_a_window_file(tmp_path):
    # WindowData itself is tested in tests/test_window_data.py
    with pytest.raises(ProtonetError, match="cannot read window file 'w.txt'"):
        net_of(tmp_path, 'layer { name: "w" type: "WindowData" top: "data" top: "label"\n'
                         '  transform_param { crop_size: 8 }\n'
                         '  window_data_param { source: "w.txt" batch_size: 1 } }\n')


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="Linux madvise")
def test_reader_drops_the_pages_it_mapped_and_still_reads_the_same(tmp_path, monkeypatch):
    from protonet.data import lmdb_source
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 1, 40, 40), dtype=np.uint8)  # ~480 KiB of records
    path = write_lmdb(tmp_path / "big", [(b"%08d" % i, datum_bytes(images[i], i % 10))
                                         for i in range(300)])
    drops = []
    real_drop = lmdb_source.drop_mapped_pages
    monkeypatch.setattr(lmdb_source, "DROP_PAGES_EVERY", 100_000)
    monkeypatch.setattr(lmdb_source, "drop_mapped_pages",
                        lambda p: drops.append(real_drop(p)) or drops[-1])
    db = lmdb_source.DatumDB(path)
    try:
        first = [v for _ in range(10) for v in db.read(30)]
        assert len(drops) >= 3 and all(drops)  # the map was found and released each time
        again = [v for _ in range(10) for v in db.read(30)]  # read back through the map
    finally:
        db.close()
    assert again == first
    pixels, labels = lmdb_source.decode_batch(again, "native", "record")
    np.testing.assert_array_equal(pixels, images)
    np.testing.assert_array_equal(labels, np.arange(300) % 10)
