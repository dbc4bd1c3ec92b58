"""Data layers: Input, DummyData, MemoryData, Data (LMDB, LevelDB), ImageData, HDF5Data,
HDF5Output (WindowData is in :mod:`protonet.layers.window_data`).

``Data`` and ``ImageData`` read and transform batches in a background thread
(``data_param.prefetch`` batches ahead, default 4; 0 reads in ``forward``), as
Caffe's ``BasePrefetchingDataLayer`` does. Their ``get_state()`` is the read
position and random generator state *as of the next batch forward delivers*,
however far the thread has read ahead, so a resumed solver sees the very same
batches. ``close()`` stops the thread; dropping the layer stops it too.

With several solvers training together (:func:`data_shard`), each TRAIN-phase
data layer walks every global batch of ``solver_count * batch_size`` items and
keeps its rank's contiguous share, drawing the random choices (shuffles,
mirrors, crops) of the whole global batch, so the ranks stay in step and
together read exactly what one layer with the global batch size reads.
"""
from __future__ import annotations

import copy
import warnings
import weakref

import numpy as np

from ..data.prefetch import Loader, Prefetcher
from ..errors import ProtonetError
from .base import TRAIN, Layer, register


def _shape(blob_shape) -> tuple[int, ...]:
    return tuple(int(d) for d in blob_shape.dim)


def data_shard(layer) -> tuple[int, int]:
    """``(rank, count)``: which share of every global batch a TRAIN-phase data layer reads
    when ``count`` solvers train together (``caffe.set_solver_count/rank``, or the ranks of
    ``protonet solve --ranks``). Rank r of N reads items ``r*B .. (r+1)*B - 1`` of each global
    batch of ``N*B``, so the N ranks together read what one net with batch ``N*B`` reads.
    TEST nets are not sharded (only rank 0 tests), as in Caffe."""
    from ..pycaffe import solver_count, solver_rank
    count, rank = solver_count(), solver_rank()
    if layer.phase != TRAIN or count <= 1:
        return 0, 1
    if not 0 <= rank < count:
        raise layer.error(f"solver rank {rank} is not below the solver count {count}")
    return rank, count


