"""The SSD fork's AnnotatedData layer and its kernels (protonet.data.annotated,
protonet.data.im_transforms): a tiny LMDB made here, box transforms under crop, expand,
mirror and resize checked by hand, the samplers' constraints, the label layout, exact
resume, the pixel kernels against their loops and OpenCV, and the acceptance: the
MobileNet-SSD train.prototxt trains with its loss falling."""
import copy
import warnings

import numpy as np
import pytest
from google.protobuf import text_format

from protonet import ProtonetError
from protonet.data import annotated as ad
from protonet.data import im_transforms as imt
from protonet.layers.base import TEST, TRAIN
from protonet.proto import caffe_pb2
from protonet.testing import make_layer, setup_layer

R = np.random.default_rng


def needs_databases():
    """LMDB databases of PNG-encoded images need the [data] extra (lmdb, Pillow)."""
    pytest.importorskip("lmdb")
    pytest.importorskip("PIL")


def image_with_boxes(seed, h=60, w=80, n=2):
    """A flat image with ``n`` coloured rectangles, and their pixel boxes (label k+1)."""
    rng = R(seed)
    img = np.full((3, h, w), 90, np.uint8)
    boxes = []
    for k in range(n):
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        bw, bh = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 4, h // 2))
        img[:, y0:y0 + bh, x0:x0 + bw] = np.array([40 * (k + 1), 200, 255 - 60 * k])[:, None,
                                                                                    None]
        boxes.append((k + 1, x0, y0, x0 + bw, y0 + bh))
    return img, boxes


@pytest.fixture
def db(tmp_path):
    """An LMDB of 5 images (the fourth without boxes), PNG-encoded."""
    needs_databases()
    path = str(tmp_path / "anno_lmdb")
    items = [image_with_boxes(i, n=0 if i == 3 else 2) for i in range(5)]
    assert ad.write_annotated_lmdb(path, items) == 5
    return path, items


def data_layer(source, body="", batch=2, phase=TRAIN, extra=""):
    text = (f'type: "AnnotatedData" top: "data" top: "label" data_param {{ source: "{source}" '
            f'batch_size: {batch} backend: LMDB {extra} }} {body}')
    layer = make_layer(text, phase=phase, dtype=np.float32)
    bottom, top = setup_layer(layer, [], num_top=2)
    return layer, top


def read(layer, top, n=1):
    out = []
    for _ in range(n):
        layer.forward([], top)
        out.append((top[0].data.copy(), top[1].data.copy()))
    return out


# -- the writer and the label layout --------------------------------------------------------------
def test_writer_groups_boxes_as_convert_annoset(tmp_path):
    needs_databases()
    img = np.zeros((3, 10, 20), np.uint8)
    datum = ad.make_annotated_datum(img, [(2, 2, 1, 10, 5), (1, 0, 0, 20, 10),
                                          (2, 4, 4, 6, 8, 1)])
    assert datum.type == caffe_pb2.AnnotatedDatum.BBOX and datum.datum.label == -1
    assert datum.datum.encoded and (datum.datum.height, datum.datum.width) == (10, 20)
    assert [g.group_label for g in datum.annotation_group] == [2, 1]
    g2 = datum.annotation_group[0]
    assert [a.instance_id for a in g2.annotation] == [0, 1]
    b = g2.annotation[0].bbox
    assert (b.xmin, b.ymin, b.xmax, b.ymax) == pytest.approx((0.1, 0.1, 0.5, 0.5))
    assert g2.annotation[1].bbox.difficult
    ann = ad.annotations_of(datum)
    np.testing.assert_array_equal(ann.group_label, [2, 2, 1])
    np.testing.assert_array_equal(ann.instance_id, [0, 1, 0])


