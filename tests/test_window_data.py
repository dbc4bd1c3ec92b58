"""WindowData (R-CNN window files), after Caffe's window_data_layer.cpp.

The crop geometry is checked against warps computed by hand below (Caffe's float
arithmetic and C's round, halves away from zero); the layer's pixels against those hand
warps applied to the test image; the batches' foreground fraction, labels and mirroring
against the window files the tests write.
"""
import json
import os
import warnings

import numpy as np
import pytest

from protonet import ProtonetError
from protonet.layers.window_data import Warp, Window, c_round, parse_window_file, window_warp
from protonet.net import Net

Image = pytest.importorskip("PIL.Image")


def box(x1, y1, x2, y2):
    return Window(0, 1, 1.0, x1, y1, x2, y2)


# -- geometry ----------------------------------------------------------------------------------
def test_c_round_takes_halves_away_from_zero():
    assert [c_round(v) for v in (-1.5, -0.5, -0.49999997, 0.5, 1.5, 2.5, 212.51)] == \
        [-2, -1, 0, 1, 2, 3, 213]


def test_warp_without_context_is_the_window_itself():
    assert window_warp(box(10, 20, 49, 59), 80, 100, 227) == Warp(10, 20, 49, 59, 227, 227, 0, 0)


def test_context_pad_inside_the_image():
    """crop 227, context_pad 16: scale 227/195 = 1.1641026. The 40x40 box at (10, 20) has
    half size 20 and centre (30, 40): x1 = round(30 - 23.282) = 7, x2 = round(53.282) = 53,
    y1 = round(16.718) = 17, y2 = round(63.282) = 63; nothing is clipped, so the 47x47
    region fills the whole 227x227 output."""
    assert window_warp(box(10, 20, 49, 59), 80, 100, 227, 16) == \
        Warp(7, 17, 53, 63, 227, 227, 0, 0)


def test_context_pad_clipped_at_the_top_left():
    """The box (0, 0, 39, 39) grows to (-3, -3, 43, 43): 47 wide, 3 cut off at the left and
    top. The kept 44 pixels scale by 227/47 = 4.8297872 to round(212.51) = 213, placed after
    round(3 * 4.8297872) = round(14.49) = 14 pixels of zeros; mirrored, the zeros are on the
    right (the right cut, 0, becomes the left offset)."""
    assert window_warp(box(0, 0, 39, 39), 80, 100, 227, 16) == \
        Warp(0, 0, 43, 43, 213, 213, 14, 14)
    assert window_warp(box(0, 0, 39, 39), 80, 100, 227, 16, mirror=True) == \
        Warp(0, 0, 43, 43, 213, 213, 14, 0)


def test_context_pad_clipped_at_the_bottom_right():
    """(60, 40, 99, 79) in a 100x80 image grows to (57, 37, 103, 83): 4 cut at the right and
    bottom; the kept 43 become round(43 * 4.8297872) = round(207.68) = 208 at offset 0, or,
    mirrored, at column round(4 * 4.8297872) = round(19.32) = 19."""
    assert window_warp(box(60, 40, 99, 79), 80, 100, 227, 16) == \
        Warp(57, 37, 99, 79, 208, 208, 0, 0)
    assert window_warp(box(60, 40, 99, 79), 80, 100, 227, 16, mirror=True) == \
        Warp(57, 37, 99, 79, 208, 208, 0, 19)


def test_rounding_halves_and_the_shrink_to_fit():
    """crop 12, context_pad 1: scale 12/10 = 1.2 (float 1.20000005). The 5x5 box at the origin
    has half size 2.5, and 2.5 * 1.2f rounds to exactly 3.0f, so x1 = round(-0.5) = -1 (C
    rounds away from zero; Python's round would give 0) and x2 = round(5.5) = 6. Cut 1 of 8:
    the kept 7 scale by 1.5 to round(10.5) = 11 after round(1.5) = 2 of padding; 2 + 11 > 12,
    so Caffe shrinks the size to 10. Mirrored, the offset is the right cut, 0, and 11 fits."""
    assert window_warp(box(0, 0, 4, 4), 20, 20, 12, 1) == Warp(0, 0, 6, 6, 10, 10, 2, 2)
    assert window_warp(box(0, 0, 4, 4), 20, 20, 12, 1, mirror=True) == \
        Warp(0, 0, 6, 6, 10, 11, 2, 0)