def shard_transformer(transformer, rank: int, count: int) -> None:
    """Make ``transformer`` draw the random mirrors and crops of the whole global batch
    (``count`` times its own) and keep rank ``rank``'s share, so a sharded layer transforms
    its images exactly as one unsharded layer with the global batch would. Images of
    differing sizes (only this rank knows its own) draw a fixed amount per global batch
    instead, so the ranks' generators stay in step."""
    if count == 1:
        return
    draw = transformer.draw

    def sharded(n, heights, widths):
        take = slice(rank * n, (rank + 1) * n)
        if np.ndim(heights) == 0 and np.ndim(widths) == 0:
            flips, rows, cols = draw(n * count, heights, widths)
            return (None if flips is None else flips[take],
                    rows[take] if np.ndim(rows) else rows, cols[take] if np.ndim(cols) else cols)
        rng = transformer.rng
        flips = rng.integers(2, size=n * count)[take].astype(bool) if transformer.mirror \
            else None
        heights, widths = np.asarray(heights), np.asarray(widths)
        crop = transformer.crop
        if not crop:
            zero = np.zeros(n, np.int64)
            return flips, zero, zero
        if transformer.phase == TRAIN:
            u = rng.random((2, n * count))[:, take]
            rows = np.minimum((u[0] * (heights - crop + 1)).astype(np.int64), heights - crop)
            cols = np.minimum((u[1] * (widths - crop + 1)).astype(np.int64), widths - crop)
            return flips, rows, cols
        return flips, (heights - crop) // 2, (widths - crop) // 2

    transformer.draw = sharded


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

    def close(self) -> None:
        """Release files and threads (safe to call more than once)."""


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
    """Batches from arrays given in Python (``net.set_input_arrays``, as in pycaffe).

    Tops: data (batch_size, channels, height, width) and labels. The arrays are
    served as they are -- no transformation, as in Caffe -- ``batch_size`` rows
    per forward, wrapping around. After a forward the label top is
    (batch_size, 1, 1, 1), as Caffe reshapes it. With N solvers (see
    :func:`data_shard`) every rank is given the same arrays and serves its
    ``batch_size`` rows of each global batch of ``N * batch_size``.
    """

    exact_num_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.memory_data_param
        self.shape = tuple(self.override(0) or (p.batch_size, p.channels, p.height, p.width))
        if len(self.shape) != 4 or any(d <= 0 for d in self.shape):
            raise self.error("batch_size, channels, height and width must be given and positive "
                             f"in memory_data_param (got {list(self.shape)})")
        self.data = self.labels = None
        self.pos = 0
        self.shard = data_shard(self)
        top[0].reshape(self.shape)
        top[1].reshape((self.shape[0],))

    @property
    def batch_size(self) -> int:
        return self.shape[0]

    def reshape(self, bottom, top):
        pass

    def set_input_arrays(self, data, labels) -> None:
        """Serve ``data`` (N, C, H, W) and ``labels`` (N values) from now on, from row 0."""
        data = np.asarray(data)
        labels = np.asarray(labels)
        if data.ndim != 4 or data.shape[1:] != tuple(self.shape[1:]):
            chw = ", ".join(map(str, self.shape[1:]))
            raise self.error(f"data of shape {list(data.shape)} does not match "
                             f"(N, channels, height, width) = (N, {chw})")
        if labels.size != len(data) or (labels.ndim > 1 and labels.shape[0] != len(data)):
            raise self.error(f"{len(data)} data rows but labels of shape {list(labels.shape)}; "
                             "give one label per row")
        if len(data) == 0 or len(data) % self._global_batch:
            raise self.error(f"{len(data)} rows is not a positive multiple of "
                             f"{self._batch_words()}")
        if self.param.HasField("transform_param"):
            warnings.warn(f"layer '{self.name}': MemoryData does not transform arrays given "
                          "with set_input_arrays (transform_param is ignored, as in Caffe)",
                          stacklevel=2)
        self.data = np.ascontiguousarray(data, self.dtype)
        self.labels = np.ascontiguousarray(labels, self.dtype).reshape(-1)
        self.pos = 0

    @property
    def _global_batch(self) -> int:
        return self.batch_size * self.shard[1]

    def _batch_words(self) -> str:
        count = self.shard[1]
        return (f"batch_size {self.batch_size}" if count == 1 else
                f"the global batch {self._global_batch} ({count} solvers x batch_size "
                f"{self.batch_size})")

    def set_batch_size(self, batch_size: int) -> None:
        if batch_size <= 0:
            raise self.error("batch_size must be positive")
        self.shape = (int(batch_size),) + tuple(self.shape[1:])
        self.pos = 0

    def forward(self, bottom, top):
        if self.data is None:
            raise self.error("no arrays to serve; call set_input_arrays(data, labels) first")
        n = self.batch_size
        if len(self.data) % self._global_batch:
            raise self.error(f"{len(self.data)} rows is not a multiple of {self._batch_words()}")
        top[0].reshape(self.shape)
        top[1].reshape((n, 1, 1, 1))
        first = self.pos + self.shard[0] * n
        top[0].data[...] = self.data[first:first + n]
        top[1].data[...] = self.labels[first:first + n].reshape(n, 1, 1, 1)
        self.pos = (self.pos + self._global_batch) % len(self.data)

    def get_state(self) -> dict:
        return {**super().get_state(), "pos": self.pos}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self.pos = int(state.get("pos", 0))


# -- prefetching layers ------------------------------------------------------------------------
class _Slot:
    """One preallocated batch: data (N, C, H, W) and labels (N,)."""

    __slots__ = ("data", "label")

    def __init__(self, data, label):
        self.data, self.label = data, label


def _transform_into(transformer, slot, pixels, dtype) -> None:
    """Transform pixels (an (N, C, H, W) array or a list of (C, H, W)) into ``slot.data``,
    reshaping the slot when this batch's images differ from the last one's (Caffe
    shapes each batch after its first image)."""
    first = pixels[0]
    shape = (len(pixels),) + transformer.output_shape(*first.shape)
    if slot.data.shape != shape:
        slot.data = np.empty(shape, dtype)
    if isinstance(pixels, list):
        transformer.transform_images(pixels, slot.data)
    else:
        transformer(pixels, slot.data)


