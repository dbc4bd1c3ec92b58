"""Data layers: Input, DummyData, MemoryData and Data (LMDB ``Datum`` records)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import ProtonetError
from .base import Layer, register


def _shape(blob_shape) -> tuple[int, ...]:
    return tuple(int(d) for d in blob_shape.dim)


class _Source(Layer):
    """A layer without bottoms. ``shape_overrides`` (top name -> shape) is set by
    the net from ``--input-shape`` and replaces what the layer would read."""

    exact_num_bottom = 0
    has_backward = False
    shape_overrides: dict = {}

    def override(self, top_index: int):
        name = self.param.top[top_index] if top_index < len(self.param.top) else None
        return self.shape_overrides.get(name)

    def backward(self, top, propagate_down, bottom):
        pass


@register("Input")
class InputLayer(_Source):
    """Declares net inputs: one ``input_param.shape`` for every top, or one per top."""

    min_num_top = 1

    def layer_setup(self, bottom, top):
        shapes = [_shape(s) for s in self.param.input_param.shape]
        if len(shapes) not in (0, 1, len(top)):
            raise self.error(f"input_param gives {len(shapes)} shapes for {len(top)} tops; "
                             "give one shape, or one per top")
        for i, t in enumerate(top):
            shape = self.override(i) or (shapes[0] if len(shapes) == 1 else
                                         shapes[i] if shapes else None)
            if shape is None:
                raise self.error(f"no shape for top '{self.param.top[i]}'")
            t.reshape(shape)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass


@register("DummyData")
class DummyDataLayer(_Source):
    """Tops filled by ``data_filler`` (0 fillers: zeros; 1: shared; else one per top).

    Constant fillers are applied once; others are redrawn every forward pass.
    """

    min_num_top = 1

    def layer_setup(self, bottom, top):
        from ..proto import caffe_pb2
        p = self.param.dummy_data_param
        n = len(top)
        legacy = len(p.num) or len(p.channels) or len(p.height) or len(p.width)
        if legacy and len(p.shape):
            raise self.error("give shape or num/channels/height/width, not both")
        if legacy:
            dims = [p.num, p.channels, p.height, p.width]
            if any(len(d) not in (1, n) for d in dims):
                raise self.error("num, channels, height and width must each be given once "
                                 f"or once per top ({n})")
            shapes = [tuple(int(d[i if len(d) > 1 else 0]) for d in dims) for i in range(n)]
        else:
            if len(p.shape) not in (1, n):
                raise self.error(f"give one shape or one per top ({n}), got {len(p.shape)}")
            shapes = [_shape(p.shape[i if len(p.shape) > 1 else 0]) for i in range(n)]
        if len(p.data_filler) not in (0, 1, n):
            raise self.error(f"give 0, 1 or {n} data_filler(s), got {len(p.data_filler)}")
        fillers = list(p.data_filler) or [caffe_pb2.FillerParameter(type="constant", value=0)]
        self.fillers = [fillers[i if len(fillers) > 1 else 0] for i in range(n)]
        self.refill = [f.type != "constant" for f in self.fillers]
        self.shapes = [self.override(i) or s for i, s in enumerate(shapes)]
        for t, s in zip(top, self.shapes):
            t.reshape(s)
        self._filled_once = False

    def reshape(self, bottom, top):
        for t, s in zip(top, self.shapes):
            t.reshape(s)

    def forward(self, bottom, top):
        from ..fillers import fill
        for t, filler, refill in zip(top, self.fillers, self.refill):
            if refill or not self._filled_once:
                fill(t.data, filler, self.rng)
        self._filled_once = True


@register("MemoryData")
class MemoryDataLayer(_Source):
    """Batches from arrays set in Python (``set_input_arrays``); tops (N,C,H,W) and (N,)."""

    exact_num_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.memory_data_param
        self.shape = self.override(0) or (p.batch_size, p.channels, p.height, p.width)
        if self.shape[0] <= 0:
            raise self.error("memory_data_param.batch_size must be positive")
        self.data = self.labels = None
        self.pos = 0

    def reshape(self, bottom, top):
        top[0].reshape(self.shape)
        top[1].reshape((self.shape[0],))

    def set_input_arrays(self, data, labels) -> None:
        data = np.asarray(data, self.dtype)
        labels = np.asarray(labels, self.dtype).reshape(-1)
        if data.shape[1:] != tuple(self.shape[1:]):
            raise self.error(f"data of shape {list(data.shape)} does not match "
                             f"channels/height/width {list(self.shape[1:])}")
        if len(data) != len(labels) or len(data) % self.shape[0]:
            raise self.error(f"{len(data)} samples and {len(labels)} labels: both must be "
                             f"equal and a multiple of batch_size {self.shape[0]}")
        self.data, self.labels, self.pos = data, labels, 0

    def forward(self, bottom, top):
        if self.data is None:
            raise self.error("no arrays set; call set_input_arrays(data, labels) first")
        n = self.shape[0]
        top[0].data[...] = self.data[self.pos:self.pos + n]
        top[1].data[...] = self.labels[self.pos:self.pos + n]
        self.pos = (self.pos + n) % len(self.data)


@register("Data")
class DataLayer(_Source):
    """Batches of ``Datum`` records from an LMDB database, transformed.

    Tops: data (batch_size, C, H', W') and optional label (batch_size,). The
    record shape comes from the database's first record, as in Caffe. The
    cursor wraps around at the end of the database.
    """

    min_num_top = 1
    max_num_top = 2

    def layer_setup(self, bottom, top):
        from ..transform import DataTransformer
        p = self.param.data_param
        if p.batch_size <= 0:
            raise self.error("data_param.batch_size must be positive")
        self.batch_size = int(p.batch_size)
        self.transformer = DataTransformer(self.param.transform_param, self.phase, self.rng,
                                           self.name)
        override = self.override(0)
        self.db = None
        if override is not None:
            self.data_shape = tuple(override)
        else:
            self.db = open_datum_db(self, p.source, p.backend)
            c, h, w = self.db.record_shape()
            self.data_shape = (self.batch_size,) + self.transformer.output_shape(c, h, w)
            if p.rand_skip:
                self.db.skip(int(self.rng.integers(p.rand_skip)))
        self.reshape(bottom, top)

    def reshape(self, bottom, top):
        top[0].reshape(self.data_shape)
        if len(top) > 1:
            top[1].reshape((self.data_shape[0],))

    def forward(self, bottom, top):
        if self.db is None:
            raise self.error(f"no database to read (shape given with --input-shape); "
                             f"source '{self.param.data_param.source}'")
        batch, labels = self.db.next_batch(self.batch_size)
        self.transformer(batch, top[0].data)
        if len(top) > 1:
            top[1].data[...] = labels


def open_datum_db(layer, source: str, backend: int):
    from ..proto import caffe_pb2
    if backend == caffe_pb2.DataParameter.LEVELDB:
        raise layer.error(
            "backend LEVELDB (Caffe's default) is not supported; set `backend: LMDB` in "
            "data_param and convert the database with `protonet convert-imageset` or "
            "`protonet data`")
    if not source:
        raise layer.error("data_param.source is empty")
    if not os.path.exists(source):
        raise layer.error(
            f"data source '{source}' does not exist; create it (e.g. `protonet data mnist` "
            "for the LeNet example, or `protonet convert-imageset`), or give the shape with "
            "--input-shape TOP=N,C,H,W")
    from ..data.lmdb_source import DatumDB
    return DatumDB(source, layer.name)