def test_label_top_layout_without_augmentation(db):
    path, items = db
    layer, top = data_layer(path, batch=2, phase=TEST)
    assert top[0].shape == (2, 3, 60, 80) and top[1].shape == (1, 1, 2, 8)
    (data, label), (data2, label2) = read(layer, top, 2)
    np.testing.assert_array_equal(data[0], items[0][0])
    rows = []
    for i, (img, boxes) in enumerate(items[:2]):
        for k, (c, x0, y0, x1, y1) in enumerate(boxes):
            rows.append([i, c, 0, x0 / 80, y0 / 60, x1 / 80, y1 / 60, 0])
    np.testing.assert_allclose(label[0, 0], rows, rtol=1e-6)
    # items 2 and 3: only item 2 has boxes, so every row names item 0
    assert label2.shape == (1, 1, 2, 8) and set(label2[0, 0, :, 0]) == {0}
    layer.close()


def test_a_batch_without_boxes_gives_one_row_of_minus_ones(tmp_path):
    needs_databases()
    path = str(tmp_path / "empty")
    ad.write_annotated_lmdb(path, [image_with_boxes(i, n=0) for i in range(2)], encode=None)
    layer, top = data_layer(path)
    assert top[1].shape == (1, 1, 1, 8)                      # at least one row, as the fork
    (_, label), = read(layer, top)
    np.testing.assert_array_equal(label, -np.ones((1, 1, 1, 8)))
    layer.close()


# -- box transforms by hand ---------------------------------------------------------------------
def ann(*boxes):
    n = len(boxes)
    return ad.Annotations(np.array(boxes, np.float32).reshape(-1, 4), np.arange(1, n + 1),
                          np.zeros(n, np.int64), np.zeros(n, bool))


def emit(kind="CENTER", overlap=0.0):
    e = caffe_pb2.EmitConstraint()
    text_format.Parse(f"emit_type: {kind} emit_overlap: {overlap}", e)
    return e


def test_crop_projects_clips_and_drops_boxes():
    a = ann([0.3, 0.3, 0.5, 0.6], [0.1, 0.1, 0.3, 0.3], [0.0, 0.0, 0.2, 0.2], [0.6, 0.4, 0.9, 0.5])
    out = ad.transform_annotations(a, [0.25, 0.25, 0.75, 0.75])
    np.testing.assert_allclose(out.boxes, [[0.1, 0.1, 0.5, 0.7], [0, 0, 0.1, 0.1],
                                           [0.7, 0.3, 1.0, 0.5]], atol=1e-6)
    np.testing.assert_array_equal(out.group_label, [1, 2, 4])       # box 3 is outside
    centred = ad.transform_annotations(a, [0.25, 0.25, 0.75, 0.75], emit=emit())
    np.testing.assert_array_equal(centred.group_label, [1, 4])      # box 2's centre is out
    covered = ad.transform_annotations(a, [0.25, 0.25, 0.75, 0.75], emit=emit("MIN_OVERLAP",
                                                                               0.5))
    np.testing.assert_array_equal(covered.group_label, [1])        # box 4: 0.5 is not > 0.5


def test_mirror_swaps_and_flips_x():
    out = ad.transform_annotations(ann([0.1, 0.2, 0.4, 0.6]), [0, 0, 1, 1], mirror=True)
    np.testing.assert_allclose(out.boxes, [[0.6, 0.2, 0.9, 0.6]], atol=1e-7)


def test_expand_geometry_and_pixels():
    (ch, cw), (y, x), box = ad.expansion(10, 20, 2.5, [0.5, 0.25])
    assert (ch, cw) == (25, 50) and (y, x) == (7, 7)               # floor(15 * .5), floor(30/4)
    np.testing.assert_allclose(box, [-7 / 20, -7 / 10, 43 / 20, 18 / 10], rtol=1e-6)
    out = ad.transform_annotations(ann([0, 0, 1, 1], [0.5, 0.5, 0.75, 1.0]), box)
    np.testing.assert_allclose(out.boxes, [[7 / 50, 7 / 25, 27 / 50, 17 / 25],
                                           [17 / 50, 12 / 25, 22 / 50, 17 / 25]], atol=1e-6)
    tp = caffe_pb2.TransformationParameter()
    text_format.Parse("expand_param { prob: 1 max_expand_ratio: 3 } mean_value: 10 "
                      "mean_value: 20.5 mean_value: 300", tp)
    t = ad.AnnotatedTransformer(tp, [], TRAIN, np.array([10, 20.5, 300.0]), "test")
    img = np.full((3, 4, 6), 77, np.uint8)
    big, a2 = t.expand(img, ann([0, 0, 1, 1]), R(0))
    inside = big == 77
    assert inside.sum() == img.size and big.shape[1] >= 4 and big.shape[2] >= 6
    assert set(np.unique(big[0])) <= {10, 77} and set(np.unique(big[1])) <= {20, 77}
    assert set(np.unique(big[2])) <= {255, 77}                   # rounded, saturated
    ys, xs = np.nonzero(inside[0])
    np.testing.assert_allclose(a2.boxes[0], [xs.min() / big.shape[2], ys.min() / big.shape[1],
                                             (xs.max() + 1) / big.shape[2],
                                             (ys.max() + 1) / big.shape[1]], atol=1e-6)