def test_square_mode():
    """crop_mode square, no context: the 40x60 box (10, 20, 49, 79) takes half size 30 about its
    centre (30, 50): (0, 20, 60, 80), 61x61; the bottom row is outside the 80-row image, so
    the kept 61x60 become 227 x round(60 * 227/61) = round(223.28) = 223."""
    assert window_warp(box(10, 20, 49, 79), 80, 100, 227, 0, square=True) == \
        Warp(0, 20, 60, 79, 223, 227, 0, 0)


# -- the window file ---------------------------------------------------------------------------
def test_window_file_parsing():
    text = ("# 0\nimgs/a.jpg\n3\n80\n100\n4\n"
            "5 0.9 1 2 30 40\n"       # foreground, class 5
            "7 0.5 0 0 9 9\n"         # overlap == fg_threshold: foreground
            "3 0.45 1 1 8 8\n"        # between the thresholds: dropped
            "2 0.1 0 0 50 50\n"       # background: class forced to 0
            "# 1 imgs/b.jpg 3 60 70 1 0 0.0 5 5 20 20\n")  # any whitespace separates fields
    parsed = parse_window_file(text, "root/", 0.5, 0.3)
    assert parsed.images == [("root/imgs/a.jpg", (3, 80, 100)), ("root/imgs/b.jpg", (3, 60, 70))]
    assert parsed.fg == [Window(0, 5, pytest.approx(0.9), 1, 2, 30, 40),
                         Window(0, 7, 0.5, 0, 0, 9, 9)]
    assert parsed.bg == [Window(0, 0, 0.0, 0, 0, 50, 50), Window(1, 0, 0.0, 5, 5, 20, 20)]
    assert parsed.dropped == 1


@pytest.mark.parametrize("text, message", [
    ("", "window file is empty"),
    ("# 1\na.jpg 3 8 8 0\n", "image index 1 where 0 was expected"),
    ("# 0 a.jpg 3 8 8 0\n! 1 b.jpg 3 8 8 0\n", ":2: expected '#' before image 1"),
    ("# 0 a.jpg 3 8 8 1\n0 0.9 0 0 4 4\n", ":2: a foreground window .* has class 0"),
    ("# 0 a.jpg 3 8 8 2\n1 0.9 0 0 4 4\n", "ends early"),
    ("# 0 a.jpg 3 8 x 0\n", ":1: width 'x' is not an integer"),
])
def test_window_file_errors(text, message):
    with pytest.raises(ProtonetError, match=message):
        parse_window_file(text, "", 0.5, 0.5, "w.txt")


