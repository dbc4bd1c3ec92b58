"""DataTransformer against a literal transcription of Caffe's per-pixel loop."""
import numpy as np
import pytest

from protonet import ProtonetError
from protonet.layers.base import TEST, TRAIN
from protonet.proto import caffe_pb2
from protonet.transform import DataTransformer


def caffe_reference(image, *, scale=1.0, mean=None, mean_values=None, crop=0, h_off=0, w_off=0,
                    mirror=False, dtype=np.float32):
    """data_transformer.cpp's Transform(Datum, Dtype*) for one image, pixel by pixel."""
    c, H, W = image.shape
    h, w = (crop, crop) if crop else (H, W)
    out = np.zeros((c, h, w), dtype)
    flat = image.ravel()
    scale = dtype(np.float32(scale))
    for ci in range(c):
        for y in range(h):
            for x in range(w):
                data_index = (ci * H + h_off + y) * W + w_off + x
                top_x = (w - 1 - x) if mirror else x
                element = dtype(flat[data_index])
                if mean is not None:
                    out[ci, y, top_x] = (element - dtype(mean.ravel()[data_index])) * scale
                elif mean_values is not None:
                    mv = mean_values[ci] if len(mean_values) > 1 else mean_values[0]
                    out[ci, y, top_x] = (element - dtype(np.float32(mv))) * scale
                else:
                    out[ci, y, top_x] = element * scale
    return out


def make(phase=TRAIN, seed=0, **fields):
    param = caffe_pb2.TransformationParameter(**fields)
    return DataTransformer(param, phase, np.random.default_rng(seed), "data")


def fixed_draws(transformer, flips, rows, cols):
    transformer.draw = lambda n, h, w: (None if flips is None else np.asarray(flips, bool),
                                        np.asarray(rows), np.asarray(cols))


def write_mean(path, mean):
    proto = caffe_pb2.BlobProto(num=1, channels=mean.shape[0], height=mean.shape[1],
                                width=mean.shape[2])
    proto.data.extend(mean.astype(np.float32).ravel().tolist())
    path.write_bytes(proto.SerializeToString())
    return str(path)


@pytest.fixture
def batch():
    return np.random.default_rng(5).integers(0, 256, (4, 3, 7, 9), dtype=np.uint8)


def test_identity_and_scale_are_exact(batch):
    out = np.empty(batch.shape, np.float32)
    make().__call__(batch, out)
    assert np.array_equal(out, batch.astype(np.float32))
    make(scale=0.00390625)(batch, out)
    assert np.array_equal(out, batch.astype(np.float32) * np.float32(0.00390625))
    odd = make(scale=0.017)
    odd(batch, out)
    for i in range(len(batch)):
        assert np.array_equal(out[i], caffe_reference(batch[i], scale=0.017))


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_crop_mirror_mean_file_scale_in_caffe_order(tmp_path, batch, phase):
    mean = np.random.default_rng(1).uniform(0, 255, batch.shape[1:]).astype(np.float32)
    t = make(phase, crop_size=5, mirror=True, scale=0.5,
             mean_file=write_mean(tmp_path / "mean.binaryproto", mean))
    flips, rows, cols = [True, False, True, False], [0, 2, 1, 2], [4, 0, 3, 1]
    if phase == TEST:
        rows, cols = [1] * 4, [2] * 4  # the centre: (7-5)//2, (9-5)//2
    fixed_draws(t, flips, rows, cols)
    out = np.empty((4, 3, 5, 5), np.float32)
    t(batch, out)
    for i in range(4):
        expected = caffe_reference(batch[i], scale=0.5, mean=mean, crop=5, h_off=rows[i],
                                   w_off=cols[i], mirror=flips[i])
        assert np.array_equal(out[i], expected), i


def test_mean_values_one_or_per_channel(batch):
    out = np.empty(batch.shape, np.float32)
    for values in ([104.0], [104.0, 117.0, 123.0]):
        t = make(mean_value=values, scale=0.25)
        t(batch, out)
        for i in range(len(batch)):
            assert np.array_equal(out[i], caffe_reference(batch[i], scale=0.25,
                                                          mean_values=values))