def _warn_legacy_transform(layer, sub) -> None:
    """Caffe ignores scale/mean_file/crop_size/mirror inside a (V2) layer's data_param."""
    legacy = [f for f in ("scale", "mean_file", "crop_size", "mirror") if sub.HasField(f)]
    if legacy:
        from ..io.prototxt import ProtonetWarning
        warnings.warn(f"layer '{layer.name}': {', '.join(legacy)} inside "
                      f"{sub.DESCRIPTOR.name} {'is' if len(legacy) == 1 else 'are'} ignored, as "
                      "Caffe ignores them in `layer {}` nets; move them into transform_param",
                      ProtonetWarning, stacklevel=2)


class _PrefetchingLayer(_Source):
    """Shared machinery of Data and ImageData: a loader run by a Prefetcher."""

    def _setup_batches(self, p, field: str):
        """Shared setup of Data and ImageData: batch size, legacy-field warning, the
        transformer; returns the --input-shape override of the data top (or None)."""
        from ..transform import DataTransformer
        if p.batch_size <= 0:
            raise self.error(f"{field}.batch_size must be positive")
        _warn_legacy_transform(self, p)
        self.batch_size = int(p.batch_size)
        self.transformer = DataTransformer(self.param.transform_param, self.phase, self.rng,
                                           self.name)
        return self.override(0)

    _prefetcher = None
    _loader = None

    def _start(self, loader, depth: int) -> None:
        self._loader = loader
        self._prefetcher = Prefetcher(loader, depth, name=f"protonet-{self.type}-{self.name}")
        self._next_state = loader.get_state()
        # the thread never sees the layer, so dropping the layer stops the thread
        self._finalizer = weakref.finalize(self, self._prefetcher.close)

    def reshape(self, bottom, top):
        pass

    _closed = False

    def _check_open(self) -> None:
        if self._prefetcher is None:
            raise self.error("nothing to read: the shape was given with --input-shape "
                             "instead of reading the source")
        if self._closed:
            raise self.error("the layer was closed")

    def forward(self, bottom, top):
        self._check_open()
        try:
            slot, state = self._prefetcher.next()
        except BaseException:
            # a failed batch (or an interrupt): stop reading ahead and put the loader back
            # where the next batch starts
            self._prefetcher.stop()
            self._loader.set_state(self._next_state)
            raise
        try:
            if top[0].shape != slot.data.shape:
                top[0].reshape(slot.data.shape)
            top[0].data[...] = slot.data
            if len(top) > 1:
                if top[1].shape != slot.label.shape:  # AnnotatedData's varies per batch
                    top[1].reshape(slot.label.shape)
                top[1].data[...] = slot.label
        finally:
            self._prefetcher.release(slot)
        self._next_state = state

    def get_state(self) -> dict:
        if self._prefetcher is None:
            return super().get_state()
        return copy.deepcopy(self._next_state)

    def set_state(self, state: dict) -> None:
        if self._prefetcher is None:
            return super().set_state(state)
        self._check_open()
        self._prefetcher.stop()
        self._loader.set_state(state)
        self._next_state = copy.deepcopy(state)

    def close(self) -> None:
        if self._prefetcher is not None:
            self._closed = True
            self._finalizer()

    @property
    def wait_seconds(self) -> float:
        """Seconds forward has spent waiting for batches (0 when the prefetcher keeps up)."""
        return self._prefetcher.wait_seconds if self._prefetcher is not None else 0.0


class _DatumLoader(Loader):
    """Reads batch_size Datum records per batch and transforms them."""

    def __init__(self, db, transformer, batch_size, shape, dtype, what, shard=(0, 1)):
        self.db, self.transformer = db, transformer
        self.batch_size, self.shape, self.dtype, self.what = batch_size, shape, dtype, what
        self.rank, self.count = shard

    def new_slot(self):
        return _Slot(np.zeros((self.batch_size,) + self.shape, self.dtype),
                     np.zeros(self.batch_size, self.dtype))

    def load(self, slot):
        from ..data.lmdb_source import decode_batch
        before = self.rank * self.batch_size
        if before:
            self.db.skip(before)
        values = self.db.read(self.batch_size)
        after = (self.count - 1 - self.rank) * self.batch_size
        if after:
            self.db.skip(after)
        pixels, labels = decode_batch(values, self.transformer.decode_mode,
                                      f"{self.what}: a record in '{self.db.path}'")
        _transform_into(self.transformer, slot, pixels, self.dtype)
        slot.label[...] = labels

    def get_state(self):
        # latin-1 maps bytes to code points one to one: readable and lossless in JSON
        return {"rng": self.transformer.rng.bit_generator.state,
                "key": self.db.key.decode("latin-1")}

    def set_state(self, state):
        if "key" in state:  # a bare {"rng": ...} keeps the read position
            self.db.seek(state["key"].encode("latin-1"))
        self.transformer.rng.bit_generator.state = state["rng"]

    def close(self):
        self.db.close()