# -- the layer ---------------------------------------------------------------------------------
@pytest.fixture
def scene(tmp_path):
    """One 100x80 image; a foreground window at the top left, a background one at the bottom
    right. Returns (tmp_path, the image as (3, 80, 100) BGR)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(rgb).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "windows.txt").write_text(
        "# 0\na.png\n3\n80\n100\n2\n4 0.8 0 0 39 39\n9 0.2 60 40 99 79\n")
    return tmp_path, rgb[:, :, ::-1].transpose(2, 0, 1)


def window_net(tmp_path, transform="crop_size: 227", params="", batch=4, phase="TRAIN",
               seed=0, source="windows.txt", name="net.prototxt", extra=""):
    """A net of one WindowData layer; ``params`` go into window_data_param, ``extra`` into
    the layer; image paths are relative to root_folder tmp_path/imgs/."""
    path = tmp_path / name
    path.write_text(
        'name: "w"\nlayer { name: "w" type: "WindowData" top: "data" top: "label"\n'
        f'  transform_param {{ {transform} }} {extra}\n'
        f'  window_data_param {{ source: "{tmp_path / source}" batch_size: {batch} '
        f'root_folder: "{tmp_path}/imgs/" {params} }} }}\n')
    return Net(str(path), phase, seed=seed)


def close(net):
    for layer in net.layers:
        getattr(layer, "close", lambda: None)()


def expected_item(image, region, size, pads, mean=None, mean_off=0, scale=1.0, flip=False):
    """What Caffe writes for one window: the region (x1, y1, x2, y2) resized to size (h, w)
    with bilinear interpolation as cv::resize computes it (protonet's resize_linear, checked
    against OpenCV in test_resize_is_opencvs_bilinear), mirrored if asked, placed at pads
    (row, column) in a zero 227x227 image, minus the mean, times scale."""
    from protonet.data.images import resize_linear
    x1, y1, x2, y2 = region
    (h, w), (ph, pw) = size, pads
    warped = resize_linear(image[:, y1:y2 + 1, x1:x2 + 1], h, w)
    if flip:
        warped = warped[:, :, ::-1]
    out = np.zeros((3, 227, 227), np.float32)
    values = warped.astype(np.float32)
    if mean is not None:
        m = mean[:, mean_off + ph:mean_off + ph + h, mean_off + pw:mean_off + pw + w] \
            if mean.ndim == 3 else mean.reshape(3, 1, 1)
        values = values - m
    out[:, ph:ph + h, pw:pw + w] = values * np.float32(scale)
    return out


def test_resize_is_opencvs_bilinear(scene):
    """The warp of the geometry tests' windows, against cv2.resize INTER_LINEAR of the same
    regions. OpenCV's SIMD code drops low bits of the vertical pass (it shifts the row sums
    right by 4 before a 16-bit multiply), so its values may be 1 grey level off the exact
    11-bit fixed-point result protonet computes."""
    cv2 = pytest.importorskip("cv2")
    from protonet.data.images import resize_linear
    _, image = scene
    hwc = image.transpose(1, 2, 0)
    for (x1, y1, x2, y2), (h, w) in [((0, 0, 43, 43), (213, 213)), ((57, 37, 99, 79), (208, 208)),
                                      ((0, 20, 60, 79), (223, 227)), ((0, 0, 6, 6), (10, 11))]:
        ours = resize_linear(image[:, y1:y2 + 1, x1:x2 + 1], h, w).astype(int)
        theirs = cv2.resize(np.ascontiguousarray(hwc[y1:y2 + 1, x1:x2 + 1]), (w, h),
                            interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= 1


def test_warped_pixels_mean_file_and_scale(scene):
    """Two background then two foreground windows, each warped as computed by hand in the
    geometry tests, minus the mean file's central window, times window_data_param.scale."""
    from protonet.io.blobs import array_to_blob_proto
    tmp_path, image = scene
    # 240 rows, 230 columns: Caffe takes the offset (230 - 227) / 2 = 1 for rows and columns
    mean = np.random.default_rng(1).uniform(0, 255, (3, 240, 230)).astype(np.float32)
    (tmp_path / "mean.binaryproto").write_bytes(
        array_to_blob_proto(mean[None], legacy_4d=True).SerializeToString())
    net = window_net(tmp_path, f'crop_size: 227 mean_file: "{tmp_path / "mean.binaryproto"}"',
                     "context_pad: 16 fg_fraction: 0.5 scale: 0.25")
    assert net.blobs["data"].shape == (4, 3, 227, 227) and net.blobs["label"].shape == (4,)
    net.forward()
    bg = expected_item(image, (57, 37, 99, 79), (208, 208), (0, 0), mean, 1, 0.25)
    fg = expected_item(image, (0, 0, 43, 43), (213, 213), (14, 14), mean, 1, 0.25)
    out = net.blobs["data"].data
    for i, want in enumerate([bg, bg, fg, fg]):
        np.testing.assert_array_equal(out[i], want)
    assert net.blobs["label"].data.tolist() == [0, 0, 4, 4]
    close(net)