def test_crop_window_truncates_as_the_fork():
    assert ad.crop_window(np.array([0.1, 0.2, 0.55, 0.9], np.float32), 10, 20) == (2, 2, 9, 7)
    assert ad.crop_window(np.array([-0.5, 0.0, 0.5, 2.0], np.float32), 10, 20) == (0, 0, 10, 10)


def resize_param(text):
    p = caffe_pb2.ResizeParameter()
    text_format.Parse(text, p)
    return p


def test_resize_policies_move_boxes():
    box = np.array([[0.0, 0.0, 1.0, 1.0], [0.25, 0.5, 0.5, 1.0]], np.float32)
    warp = resize_param("resize_mode: WARP height: 30 width: 30")
    np.testing.assert_allclose(ad.resize_boxes(box, warp, 100, 50), box, atol=1e-7)
    pad = resize_param("resize_mode: FIT_LARGE_SIZE_AND_PAD height: 60 width: 60")
    # 100 x 50 -> 60 x 30 with 15 rows of padding above and below
    np.testing.assert_allclose(ad.resize_boxes(box, pad, 100, 50),
                               [[0, 0.25, 1, 0.75], [0.25, 0.5, 0.5, 0.75]], atol=1e-6)
    img = np.full((3, 50, 100), 9, np.uint8)
    out = ad.apply_resize(img, pad, imt.LINEAR)
    assert out.shape == (3, 60, 60)
    assert np.all(out[:, :15] == 0) and np.all(out[:, 45:] == 0) and np.all(out[:, 15:45] == 9)
    small = resize_param("resize_mode: FIT_SMALL_SIZE height: 30 width: 30")
    assert ad.new_size(small, 100, 50) == (30, 60)
    assert ad.apply_resize(img, small, imt.NEAREST).shape == (3, 30, 60)
    np.testing.assert_allclose(ad.resize_boxes(box, small, 100, 50), box, atol=1e-7)


def test_transform_resizes_crops_mirrors_and_moves_boxes():
    tp = caffe_pb2.TransformationParameter()
    text_format.Parse("crop_size: 20 mirror: true mean_value: 100 scale: 0.5 resize_param { "
                      "resize_mode: WARP height: 40 width: 40 interp_mode: NEAREST }", tp)
    t = ad.AnnotatedTransformer(tp, [], TEST, np.array([100.0]), "test")
    img = np.arange(80 * 80, dtype=np.int64).reshape(1, 80, 80) % 251
    img = img.astype(np.uint8)
    out = np.zeros((1, 20, 20), np.float32)
    rng = R(1)
    mirror = bool(np.random.default_rng(1).integers(2))
    boxes = t.transform(img, ann([0.25, 0.25, 0.5, 0.5]), out, rng)
    half = img[:, ::2, ::2][:, 10:30, 10:30].astype(np.float32)  # NEAREST halves, centre crop
    want = (half - 100) * 0.5
    np.testing.assert_array_equal(out, want[..., ::-1] if mirror else want)
    expected = [0, 0, 0.5, 0.5] if not mirror else [0.5, 0, 1, 0.5]
    np.testing.assert_allclose(boxes.boxes, [expected], atol=1e-6)