@register("Data")
class DataLayer(_PrefetchingLayer):
    """Batches of ``Datum`` records from an LMDB or LevelDB database, transformed.

    Tops: data (batch_size, C, H', W') and optionally label (batch_size,). The
    record shape comes from the database's first record, as in Caffe. The
    cursor wraps around at the end of the database. ``rand_skip`` skips a random
    number of records (below rand_skip) at setup.
    """

    min_num_top = 1
    max_num_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.data_param
        override = self._setup_batches(p, "data_param")
        if override is not None:
            self.data_shape = tuple(override)
        else:
            db = open_datum_db(self, p.source, p.backend)
            try:
                if p.rand_skip:
                    db.skip(int(self.rng.integers(p.rand_skip)))
                record = db.record_shape(self.transformer.decode_mode)
                tp = self.param.transform_param
                if (tp.force_color or tp.force_gray) and not db.peek_datum().encoded:
                    warnings.warn(f"layer '{self.name}': force_color/force_gray apply only to "
                                  "encoded Datums; these records are raw pixels (Caffe logs "
                                  "the same)", stacklevel=2)
                self.transformer.check_input(*record)  # fail at setup, as Caffe does
            except BaseException:
                db.close()
                raise
            shape = self.transformer.output_shape(*record)
            self.data_shape = (self.batch_size,) + shape
            shard = data_shard(self)
            shard_transformer(self.transformer, *shard)
            loader = _DatumLoader(db, self.transformer, self.batch_size, shape, self.dtype,
                                  f"layer '{self.name}' (Data)", shard)
            self._start(loader, p.prefetch)
        top[0].reshape(self.data_shape)
        if len(top) > 1:
            top[1].reshape((self.data_shape[0],))


def open_datum_db(layer, source: str, backend: int):
    """The LMDB or LevelDB reader of a Data layer's source (see protonet.data.db)."""
    from ..data.db import open_layer_source
    return open_layer_source(layer, source, backend)


class _ImageLoader(Loader):
    """Reads batch_size images from a list file per batch, reshuffling each pass."""

    def __init__(self, layer, lines, transformer, rng, dtype):
        p = layer.param.image_data_param
        self.lines, self.transformer, self.rng, self.dtype = lines, transformer, rng, dtype
        self.root, self.batch_size = p.root_folder, int(p.batch_size)
        self.new_height, self.new_width = int(p.new_height), int(p.new_width)
        self.is_color, self.shuffle = bool(p.is_color), bool(p.shuffle)
        self.what = f"layer '{layer.name}' (ImageData)"
        self.source = p.source
        self.index = 0
        self.epoch_seed = None
        self.order = np.arange(len(lines))
        self.shape = None
        self.rank, self.count = data_shard(layer)

    def reshuffle(self):
        """A new pass in a new random order (Caffe's ShuffleImages)."""
        self.epoch_seed = int(self.rng.integers(2 ** 63))
        self.order = np.random.default_rng(self.epoch_seed).permutation(len(self.lines))

    def read(self, i: int) -> np.ndarray:
        from ..data.images import read_image
        path, _ = self.lines[self.order[i]]
        try:
            return read_image(self.root + path, self.new_height, self.new_width,
                              self.is_color)
        except FileNotFoundError:
            raise ProtonetError(
                f"{self.what}: could not load '{self.root + path}' (listed in "
                f"'{self.source}'; root_folder '{self.root}')") from None

    def new_slot(self):
        return _Slot(np.zeros((self.batch_size,) + self.shape, self.dtype),
                     np.zeros(self.batch_size, self.dtype))

    def load(self, slot):
        images, labels = [], np.empty(self.batch_size, np.float32)
        first = self.rank * self.batch_size
        for k in range(self.batch_size * self.count):  # the global batch; this rank's share
            if first <= k < first + self.batch_size:
                images.append(self.read(self.index))
                labels[k - first] = self.lines[self.order[self.index]][1]
            self.index += 1
            if self.index >= len(self.lines):
                self.index = 0
                if self.shuffle:
                    self.reshuffle()
        same = all(im.shape == images[0].shape for im in images)
        _transform_into(self.transformer, slot, np.stack(images) if same else images,
                        self.dtype)
        slot.label[...] = labels

    def get_state(self):
        return {"rng": self.rng.bit_generator.state, "index": self.index,
                "epoch_seed": self.epoch_seed}

    def set_state(self, state):
        self.rng.bit_generator.state = state["rng"]
        if "index" not in state:  # a bare {"rng": ...} keeps the read position
            return
        self.index = int(state["index"])
        self.epoch_seed = state.get("epoch_seed")
        self.order = (np.arange(len(self.lines)) if self.epoch_seed is None else
                      np.random.default_rng(self.epoch_seed).permutation(len(self.lines)))