def test_float64_output_and_float_input(batch):
    out = np.empty(batch.shape, np.float64)
    make(mean_value=[0.5], scale=0.1)(batch, out)
    assert np.array_equal(out[0], caffe_reference(batch[0], scale=0.1, mean_values=[0.5],
                                                  dtype=np.float64))
    floats = batch.astype(np.float32) / 3
    out32 = np.empty(batch.shape, np.float32)
    make(scale=2.0)(floats, out32)
    assert np.array_equal(out32, floats * np.float32(2))


def test_random_choices_train_test(batch):
    t = make(TRAIN, seed=3, crop_size=4, mirror=True)
    flips, rows, cols = t.draw(1000, 7, 9)
    assert set(rows) == {0, 1, 2, 3} and set(cols) == set(range(6))
    assert 400 < flips.sum() < 600
    t = make(TEST, seed=3, crop_size=4, mirror=True)
    flips, rows, cols = t.draw(1000, 7, 9)
    assert set(rows) == {1} and set(cols) == {2}
    assert 400 < flips.sum() < 600  # Caffe mirrors in TEST too
    assert make(TEST, mirror=False).draw(5, 7, 9)[0] is None


def test_train_crop_is_each_images_own_window(batch):
    t = make(TRAIN, seed=11, crop_size=3)
    rng = np.random.default_rng(11)
    out = np.empty((4, 3, 3, 3), np.float32)
    t(batch, out)
    rows = rng.integers(0, 5, size=4)
    cols = rng.integers(0, 7, size=4)
    for i in range(4):
        assert np.array_equal(out[i], caffe_reference(batch[i], crop=3, h_off=rows[i],
                                                      w_off=cols[i]))


def test_same_state_same_result(batch):
    a, b = make(TRAIN, seed=4, crop_size=5, mirror=True), make(TRAIN, seed=4, crop_size=5,
                                                               mirror=True)
    out_a, out_b = np.empty((4, 3, 5, 5), np.float32), np.empty((4, 3, 5, 5), np.float32)
    a(batch, out_a)
    b(batch, out_b)
    assert np.array_equal(out_a, out_b)


def test_images_of_different_sizes_with_crop():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (1, h, w), dtype=np.uint8) for h, w in ((6, 6), (8, 5))]
    t = make(TEST, crop_size=4, mean_value=[10.0])
    out = np.empty((2, 1, 4, 4), np.float32)
    t.transform_images(images, out)
    assert np.array_equal(out[0], caffe_reference(images[0], crop=4, h_off=1, w_off=1,
                                                  mean_values=[10.0]))
    assert np.array_equal(out[1], caffe_reference(images[1], crop=4, h_off=2, w_off=0,
                                                  mean_values=[10.0]))
    with pytest.raises(ProtonetError, match="differ in size"):
        make(TEST).transform_images(images, np.empty((2, 1, 6, 6), np.float32))


def test_errors(tmp_path, batch):
    with pytest.raises(ProtonetError, match="mean_file or mean_value"):
        make(mean_file="m.binaryproto", mean_value=[1.0])
    with pytest.raises(ProtonetError, match="force_color and force_gray"):
        make(force_color=True, force_gray=True)
    with pytest.raises(ProtonetError, match="crop_size 8 is larger than the 7x9"):
        make(crop_size=8).output_shape(3, 7, 9)
    out = np.empty(batch.shape, np.float32)
    with pytest.raises(ProtonetError, match="1 mean_value or one per channel"):
        make(mean_value=[1.0, 2.0])(batch, out)
    bad = write_mean(tmp_path / "m.binaryproto", np.zeros((3, 5, 5), np.float32))
    with pytest.raises(ProtonetError, match=r"is \[3, 5, 5\].*compute-mean"):
        make(mean_file=bad)(batch, out)
    with pytest.raises(ProtonetError, match="cannot read mean_file.*protonet compute-mean"):
        make(mean_file=str(tmp_path / "missing.binaryproto"))(batch, out)


def test_mean_file_with_shape_field(tmp_path, batch):
    mean = np.full((3, 7, 9), 3.0, np.float32)
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend([1, 3, 7, 9])
    proto.data.extend(mean.ravel().tolist())
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(proto.SerializeToString())
    out = np.empty(batch.shape, np.float32)
    make(mean_file=str(path))(batch, out)
    assert np.array_equal(out, batch.astype(np.float32) - 3)