@pytest.mark.parametrize("resize", [None, "resize_mode: WARP height: 30 width: 40",
                                    "resize_mode: FIT_LARGE_SIZE_AND_PAD height: 30 width: 30",
                                    "resize_mode: FIT_SMALL_SIZE height: 30 width: 30 "
                                    "height_scale: 10 width_scale: 10"])
@pytest.mark.parametrize("emit_kind", [None, "CENTER", "MIN_OVERLAP"])
def test_box_transforms_match_the_forks_steps(resize, emit_kind):
    rng = R(5)
    xy = rng.uniform(-0.2, 0.9, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.01, 0.5, (40, 2))], axis=1)
    a = ann(*boxes)
    e = emit(emit_kind, 0.3) if emit_kind else None
    for crop, mirror in [([0.25, 0.1, 0.75, 0.8], False), ([0.0, 0.0, 1.0, 1.0], True),
                         ([-0.5, -0.25, 1.5, 1.25], True)]:
        r = (resize_param(resize), 80, 50) if resize else None
        fast = ad.transform_annotations(a, np.array(crop, np.float32), mirror, e, r)
        ref = [ad.transform_box_reference(b, crop, mirror, e, r) for b in a.boxes]
        kept = [i for i, b in enumerate(ref) if b is not None]
        np.testing.assert_array_equal(fast.group_label, a.group_label[kept])
        np.testing.assert_array_equal(fast.boxes, np.array([ref[i] for i in kept],
                                                           np.float32).reshape(-1, 4))


def test_coverage_matches_reference():
    rng = R(6)
    xy = rng.uniform(0, 0.8, (20, 2))
    a = np.concatenate([xy, xy + rng.uniform(-0.05, 0.4, (20, 2))], axis=1)
    fast = ad.coverage(a, a[::-1])
    ref = [[ad.coverage_reference(x, y) for y in a[::-1]] for x in a]
    np.testing.assert_array_equal(fast, np.array(ref, np.float32))


# -- samplers -----------------------------------------------------------------------------------
def sampler(text):
    s = caffe_pb2.BatchSampler()
    text_format.Parse(text, s)
    return s


def test_samples_satisfy_their_constraints():
    objects = np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.3, 0.9, 0.9]], np.float32)
    s = sampler("sampler { min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5 "
                "max_aspect_ratio: 2 } sample_constraint { min_jaccard_overlap: 0.5 } "
                "max_trials: 500")
    samples = ad.generate_samples(objects, s, R(0))
    assert len(samples) > 5
    best = ad.jaccard(samples, objects).max(axis=1)
    assert np.all(best >= 0.5)
    w, h = samples[:, 2] - samples[:, 0], samples[:, 3] - samples[:, 1]
    scale, ratio = np.sqrt(w * h), w / h
    assert np.all((scale >= 0.3 - 1e-6) & (scale <= 1 + 1e-6))
    assert np.all((ratio >= 0.5 - 1e-5) & (ratio <= 2 + 1e-5))
    assert np.all((samples >= 0) & (samples <= 1 + 1e-6))
    s.max_sample = 3
    assert len(ad.generate_samples(objects, s, R(0))) == 3
    whole = sampler("max_sample: 1 max_trials: 1")                 # the default sampler
    np.testing.assert_allclose(ad.generate_samples(objects, whole, R(0)), [[0, 0, 1, 1]])
    none = sampler("sample_constraint { max_jaccard_overlap: 1 } max_trials: 5")
    assert len(ad.generate_samples(np.zeros((0, 4)), none, R(0))) == 0   # no objects
    assert len(ad.generate_batch_samples(objects, [whole, s], R(0))) == 4