def test_mirroring_mean_values_and_square_mode(scene):
    tmp_path, image = scene
    net = window_net(tmp_path, "crop_size: 227 mirror: true mean_value: 100 mean_value: 50 "
                     "mean_value: 20", "context_pad: 16 fg_fraction: 0.5", batch=8, seed=3)
    mean = np.array([100, 50, 20], np.float32)
    fg = (image, (0, 0, 43, 43), (213, 213))
    plain = expected_item(*fg, (14, 14), mean)
    mirrored = expected_item(*fg, (14, 0), mean, flip=True)
    flips = []
    for _ in range(4):
        net.forward()
        for item in net.blobs["data"].data[4:]:
            flips.append(np.array_equal(item, mirrored))
            assert flips[-1] or np.array_equal(item, plain)
    assert 0 < sum(flips) < len(flips)  # a coin per window
    close(net)
    net = window_net(tmp_path, "crop_size: 227", 'crop_mode: "square" fg_fraction: 0.5',
                     batch=2, name="square.prototxt")
    net.forward()
    # square mode without context still recomputes the corners from the centre: the 40x40
    # window (0, 0, 39, 39), centre 20, half size 20, becomes (0, 0, 40, 40), 41x41, all
    # inside the image; the background window (60, 40, 99, 79) becomes (60, 40, 100, 80),
    # loses its last column and row to the image's edge, and the kept 40 of 41 pixels warp
    # to round(40 * 227/41) = round(221.46) = 221 at offset 0
    np.testing.assert_array_equal(net.blobs["data"].data[1],
                                  expected_item(image, (0, 0, 40, 40), (227, 227), (0, 0)))
    np.testing.assert_array_equal(net.blobs["data"].data[0],
                                  expected_item(image, (60, 40, 99, 79), (221, 221), (0, 0)))
    close(net)


@pytest.fixture
def many(tmp_path):
    """Three images of different sizes, foreground windows of classes 1..5, background ones,
    and windows between the thresholds (class 9) that must never be drawn."""
    rng = np.random.default_rng(4)
    (tmp_path / "imgs").mkdir()
    lines = []
    for i, (h, w) in enumerate([(50, 60), (40, 70), (64, 64)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"im{i}.jpg", quality=90)
        windows = [f"{1 + (i * 2 + k) % 5} 0.{7 + k} {k} {k} {20 + k} {25 + k}" for k in range(2)]
        windows += [f"{3 + k} 0.{k} {5 * k} 0 {w - 1} {h - 1 - k}" for k in range(3)]
        windows += ["9 0.45 2 2 30 30"]
        lines += [f"# {i}", f"im{i}.jpg", "3", str(h), str(w), str(len(windows))] + windows
    (tmp_path / "windows.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.mark.parametrize("batch, fraction, n_fg", [(10, 0.25, 2), (7, 0.5, 3), (10, 0.3, 3),
                                                    (16, 0.25, 4), (5, 0.0, 0)])
def test_foreground_count_and_labels_per_batch(many, batch, fraction, n_fg):
    net = window_net(many, "crop_size: 16",
                     f"context_pad: 2 fg_fraction: {fraction} fg_threshold: 0.5 "
                     "bg_threshold: 0.3", batch=batch, phase="TEST")
    seen = set()
    for _ in range(12):
        net.forward()
        labels = net.blobs["label"].data
        assert np.all(labels[:batch - n_fg] == 0)  # background first ...
        assert np.all(np.isin(labels[batch - n_fg:], [1, 2, 3, 4, 5]))  # ... then foreground
        seen.update(labels.tolist())
    assert 9 not in seen
    if n_fg:
        assert seen == {0, 1, 2, 3, 4, 5}  # the six foreground windows cover classes 1..5
    close(net)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_and_cache_images(many, prefetch):
    """A snapshot's state gives the very batches that come next; cache_images (file bytes
    read at setup) gives the same batches as reading the files each time."""
    params = "context_pad: 2 fg_fraction: 0.5"
    extra = f"data_param {{ prefetch: {prefetch} }}"
    net = window_net(many, "crop_size: 16 mirror: true", params + " cache_images: true",
                     batch=6, seed=7, extra=extra)
    for _ in range(2):
        net.forward()
    state = json.loads(json.dumps(net.layers[0].get_state()))
    following = []
    for _ in range(3):
        net.forward()
        following.append((net.blobs["data"].data.copy(), net.blobs["label"].data.copy()))
    other = window_net(many, "crop_size: 16 mirror: true", params, batch=6, seed=99,
                       extra=extra, name="other.prototxt")
    other.forward()
    other.layers[0].set_state(state)
    for data, label in following:
        other.forward()
        np.testing.assert_array_equal(other.blobs["data"].data, data)
        np.testing.assert_array_equal(other.blobs["label"].data, label)
    close(net)
    close(other)