@register("ImageData")
class ImageDataLayer(_PrefetchingLayer):
    """Batches of image files named in a list file (``path label`` per line).

    Images are read as OpenCV reads them (BGR, or grey with ``is_color: false``),
    resized to new_height x new_width when both are set, then transformed.
    ``shuffle`` shuffles at setup and after every pass; ``rand_skip`` starts at
    a random line below it.
    """

    exact_num_top = 2

    def layer_setup(self, bottom, top):
        from ..data.images import read_image_list
        p = self.param.image_data_param
        what = f"layer '{self.name}' (ImageData)"
        if (p.new_height > 0) != (p.new_width > 0):
            raise self.error("set new_height and new_width together (or neither)")
        override = self._setup_batches(p, "image_data_param")
        if override is not None:
            self.data_shape = tuple(override)
        else:
            if not p.source:
                raise self.error("image_data_param.source is empty; name a list file")
            lines = [(path, label) for path, label in read_image_list(p.source, what) if path]
            if not lines:
                raise self.error(f"image list '{p.source}' is empty")
            loader = _ImageLoader(self, lines, self.transformer, self.rng, self.dtype)
            shard_transformer(self.transformer, loader.rank, loader.count)
            if p.shuffle:
                loader.reshuffle()
            if p.rand_skip:
                skip = int(self.rng.integers(p.rand_skip))
                if skip >= len(lines):
                    raise self.error(f"rand_skip {p.rand_skip} drew {skip}, but the list has "
                                     f"only {len(lines)} images")
                loader.index = skip
            image = loader.read(loader.index)
            self.transformer.check_input(*image.shape)
            shape = self.transformer.output_shape(*image.shape)
            loader.shape = shape
            self.data_shape = (self.batch_size,) + shape
            # Caffe's prefetching base reads data_param.prefetch (default 4) for every layer
            self._start(loader, self.param.data_param.prefetch)
        top[0].reshape(self.data_shape)
        top[1].reshape((self.data_shape[0],))