@pytest.mark.parametrize("constraint", [
    "min_jaccard_overlap: 0.3",
    "min_jaccard_overlap: 0.1 max_jaccard_overlap: 0.3",
    "min_sample_coverage: 0.5 max_sample_coverage: 0.9",
    "min_object_coverage: 0.8",
    "min_jaccard_overlap: 0.5 min_object_coverage: 0.99",       # jaccard decides, as the fork
    "min_sample_coverage: 0.3 min_object_coverage: 0.9",
])
def test_constraint_matches_the_forks_loop(constraint):
    rng = R(4)
    objects = np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.3, 0.9, 0.9], [0.2, 0.6, 0.3, 0.7]])
    c = caffe_pb2.SampleConstraint()
    text_format.Parse(constraint, c)
    s = caffe_pb2.Sampler(min_scale=0.2, max_scale=1, min_aspect_ratio=0.5,
                          max_aspect_ratio=2)
    samples = ad.sample_boxes(s, rng.random((200, 4)))
    fast = ad.satisfy_constraint(samples, objects, c)
    ref = [ad.satisfy_constraint_reference(x, objects, c) for x in samples]
    np.testing.assert_array_equal(fast, ref)
    assert 0 < fast.sum() < len(fast)


# -- pixel kernels ------------------------------------------------------------------------------
IMAGES = [R(0).integers(0, 256, (3, 9, 11), dtype=np.uint8),
          (np.add.outer(np.arange(9) * 13, np.arange(11) * 7) % 256).astype(np.uint8)[None]]


@pytest.mark.parametrize("interp", [imt.AREA, imt.NEAREST, imt.CUBIC, imt.LANCZOS4])
@pytest.mark.parametrize("size", [(5, 4), (17, 23), (9, 20), (4, 11)])
def test_resize_matches_its_loop(interp, size):
    for img in IMAGES:
        np.testing.assert_array_equal(imt.resize(img, *size, interp),
                                      imt.resize_reference(img, *size, interp))


@pytest.mark.parametrize("interp", [imt.LINEAR, imt.AREA, imt.NEAREST, imt.CUBIC,
                                    imt.LANCZOS4])
def test_resize_agrees_with_opencv(interp):
    cv2 = pytest.importorskip("cv2")
    codes = {imt.LINEAR: cv2.INTER_LINEAR, imt.AREA: cv2.INTER_AREA,
             imt.NEAREST: cv2.INTER_NEAREST, imt.CUBIC: cv2.INTER_CUBIC,
             imt.LANCZOS4: cv2.INTER_LANCZOS4}
    img = R(1).integers(0, 256, (3, 23, 31), dtype=np.uint8)
    for h, w in [(11, 15), (40, 57), (23, 62), (7, 31), (30, 20)]:
        ours = imt.resize(img, h, w, interp).astype(int)
        theirs = cv2.resize(np.ascontiguousarray(img.transpose(1, 2, 0)), (w, h),
                            interpolation=codes[interp]).transpose(2, 0, 1)
        assert np.abs(ours - theirs).max() <= 1
        assert np.mean(ours != theirs) < 0.2


def test_colour_conversions_match_their_loops_and_opencv():
    img = R(2).integers(0, 256, (3, 16, 16), dtype=np.uint8)
    hsv = imt.bgr_to_hsv(img)
    np.testing.assert_array_equal(hsv, imt.bgr_to_hsv_reference(img))
    wrapped = hsv.copy()
    wrapped[0] = np.minimum(wrapped[0].astype(int) * 2, 255)     # hues past 180 wrap round
    np.testing.assert_array_equal(imt.hsv_to_bgr(wrapped), imt.hsv_to_bgr_reference(wrapped))
    assert np.abs(imt.hsv_to_bgr(hsv).astype(int) - img).mean() < 1     # a round trip
    cv2 = pytest.importorskip("cv2")
    hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
    np.testing.assert_array_equal(hsv, cv2.cvtColor(hwc, cv2.COLOR_BGR2HSV).transpose(2, 0, 1))
    back = cv2.cvtColor(np.ascontiguousarray(hsv.transpose(1, 2, 0)), cv2.COLOR_HSV2BGR)
    # OpenCV 4 truncates where OpenCV 3 (the fork's) rounded: at most one level apart
    assert np.abs(imt.hsv_to_bgr(hsv).astype(int) - back.transpose(2, 0, 1)).max() <= 1
    for alpha, beta in [(1, 17.3), (1, -20.5), (0.7, 0), (1.4, 0)]:
        np.testing.assert_array_equal(
            imt.convert_scale(img, alpha, beta),
            cv2.addWeighted(hwc, alpha, hwc, 0, beta).transpose(2, 0, 1))