def test_transform_scale_is_ignored_as_in_caffe(scene):
    tmp_path, image = scene
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = window_net(tmp_path, "crop_size: 227 scale: 0.5", "fg_fraction: 0.5", batch=2)
    assert any("transform_param.scale is ignored" in str(w.message) for w in caught)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data[1],
                                  expected_item(image, (0, 0, 39, 39), (227, 227), (0, 0)))
    close(net)


def test_errors(scene):
    tmp_path, _ = scene
    with pytest.raises(ProtonetError, match="needs transform_param.crop_size.*not "
                       "window_data_param"):
        window_net(tmp_path, "", "crop_size: 227")
    with pytest.raises(ProtonetError, match="context_pad 8 leaves nothing of a 16-pixel crop"):
        window_net(tmp_path, "crop_size: 16", "context_pad: 8")
    with pytest.raises(ProtonetError, match="0 background windows \\(overlap < bg_threshold "
                       "0.1\\); every batch draws from both"):
        window_net(tmp_path, "crop_size: 16", "bg_threshold: 0.1")
    with pytest.raises(ProtonetError, match="cannot read window file .*nothing.txt"):
        window_net(tmp_path, "crop_size: 16", source="nothing.txt")
    with pytest.raises(ProtonetError, match="the mean in .* is 3x20x20; .*width >= 227"):
        from protonet.io.blobs import array_to_blob_proto
        (tmp_path / "small.binaryproto").write_bytes(array_to_blob_proto(
            np.zeros((1, 3, 20, 20), np.float32), legacy_4d=True).SerializeToString())
        window_net(tmp_path, f'crop_size: 227 mean_file: "{tmp_path / "small.binaryproto"}"')
    (tmp_path / "gone.txt").write_text("# 0 gone.png 3 80 100 2\n1 0.9 0 0 9 9\n0 0 0 0 9 9\n")
    net = window_net(tmp_path, "crop_size: 16", source="gone.txt")
    with pytest.raises(ProtonetError, match="could not load image '.*imgs/gone.png' "
                       "\\(listed in window file"):
        net.forward()
    close(net)
    with pytest.raises(ProtonetError, match="could not load image .*gone.png.* cache_images"):
        window_net(tmp_path, "crop_size: 16", "cache_images: true", source="gone.txt")
    (tmp_path / "outside.txt").write_text("# 0 a.png 3 80 100 2\n1 0.9 120 0 130 9\n"
                                          "0 0 0 0 9 9\n")
    net = window_net(tmp_path, "crop_size: 16", "fg_fraction: 1", source="outside.txt")
    with pytest.raises(ProtonetError, match="window \\(120, 0, 130, 9\\) of image .*a.png' "
                       "\\(100x80\\) does not overlap"):
        net.forward()
    close(net)


def test_summary_of_the_corpus_pascal_finetuning_net(corpus, tmp_path, monkeypatch, capsys):
    """examples/finetune_pascal_detection: CaffeNet over WindowData, once its window files,
    images and ImageNet mean exist where the net names them."""
    from protonet.cli import main
    from protonet.io.blobs import array_to_blob_proto
    monkeypatch.chdir(tmp_path)
    os.makedirs("examples/finetune_pascal_detection")
    os.makedirs("data/ilsvrc12")
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save("a.jpg")
    for split in ("trainval", "test"):
        with open(f"examples/finetune_pascal_detection/window_file_2007_{split}.txt", "w") as f:
            f.write("# 0\na.jpg\n3\n60\n80\n2\n12 0.9 1 1 40 40\n0 0.1 0 0 79 59\n")
    with open("data/ilsvrc12/imagenet_mean.binaryproto", "wb") as f:
        f.write(array_to_blob_proto(np.zeros((1, 3, 256, 256), np.float32),
                                    legacy_4d=True).SerializeToString())
    net = str(corpus / "BVLC/caffe/examples/finetune_pascal_detection/"
                       "pascal_finetune_trainval_test.prototxt")
    for phase in ("TRAIN", "TEST"):
        assert main(["summary", net, "--phase", phase, "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["notes"] == []
        rows = {r["name"]: r for r in summary["layers"]}
        assert rows["data"]["top_shapes"] == [[128, 3, 227, 227], [128]]
        assert rows["fc8_pascal"]["top_shapes"] == [[128, 21]]