@register("HDF5Data")
class HDF5DataLayer(_Source):
    """Rows of HDF5 datasets, one dataset per top (named after it), batch_size per forward.

    ``source`` is a text file listing ``.h5`` files. Files are read one at a time,
    in order or (``shuffle``) in a random order with rows in a random order;
    batches run on across file ends. No transformation, as in Caffe.
    """

    min_num_top = 1

    def layer_setup(self, bottom, top):
        from ..data.hdf5 import read_file_list
        p = self.param.hdf5_data_param
        self.what = f"layer '{self.name}' (HDF5Data)"
        if self.param.HasField("transform_param"):
            raise self.error("HDF5Data does not transform data; remove transform_param "
                             "(store the data already transformed)")
        if p.batch_size <= 0:
            raise self.error("hdf5_data_param.batch_size must be positive")
        self.batch_size = int(p.batch_size)
        self.shuffle = bool(p.shuffle)
        self.shard = data_shard(self)
        self.names = list(self.param.top)
        overrides = [self.override(i) for i in range(len(top))]
        self.files = None
        if all(o is not None for o in overrides):
            self.shapes = [tuple(o) for o in overrides]
        else:
            if not p.source:
                raise self.error("hdf5_data_param.source is empty; name a text file listing "
                                 ".h5 files")
            self.files = read_file_list(p.source, self.what)
            self.file_seed = self.row_seed = None
            self.file_order = np.arange(len(self.files))
            if self.shuffle:
                self._shuffle_files()
            self.file_index = 0
            self._load_file()
            self.row = 0
            self.row_shapes = [a.shape[1:] for a in self.arrays]
            self.shapes = [o if o is not None else (self.batch_size,) + s
                           for o, s in zip(overrides, self.row_shapes)]
        for t, s in zip(top, self.shapes):
            t.reshape(s)

    def _shuffle_files(self):
        self.file_seed = int(self.rng.integers(2 ** 63))
        self.file_order = np.random.default_rng(self.file_seed).permutation(len(self.files))

    def _shuffle_rows(self):
        self.row_seed = int(self.rng.integers(2 ** 63))
        self._set_row_order()

    def _set_row_order(self):
        n = len(self.arrays[0])
        self.row_order = (np.random.default_rng(self.row_seed).permutation(n)
                          if self.row_seed is not None else np.arange(n))

    def _load_file(self, draw: bool = True):
        from ..data.hdf5 import load_datasets
        path = self.files[self.file_order[self.file_index]]
        self.arrays = load_datasets(path, self.names, self.dtype, self.what)
        if hasattr(self, "row_shapes"):
            for name, a, s in zip(self.names, self.arrays, self.row_shapes):
                if a.shape[1:] != s:
                    raise self.error(f"dataset '{name}' in '{path}' has rows of shape "
                                     f"{list(a.shape[1:])}, the first file's have {list(s)}")
        if draw and self.shuffle:
            self._shuffle_rows()
        else:
            self._set_row_order()

    def _next_file(self):
        """The end of a file: on to the next (reshuffling after the last), as Caffe's Next()."""
        if len(self.files) > 1:
            self.file_index += 1
            if self.file_index == len(self.files):
                self.file_index = 0
                if self.shuffle:
                    self._shuffle_files()
            self._load_file()
        elif self.shuffle:
            self._shuffle_rows()
        self.row = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        if self.files is None:
            raise self.error("nothing to read: the shapes were given with --input-shape")
        # walk the global batch (count x batch_size rows); copy this rank's share
        rank, count = self.shard
        lo, hi = rank * self.batch_size, (rank + 1) * self.batch_size
        pos = 0
        while pos < self.batch_size * count:
            take = min(self.batch_size * count - pos, len(self.row_order) - self.row)
            a, b = max(pos, lo), min(pos + take, hi)
            if a < b:
                rows = self.row_order[self.row + a - pos:self.row + b - pos]
                for t, arr in zip(top, self.arrays):
                    t.data[a - lo:b - lo] = arr[rows]
            pos += take
            self.row += take
            if self.row == len(self.row_order):
                self._next_file()

    def get_state(self) -> dict:
        state = super().get_state()
        if self.files is not None:
            state.update(file_seed=self.file_seed, file_index=self.file_index,
                         row_seed=self.row_seed, row=self.row)
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if self.files is None or "row" not in state:
            return
        self.file_seed, self.row_seed = state["file_seed"], state["row_seed"]
        self.file_order = (np.random.default_rng(self.file_seed).permutation(len(self.files))
                           if self.file_seed is not None else np.arange(len(self.files)))
        self.file_index = int(state["file_index"])
        self._load_file(draw=False)
        self.row = int(state["row"])


@register("HDF5Output")
class HDF5OutputLayer(Layer):
    """Writes its two bottoms to ``hdf5_output_param.file_name`` as datasets ``data`` and
    ``label`` (4-D float, as Caffe writes them). The file is created at setup.

    Caffe can write only one batch (a second forward fails on the existing
    datasets); protonet appends each forward's batch instead.
    """

    exact_num_bottom = 2
    exact_num_top = 0
    has_backward = False
    _writer = None

    def layer_setup(self, bottom, top):
        from ..data.hdf5 import HDF5Writer
        name = self.param.hdf5_output_param.file_name
        if not name:
            raise self.error("hdf5_output_param.file_name is empty")
        self._writer = HDF5Writer(name, f"layer '{self.name}' (HDF5Output)")
        self._finalizer = weakref.finalize(self, self._writer.close)

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.shape_error("data and label must have the same batch size", bottom)

    def forward(self, bottom, top):
        from ..data.hdf5 import legacy_4d
        for name, blob in (("data", bottom[0]), ("label", bottom[1])):
            self._writer.append(name, np.asarray(blob.data).reshape(legacy_4d(blob.shape)))
        self._writer.flush()

    def backward(self, top, propagate_down, bottom):
        pass

    def close(self) -> None:
        if self._writer is not None:
            self._finalizer()