def test_distortion_keeps_shape_and_changes_pixels():
    tp = caffe_pb2.TransformationParameter()
    text_format.Parse("distort_param { brightness_prob: 1 brightness_delta: 32 "
                      "contrast_prob: 1 contrast_lower: 0.5 contrast_upper: 1.5 hue_prob: 1 "
                      "hue_delta: 18 saturation_prob: 1 saturation_lower: 0.5 "
                      "saturation_upper: 1.5 random_order_prob: 1 }", tp)
    t = ad.AnnotatedTransformer(tp, [], TRAIN, None, "test")
    img = R(3).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    out = t.distort(img, R(0))
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    np.testing.assert_array_equal(out, t.distort(img, R(0)))        # seeded: repeatable
    with pytest.raises(ProtonetError, match="3-channel"):
        t.distort(img[:1], R(0))


# -- the layer ------------------------------------------------------------------------------------
SSD_TRANSFORM = """transform_param { mirror: true mean_value: 127.5 mean_value: 127.5
  mean_value: 127.5 scale: 0.007843 resize_param { prob: 1 resize_mode: WARP height: 48
  width: 48 interp_mode: LINEAR interp_mode: AREA interp_mode: NEAREST interp_mode: CUBIC
  interp_mode: LANCZOS4 } emit_constraint { emit_type: CENTER }
  distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5
  contrast_lower: 0.5 contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18 saturation_prob: 0.5
  saturation_lower: 0.5 saturation_upper: 1.5 }
  expand_param { prob: 0.5 max_expand_ratio: 4 } }
annotated_data_param {
  batch_sampler { max_sample: 1 max_trials: 1 }
  batch_sampler { sampler { min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5
    max_aspect_ratio: 2 } sample_constraint { min_jaccard_overlap: 0.3 } max_sample: 1
    max_trials: 50 }
  batch_sampler { sampler { min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5
    max_aspect_ratio: 2 } sample_constraint { max_jaccard_overlap: 1 } max_sample: 1
    max_trials: 50 } }"""


def test_full_augmentation_gives_valid_batches(db):
    path, _ = db
    layer, top = data_layer(path, SSD_TRANSFORM, batch=3)
    for data, label in read(layer, top, 4):
        assert data.shape == (3, 3, 48, 48) and np.abs(data).max() <= 1.0001
        rows = label[0, 0]
        assert rows.shape[1] == 8
        if rows[0, 0] == -1:
            np.testing.assert_array_equal(rows, -1)
            continue
        assert set(rows[:, 0]) <= {0, 1, 2} and set(rows[:, 1]) <= {1, 2}
        assert np.all((rows[:, 3:7] >= 0) & (rows[:, 3:7] <= 1))
        assert np.all(rows[:, 5] > rows[:, 3]) and np.all(rows[:, 6] > rows[:, 4])
    layer.close()


@pytest.mark.parametrize("prefetch", [0, 3])
def test_exact_resume(db, prefetch):
    path, _ = db
    layer, top = data_layer(path, SSD_TRANSFORM, batch=2, extra=f"prefetch: {prefetch}")
    read(layer, top)
    state = copy.deepcopy(layer.get_state())
    first = read(layer, top, 3)
    layer.set_state(state)
    again = read(layer, top, 3)
    for (d1, l1), (d2, l2) in zip(first, again):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(l1, l2)
    other, top2 = data_layer(path, SSD_TRANSFORM, batch=2)
    other.set_state(state)                                       # another layer, same state
    for (d1, l1), (d2, l2) in zip(first, read(other, top2, 3)):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(l1, l2)
    layer.close()
    other.close()


