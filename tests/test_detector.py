"""caffe.Detector: R-CNN windows cut, warped and classified, with context padding."""
import numpy as np
import pytest
from PIL import Image

from protonet.detector import Detector
from protonet.errors import ProtonetError
from protonet.io.pycaffe_io import load_image, resize_image

DEPLOY = """name: "det" input: "data" input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        path = tmp_path / f"im{i}.png"
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(path)
        images.append(str(path))
    from protonet import Net
    Net(str(tmp_path / "deploy.prototxt"), "TEST", seed=1).save(str(tmp_path / "w.caffemodel"))
    return str(tmp_path / "deploy.prototxt"), str(tmp_path / "w.caffemodel"), images


MEAN = np.array([100.0, 110.0, 120.0])


def detector(files, **kw):
    deploy, weights, _ = files
    return Detector(deploy, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0), **kw)


def test_windows_are_cut_warped_and_classified_in_batches(files):
    det = detector(files)
    images = files[2]
    windows = [(images[0], [(0, 0, 10, 12), (5, 6, 20, 24), (2, 3, 9, 9)]),
               (images[1], [(1, 1, 19, 23)])]
    found = det.detect_windows(windows)   # 4 windows through a batch of 2
    assert [(d["filename"], d["window"]) for d in found] == [
        (name, w) for name, ws in windows for w in ws]
    for d in found:
        im = load_image(d["filename"]).astype(np.float32)
        y0, x0, y1, x1 = d["window"]
        x = resize_image(im[y0:y1, x0:x1], (8, 8)).transpose(2, 0, 1)[::-1] * 255
        x = x - MEAN[:, None, None]
        expected = det.forward(data=np.stack([x, x]))["prob"][0]
        np.testing.assert_allclose(d["prediction"], expected, rtol=1e-5, atol=1e-7)
    assert det.detect_windows([]) == []


def test_context_pad_inside_the_image_warps_the_widened_box(files):
    """8x8 input, pad 2: the window fills the middle 4x4, so the box doubles around its
    centre. Window rows/cols 4..11 -> box 0..16 (17 px) -> the crop is im[0:16, 0:16]."""
    det = detector(files, context_pad=2)
    im = np.random.default_rng(1).random((20, 24, 3)).astype(np.float32)
    np.testing.assert_allclose(det.crop(im, (4, 4, 11, 11)),
                               resize_image(im[0:16, 0:16], (8, 8)), rtol=1e-6)


def test_context_pad_outside_the_image_is_filled_with_the_mean(files):
    """Window 0..7 at the corner: box -4..12; the 4 pixels outside are round(4*8/17) = 2
    input pixels of mean; the 13 inside warp to round(13*8/17) = 6."""
    det = detector(files, context_pad=2)
    im = np.random.default_rng(2).random((20, 24, 3)).astype(np.float32)
    crop = det.crop(im, (0, 0, 7, 7))
    np.testing.assert_allclose(crop[2:, 2:], resize_image(im[0:12, 0:12], (6, 6)), rtol=1e-6)
    image_mean = MEAN[::-1] / 255          # unswapped to the image's RGB, unscaled
    np.testing.assert_allclose(crop[:2, :], np.broadcast_to(image_mean, (2, 8, 3)), rtol=1e-6)
    np.testing.assert_allclose(crop[:, :2], np.broadcast_to(image_mean, (8, 2, 3)), rtol=1e-6)


def test_without_context_the_crop_is_the_window(files):
    det = detector(files)
    im = np.arange(20 * 24 * 3, dtype=np.float32).reshape(20, 24, 3)
    np.testing.assert_array_equal(det.crop(im, (2, 3, 9, 10)), im[2:9, 3:10])
    assert list(det.crop_dims) == [8, 8, 3]


def test_selective_search_without_its_package_says_what_is_missing(files):
    with pytest.raises(ProtonetError, match="selective_search_ijcv_with_python"):
        detector(files).detect_selective_search(files[2])
