"""pycaffe's caffe.io: Transformer, image loading and resizing, oversample, proto conversion."""
import numpy as np
import pytest

import protonet.io as caffe_io
from protonet import ProtonetError
from protonet.proto import caffe_pb2

Image = pytest.importorskip("PIL.Image")


def rng(seed=0):
    return np.random.default_rng(seed)


# -- Transformer --------------------------------------------------------------------------------
def configured(**extra):
    t = caffe_io.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    return t


def test_preprocess_applies_caffes_order():
    t = configured()
    img = rng().random((4, 5, 3)).astype(np.float32)
    out = t.preprocess("data", img)
    expected = (img.transpose(2, 0, 1)[[2, 1, 0]] * 255 - np.array([10, 20, 30])[:, None, None]) * 0.5
    assert out.dtype == np.float32 and out.shape == (3, 4, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_allclose(t.deprocess("data", out), img, atol=1e-5)
    np.testing.assert_allclose(t.deprocess("data", out[None]), img, atol=1e-5)  # squeezes N=1
    assert img.dtype == np.float32 and img.max() <= 1          # the input is left alone


def test_preprocess_resizes_first():
    t = caffe_io.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    img = rng().random((8, 10, 3))
    out = t.preprocess("data", img)
    np.testing.assert_allclose(out, caffe_io.resize_image(img, (4, 5)).transpose(2, 0, 1),
                               rtol=1e-6)


def test_transformer_checks():
    t = caffe_io.Transformer({"data": (1, 3, 4, 5)})
    with pytest.raises(ProtonetError, match="not one of the net inputs"):
        t.preprocess("image", np.zeros((4, 5, 3)))
    with pytest.raises(ProtonetError, match="needs 3 axes"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(ProtonetError, match="needs 3 channels"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="Mean channels"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(ValueError, match="Mean shape invalid"):
        t.set_mean("data", np.zeros((1, 1, 3, 4, 5)))


def test_set_mean_with_a_mean_image():
    t = caffe_io.Transformer({"data": (1, 3, 4, 5)})
    same = rng().random((3, 4, 5))
    t.set_mean("data", same)
    np.testing.assert_array_equal(t.mean["data"], same)
    t.set_mean("data", np.ones((3, 8, 10)) * np.array([1.0, 2.0, 3.0])[:, None, None])
    assert t.mean["data"].shape == (3, 4, 5)                   # resized to the input
    np.testing.assert_allclose(t.mean["data"][:, 1, 1], [1, 2, 3], rtol=1e-6)


# -- load_image ------------------------------------------------------------------------------------
def save(tmp_path, array, name="img.png"):
    path = str(tmp_path / name)
    Image.fromarray(array).save(path)
    return path


def test_load_image_rgb_gray_and_alpha(tmp_path):
    rgb = (rng().random((6, 7, 3)) * 255).astype(np.uint8)
    img = caffe_io.load_image(save(tmp_path, rgb))
    assert img.dtype == np.float32 and img.shape == (6, 7, 3)
    np.testing.assert_allclose(img, rgb / 255.0, atol=1e-6)
    gray = caffe_io.load_image(save(tmp_path, rgb), color=False)
    assert gray.shape == (6, 7, 1)
    np.testing.assert_allclose(gray[..., 0], (rgb / 255.0) @ [0.2125, 0.7154, 0.0721], atol=1e-6)
    l8 = (rng(1).random((5, 4)) * 255).astype(np.uint8)
    as_color = caffe_io.load_image(save(tmp_path, l8, name="l.png"))
    assert as_color.shape == (5, 4, 3)
    np.testing.assert_allclose(as_color[..., 1], l8 / 255.0, atol=1e-6)
    assert caffe_io.load_image(save(tmp_path, l8, name="l.png"), color=False).shape == (5, 4, 1)
    rgba = (rng(2).random((3, 4, 4)) * 255).astype(np.uint8)
    np.testing.assert_allclose(caffe_io.load_image(save(tmp_path, rgba, name="a.png")),
                               rgba[..., :3] / 255.0, atol=1e-6)


def test_load_image_16_bit_and_palette(tmp_path):
    deep = (rng().random((4, 3)) * 65535).astype(np.uint16)
    img = caffe_io.load_image(save(tmp_path, deep, name="d.png"), color=False)
    np.testing.assert_allclose(img[..., 0], deep / 65535.0, atol=1e-6)
    pal = Image.fromarray((rng().random((4, 4, 3)) * 255).astype(np.uint8)).convert("P")
    pal.save(str(tmp_path / "p.png"))
    img = caffe_io.load_image(str(tmp_path / "p.png"))
    np.testing.assert_allclose(img, np.asarray(pal.convert("RGB")) / 255.0, atol=1e-6)


def test_load_image_errors(tmp_path):
    with pytest.raises(ProtonetError, match="no such file"):
        caffe_io.load_image(str(tmp_path / "missing.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ProtonetError, match="cannot read the image"):
        caffe_io.load_image(str(bad))


# -- resize_image ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, new", [((5, 7, 3), (11, 3)), ((10, 10, 1), (4, 4)),
                                        ((6, 9, 3), (6, 13)), ((1, 5, 3), (3, 2))])
@pytest.mark.parametrize("order", [0, 1])
def test_resize_matches_scikit_image(shape, new, order):
    """skimage.transform.resize(order, mode='constant') is ndimage.zoom with grid_mode and
    'grid-constant' on the image scaled to [0, 1] (pycaffe's path for 1 or 3 channels)."""
    ndimage = pytest.importorskip("scipy.ndimage")
    im = rng().random(shape) * 200 - 50
    lo, hi = im.min(), im.max()
    ref = ndimage.zoom((im - lo) / (hi - lo), (new[0] / shape[0], new[1] / shape[1], 1),
                       order=order, mode="grid-constant", grid_mode=True) * (hi - lo) + lo
    out = caffe_io.resize_image(im, new, interp_order=order)
    assert out.dtype == np.float32 and out.shape == new + (shape[2],)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


def test_resize_other_channel_counts_match_ndimage_zoom():
    ndimage = pytest.importorskip("scipy.ndimage")
    im = rng().random((6, 8, 2))
    ref = ndimage.zoom(im, (9 / 6, 5 / 8, 1), order=1)
    np.testing.assert_allclose(caffe_io.resize_image(im, (9, 5)), ref, rtol=1e-5, atol=1e-6)


def test_resize_constant_and_identity():
    out = caffe_io.resize_image(np.full((3, 4, 3), 0.25), (5, 6))
    assert out.shape == (5, 6, 3) and np.all(out == np.float32(0.25))
    im = rng().random((4, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(caffe_io.resize_image(im, (4, 5)), im, rtol=1e-6)
    with pytest.raises(ProtonetError, match="H x W x K"):
        caffe_io.resize_image(np.zeros((4, 5)), (2, 2))


# -- oversample --------------------------------------------------------------------------------
def test_oversample_ten_crops():
    im = rng().random((9, 11, 3)).astype(np.float32)
    crops = caffe_io.oversample([im, im * 2], (4, 6))
    assert crops.shape == (20, 4, 6, 3) and crops.dtype == np.float32
    expected = [im[:4, :6], im[:4, 5:], im[5:, :6], im[5:, 5:], im[2:6, 2:8]]
    for k, e in enumerate(expected):
        np.testing.assert_array_equal(crops[k], e)
        np.testing.assert_array_equal(crops[5 + k], e[:, ::-1])
        np.testing.assert_array_equal(crops[10 + k], 2 * e)


def test_oversample_classic_sizes_center():
    im = np.arange(256 * 256, dtype=np.float32).reshape(256, 256, 1)
    crops = caffe_io.oversample([im], (227, 227))
    np.testing.assert_array_equal(crops[4], im[14:241, 14:241])


# -- proto conversions ---------------------------------------------------------------------------
def test_blobproto_round_trip_with_diff_and_legacy_shape():
    arr = rng().random((2, 3, 4)).astype(np.float32)
    diff = -arr
    proto = caffe_io.array_to_blobproto(arr, diff)
    assert list(proto.shape.dim) == [2, 3, 4]
    back = caffe_io.blobproto_to_array(proto)
    np.testing.assert_allclose(back, arr, rtol=1e-7)
    np.testing.assert_allclose(caffe_io.blobproto_to_array(proto, return_diff=True), diff)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=[1, 2, 3, 4, 5, 6])
    assert caffe_io.blobproto_to_array(legacy).shape == (1, 2, 1, 3)
    data = caffe_io.arraylist_to_blobprotovector_str([arr, arr[0]])
    arrays = caffe_io.blobprotovector_str_to_arraylist(data)
    assert [a.shape for a in arrays] == [(2, 3, 4), (3, 4)]


def test_datum_round_trip():
    u8 = (rng().random((3, 4, 5)) * 255).astype(np.uint8)
    datum = caffe_io.array_to_datum(u8, label=7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 5, 7)
    assert len(datum.data) == 60 and not len(datum.float_data)
    np.testing.assert_array_equal(caffe_io.datum_to_array(datum), u8)
    f = rng().random((1, 2, 2))
    datum = caffe_io.array_to_datum(f)
    assert not len(datum.data) and datum.label == 0
    np.testing.assert_allclose(caffe_io.datum_to_array(datum), f)
    with pytest.raises(ValueError, match="Incorrect array shape"):
        caffe_io.array_to_datum(np.zeros((2, 2)))


def test_encoded_datum_decodes_as_bgr(tmp_path):
    import io
    rgb = (rng().random((4, 5, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    datum = caffe_pb2.Datum(channels=3, height=4, width=5, data=buf.getvalue(), encoded=True)
    np.testing.assert_array_equal(caffe_io.datum_to_array(datum),
                                  rgb[:, :, ::-1].transpose(2, 0, 1))


@pytest.mark.parametrize("fields, values, shape", [
    ({}, [123.0], ()),                                       # no dims at all: a scalar
    ({"shape": caffe_pb2.BlobShape(dim=[2, 3])}, range(6), (2, 3)),
    ({"num": 1, "channels": 1, "height": 2, "width": 3}, range(6), (1, 1, 2, 3)),
    ({"channels": 3}, range(0), (0, 3, 0, 0)),                # legacy dims default to 0
])
def test_blobproto_shapes_as_pycaffe_reads_them(fields, values, shape):
    proto = caffe_pb2.BlobProto(data=list(values), **fields)
    arr = caffe_io.blobproto_to_array(proto)
    assert arr.shape == shape and arr.dtype == np.float64
    np.testing.assert_array_equal(arr.ravel(), list(values))


@pytest.mark.parametrize("fields", [
    {},                                                       # 100 values, no dims: scalar
    {"num": 1, "channels": 1, "height": 10, "width": 9},      # legacy dims 90 != 100
    {"shape": caffe_pb2.BlobShape(dim=[10, 11])},
])
def test_blobproto_values_that_dont_fit_raise_value_error(fields):
    from protonet import ProtonetError
    proto = caffe_pb2.BlobProto(data=[0.0] * 100, **fields)
    with pytest.raises(ValueError, match="holds 100 values") as err:
        caffe_io.blobproto_to_array(proto)
    assert isinstance(err.value, ProtonetError)