def test_ranks_read_their_share_of_the_global_batch(db):
    from protonet import pycaffe
    path, _ = db
    whole, top = data_layer(path, SSD_TRANSFORM, batch=2)
    want = read(whole, top, 2)
    whole.close()
    before = pycaffe.solver_count(), pycaffe.solver_rank()
    try:
        pycaffe.set_solver_count(2)
        for rank in (0, 1):
            pycaffe.set_solver_rank(rank)
            layer, top = data_layer(path, SSD_TRANSFORM, batch=1)
            for (data, label), (d, lab) in zip(want, read(layer, top, 2)):
                np.testing.assert_array_equal(d[0], data[rank])
                rows = label[0, 0][label[0, 0, :, 0] == rank]
                rows[:, 0] = 0
                np.testing.assert_array_equal(lab[0, 0], rows if len(rows) else -np.ones((1, 8)))
            layer.close()
    finally:
        pycaffe.set_solver_count(before[0])
        pycaffe.set_solver_rank(before[1])


def test_layer_errors_name_the_field(tmp_path, db):
    path, _ = db
    with pytest.raises(ProtonetError, match="write_annotated_lmdb"):
        data_layer(str(tmp_path / "missing"))
    with pytest.raises(ProtonetError, match="FIT_SMALL_SIZE"):
        data_layer(path, "transform_param { resize_param { resize_mode: FIT_SMALL_SIZE "
                         "height: 30 width: 30 } }")
    with pytest.raises(ProtonetError, match="resize_param"):
        data_layer(path, "transform_param { resize_param { height: 0 width: 30 } }")
    with pytest.raises(ProtonetError, match="max_expand_ratio"):
        data_layer(path, "transform_param { expand_param { max_expand_ratio: 1 } }")
    with pytest.raises(ProtonetError, match=r"batch_sampler\[0\].*min_scale"):
        data_layer(path, "annotated_data_param { batch_sampler { sampler { min_scale: 0 } } }")
    sizes = str(tmp_path / "sizes")
    ad.write_annotated_lmdb(sizes, [image_with_boxes(0, 60, 80), image_with_boxes(1, 50, 80)])
    layer, top = data_layer(sizes)
    with pytest.raises(ProtonetError, match="resize_param"):
        read(layer, top)
    layer.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer, _ = data_layer(path, "transform_param { noise_param { prob: 1 } }")
    layer.close()
    assert any("noise_param" in str(w.message) for w in caught)


@pytest.mark.slow
def test_mobilenet_ssd_train_prototxt_trains(corpus, tmp_path):
    """The acceptance: MobileNet-SSD's train.prototxt (AnnotatedData with the fork's
    augmentation, MultiBoxLoss) on a tiny LMDB, batch 2: 10 SGD steps lower the loss of the
    first batch (read again from the same data state)."""
    from protonet.io.prototxt import read_net
    from protonet.solvers import get_solver
    needs_databases()
    path = str(tmp_path / "voc_lmdb")
    ad.write_annotated_lmdb(path, [image_with_boxes(i, 90, 120) for i in range(4)])
    net = read_net(str(corpus / "chuanqi305/MobileNet-SSD/train.prototxt"))
    data = net.layer[0]
    assert data.type == "AnnotatedData" and net.layer[-1].type == "MultiBoxLoss"
    data.data_param.source, data.data_param.batch_size = path, 2
    data.transform_param.resize_param.height = data.transform_param.resize_param.width = 128
    sp = caffe_pb2.SolverParameter(base_lr=0.001, lr_policy="fixed", momentum=0.9, type="SGD",
                                   random_seed=1, display=0, max_iter=100,
                                   snapshot_after_train=False)
    sp.train_net_param.CopyFrom(net)
    solver = get_solver(sp)
    layer = solver.net.layers[0]
    state = copy.deepcopy(layer.get_state())
    first = float(solver.net.forward()["mbox_loss"])
    layer.set_state(state)
    solver.step(10)
    layer.set_state(state)
    after = float(solver.net.forward()["mbox_loss"])
    print(f"loss of the first batch: {first:.4f} before, {after:.4f} after 10 steps")
    assert np.isfinite(first) and after < 0.95 * first
