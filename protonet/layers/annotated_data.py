"""The SSD fork's ``AnnotatedData`` layer (weiliu89/caffe, branch ``ssd``,
``annotated_data_layer.cpp``): batches of images with their object boxes, read from an
LMDB or LevelDB database of ``AnnotatedDatum`` records (the fork's ``convert_annoset``, or
:func:`protonet.data.annotated.write_annotated_lmdb`), augmented as the fork augments them.

Tops: data ``(batch_size, C, H, W)`` and label. With annotations (a record type, or
``annotated_data_param.anno_type``: BBOX) the label is ``(1, 1, num_boxes, 8)``, one row
``[item_id, group_label, instance_id, xmin, ymin, xmax, ymax, difficult]`` per box left
after augmentation (boxes relative to the output image), items in batch order; a batch
without any box gets one row of -1s. Records without annotation type give the Datum
labels, ``(batch_size, 1, 1, 1)``.

Per image (:class:`protonet.data.annotated.AnnotatedTransformer`): ``distort_param``
(brightness, contrast, saturation, hue, channel order), ``expand_param`` (zoom out onto a
mean-coloured canvas), the ``batch_sampler`` crops (each sampler draws ``max_trials``
boxes, keeps up to ``max_sample`` that meet its ``sample_constraint``; one of all those
kept crops the image), then ``resize_param`` (one of its ``interp_mode``s at random),
``crop_size``/``crop_h``/``crop_w``, ``mirror``, ``mean_value``/``mean_file`` and
``scale``; ``emit_constraint`` drops boxes whose centre leaves a crop.

What is exact: the geometry of a given sample, expansion and crop (the fork's float
arithmetic and truncations), the box transforms, which boxes are kept, the label layout and
the all -1 row. What cannot be: the random stream. The fork draws from Boost generators
shared by the whole process; protonet draws every image's choices from its own generator,
seeded per batch from the layer's seeded generator (so a seeded run repeats, and resumes
exactly from a snapshot: the state is the generator and the key of the next record).
Pixels differ slightly: resizing and colour conversions are OpenCV's formulas (a grey level
off here and there, see :mod:`protonet.data.im_transforms`), and where the fork re-encodes
encoded images as JPEG between steps (after distortion, expansion and cropping), protonet
keeps the decoded pixels. Unlike the fork, raw (unencoded) records are distorted, expanded
with the mean colour and resized too (the fork leaves raw images undistorted, fills
expansions with byte 32 and cannot resize them). ``noise_param`` is not applied (a
warning says so); ``label_map_file`` and ``resize_param.prob`` are not read, nor are they
by the fork's layer; a ``batch_sampler`` with ``use_original_image: false`` yields no crop,
as in the fork.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from ..data import annotated as ad
from ..data.prefetch import Loader
from ..errors import ProtonetError
from .base import register
from .data import _PrefetchingLayer, data_shard


class _Slot:
    __slots__ = ("data", "label")

    def __init__(self, data, label):
        self.data, self.label = data, label


class _AnnotatedLoader(Loader):
    """Reads batch_size AnnotatedDatum records per batch and augments them."""

    def __init__(self, layer, db, augment, shape, has_anno, shard):
        self.db, self.augment, self.shape, self.has_anno = db, augment, shape, has_anno
        self.rng, self.dtype, self.batch_size = layer.rng, layer.dtype, layer.batch_size
        self.mode = layer.transformer.decode_mode
        self.anno_type = layer.anno_type
        self.what = f"layer '{layer.name}' (AnnotatedData)"
        self.rank, self.count = shard

    def new_slot(self):
        return _Slot(np.zeros((self.batch_size,) + self.shape, self.dtype),
                     np.full((1, 1, 1, 8), -1, self.dtype))

    def load(self, slot):
        n = self.batch_size
        # one seed per image of the global batch, so every rank transforms its images as
        # one unsharded layer would
        seeds = self.rng.integers(2 ** 63, size=n * self.count)[self.rank * n:(self.rank + 1) * n]
        if self.rank:
            self.db.skip(self.rank * n)
        values = self.db.read(n)
        if self.count - 1 - self.rank:
            self.db.skip((self.count - 1 - self.rank) * n)
        items, labels, data = [], [], None
        for k, (value, seed) in enumerate(zip(values, seeds)):
            what = f"{self.what}: a record in '{self.db.path}'"
            record = ad.parse_annotated_datum(value, what)
            if self.has_anno and not record.HasField("type") and self.anno_type is None:
                raise ProtonetError(f"{what} has no annotation type, the first one had; "
                                    "every record must be annotated alike")
            image = ad.datum_image(record.datum, self.mode, what)
            ann = ad.annotations_of(record)
            rng = np.random.default_rng(int(seed))
            image, ann = self.augment.prepare(image, ann, rng)
            if data is None:
                shape = (n,) + self.augment.output_shape(*image.shape)
                data = slot.data if slot.data.shape == shape else np.zeros(shape, self.dtype)
            items.append(self.augment.transform(image, ann, data[k], rng))
            labels.append(record.datum.label)
        slot.data = data
        if self.has_anno:
            slot.label = ad.label_rows(items).astype(self.dtype)[None, None]
        else:
            slot.label = np.asarray(labels, self.dtype).reshape(n, 1, 1, 1)

    def get_state(self):
        return {"rng": self.rng.bit_generator.state, "key": self.db.key.decode("latin-1")}

    def set_state(self, state):
        if "key" in state:
            self.db.seek(state["key"].encode("latin-1"))
        self.rng.bit_generator.state = state["rng"]

    def close(self):
        self.db.close()


class _Augment:
    """distort -> expand -> batch-sampler crop, then the final transform."""

    def __init__(self, transformer: ad.AnnotatedTransformer, tp):
        self.t, self.distort, self.expand = transformer, tp.HasField("distort_param"), \
            tp.HasField("expand_param")

    def prepare(self, image, ann, rng):
        if self.distort:
            image = self.t.distort(image, rng)
        if self.expand:
            image, ann = self.t.expand(image, ann, rng)
        if self.t.samplers:
            image, ann = self.t.sample_crop(image, ann, rng)
        return image, ann

    def output_shape(self, c, h, w):
        return self.t.output_shape(c, h, w)

    def transform(self, image, ann, out, rng):
        return self.t.transform(image, ann, out, rng)


@register("AnnotatedData")
class AnnotatedDataLayer(_PrefetchingLayer):
    """See the module docstring."""

    min_num_top = 1
    max_num_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.data_param
        tp = self.param.transform_param
        ap = self.param.annotated_data_param
        override = self._setup_batches(p, "data_param")
        self.anno_type = int(ap.anno_type) if ap.HasField("anno_type") else None
        if self.anno_type is not None and self.anno_type != ad.BBOX:
            raise self.error(f"annotated_data_param.anno_type {self.anno_type} is not BBOX")
        if tp.HasField("resize_param") and tp.resize_param.resize_mode == ad.FIT_SMALL_SIZE \
                and self.batch_size != 1:
            raise self.error("transform_param.resize_param.resize_mode FIT_SMALL_SIZE needs "
                             f"data_param.batch_size 1 (got {self.batch_size}): its images "
                             "differ in size")
        if tp.HasField("noise_param"):
            from ..io.prototxt import ProtonetWarning
            warnings.warn(f"layer '{self.name}': transform_param.noise_param is not applied "
                          "by protonet's AnnotatedData", ProtonetWarning, stacklevel=2)
        if tp.HasField("expand_param") and tp.HasField("mean_file"):
            raise self.error("transform_param.expand_param with mean_file is not supported "
                             "(the fork needs a mean image of each random canvas size); use "
                             "mean_value")
        mean = self.transformer.mean
        augment = ad.AnnotatedTransformer(tp, ap.batch_sampler, self.phase, mean,
                                          f"layer '{self.name}' (AnnotatedData)")
        self.has_anno = self.anno_type is not None
        if override is not None:
            self.data_shape = tuple(override)
            label_shape = (1, 1, 1, 8)
        else:
            db = self._open(p)
            try:
                if p.rand_skip:
                    db.skip(int(self.rng.integers(p.rand_skip)))
                what = f"layer '{self.name}' (AnnotatedData): record {db.key!r} of '{p.source}'"
                first = ad.parse_annotated_datum(db.peek(), what)
                image = ad.datum_image(first.datum, self.transformer.decode_mode, what)
                shape = augment.output_shape(*image.shape)
                self.has_anno = self.has_anno or first.HasField("type")
                num = ad.annotations_of(first).count
            except BaseException:
                db.close()
                raise
            self.data_shape = (self.batch_size,) + shape
            label_shape = (1, 1, max(num, 1), 8) if self.has_anno else (self.batch_size, 1, 1, 1)
            loader = _AnnotatedLoader(self, db, _Augment(augment, tp), shape, self.has_anno,
                                      data_shard(self))
            self._start(loader, p.prefetch)
        top[0].reshape(self.data_shape)
        if len(top) > 1:
            top[1].reshape(label_shape)

    def _open(self, p):
        from ..data.db import open_layer_source
        if p.source and not os.path.exists(p.source):
            raise self.error(
                f"data source '{p.source}' does not exist (looked in {os.getcwd()}); create "
                "it with the fork's convert_annoset, or from images and boxes with "
                "protonet.data.annotated.write_annotated_lmdb(path, items)")
        return open_layer_source(self, p.source, p.backend)
