"""Prove an exported model: run it in onnxruntime and the net in protonet on one random
input, and compare every output.

An output agrees when its largest absolute difference is within ``tolerance``
(default 1e-4) of its scale, the largest ``|value|`` protonet gives for it. The
random input is standard normal, except where a layer reads integer indices
(``Embed``, ``BatchReindex``): there it holds valid indices, and where a layer
reads regions (``ROIPooling``): there it holds regions ``[batch_index, x1, y1,
x2, y2]`` on the image. A model with a dynamic batch is also run at a second
batch size.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import parallel
from ..errors import ProtonetError

DEFAULT_TOLERANCE = 1e-4
#: layers whose tops protonet cannot produce without their source (the check feeds them)
_FED = {"Input", "Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "Python"}


def ort_module():
    try:
        import onnxruntime
    except ImportError:
        raise ProtonetError("the check needs onnxruntime: pip install 'protonet[onnx-check]' "
                            "(or pip install onnxruntime), or pass --no-check") from None
    return onnxruntime


def have_runtime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _options(ort):
    options = ort.SessionOptions()
    options.intra_op_num_threads = parallel.num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def _probe(opset: int) -> bytes:
    """A small model using the ops whose versions move most, at ``opset``."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1], pads=[0, 0, 0, 0]),
        helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("AveragePool", ["m"], ["a"], kernel_shape=[2, 2],
                         count_include_pad=1),
        helper.make_node("LRN", ["a"], ["n"], size=1),
        helper.make_node("Pad", ["n", "pads"], ["p"]),
        helper.make_node("ConvTranspose", ["p", "w"], ["t"], kernel_shape=[1, 1]),
        helper.make_node("Flatten", ["t"], ["f"], axis=1),
        helper.make_node("Softmax", ["f"], ["s"], axis=1),
        helper.make_node("TopK", ["s", "k"], ["y", "i"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[const("w", np.ones((1, 1, 1, 1), np.float32)),
                     const("pads", np.zeros(8, np.int64)), const("k", np.ones(1, np.int64))])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model.SerializeToString()


@functools.lru_cache(maxsize=None)
def runtime_opset(newest: int) -> int | None:
    """The newest opset (at most ``newest``) whose models the installed onnxruntime loads
    and runs; None without onnxruntime."""
    if not have_runtime():
        return None
    ort = ort_module()
    for opset in range(newest, 12, -1):
        try:
            session = ort.InferenceSession(_probe(opset), _options(ort),
                                           providers=["CPUExecutionProvider"])
            session.run(None, {"x": np.ones((1, 1, 3, 3), np.float32)})
            return opset
        except Exception:  # noqa: BLE001 -- any refusal means: an older opset
            continue
    return None


def random_regions(rng: np.random.Generator, shape: tuple, images: int,
                   image_hw: tuple) -> np.ndarray:
    """Regions ``[batch_index, x1, y1, x2, y2]`` (``shape`` holding 5 values per row) on
    ``images`` images of ``image_hw`` pixels: corners from a little outside the image to
    a little past it, a few of them reversed, as real proposals may be."""
    rows = max(1, int(np.prod(shape)) // 5) if shape else 1
    h, w = image_hw
    out = np.empty((rows, 5), np.float32)
    out[:, 0] = rng.integers(0, max(1, images), rows)
    x = rng.uniform(-0.1, 1.1, (rows, 2)) * w
    y = rng.uniform(-0.1, 1.1, (rows, 2)) * h
    flip = rng.random(rows) < 0.9  # most regions ordered, as a detector gives them
    out[:, 1], out[:, 3] = np.where(flip, x.min(1), x[:, 0]), np.where(flip, x.max(1), x[:, 1])
    out[:, 2], out[:, 4] = np.where(flip, y.min(1), y[:, 0]), np.where(flip, y.max(1), y[:, 1])
    return out.reshape(shape)


def random_inputs(exported, rng: np.random.Generator, batch: int | None = None) -> dict:
    """A random value for every graph input (integer indices and regions where layers want
    them)."""
    feeds = {}
    regions = getattr(exported, "region_inputs", {})
    for name, shape in exported.inputs:
        if batch is not None and shape:
            shape = (batch,) + tuple(shape[1:])
        limit = exported.index_inputs.get(name)
        if name in regions:
            image_hw, count = regions[name]
            feeds[name] = random_regions(rng, shape, batch if batch is not None else count,
                                         image_hw)
        elif limit is not None:
            feeds[name] = rng.integers(0, limit, shape).astype(np.float32)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def run_protonet(net, exported, feeds: dict) -> dict[str, np.ndarray]:
    """The exported part of ``net`` on ``feeds`` (its data layers are not run; the dropped
    layers neither): ``{output: array}`` (copies)."""
    def feed(names):
        for name in names:
            if name in feeds:
                value = feeds[name]
                if net.blobs[name].shape != value.shape:
                    net.blobs[name].reshape(value.shape)
                net.blobs[name].data[...] = value

    feed(feeds)
    with parallel.blas_held():
        for i in exported.kept:
            layer, bottom, top = net.layers[i], net.bottom_vecs[i], net.top_vecs[i]
            if not bottom and layer.type in _FED:
                continue
            layer.reshape(bottom, top)
            with parallel.blas_for(layer):
                layer.forward(bottom, top)
            if not bottom:
                feed(net.layer_tops[i])
    return {name: np.array(net.blobs[name].data) for name, _ in exported.outputs}


def _reshape(net, inputs, kept, batch: int | None = None) -> None:
    """Reshape the exported layers of ``net`` for ``inputs`` at ``batch`` (None: their own
    shapes)."""
    for name, shape in inputs:
        shape = tuple(shape) if batch is None or not shape else (batch,) + tuple(shape[1:])
        if net.blobs[name].shape != shape:
            net.blobs[name].reshape(shape)
    for i in kept:
        if net.bottom_vecs[i]:
            net.layers[i].reshape(net.bottom_vecs[i], net.top_vecs[i])


def other_batch(inputs) -> int | None:
    """The second batch size a dynamic-batch model is tried at."""
    if not inputs or not inputs[0][1]:
        return None
    return 1 if inputs[0][1][0] > 1 else 2


def check_batch_free(net, inputs, kept) -> None:
    """Raise :class:`ProtonetError` when ``net`` itself cannot run at another batch size
    (weights or fixed sizes that depend on it); ``net`` keeps its shapes."""
    batch = other_batch(inputs)
    if batch is None:
        return
    try:
        _reshape(net, inputs, kept, batch)
    except ProtonetError as e:
        raise ProtonetError(f"--dynamic-batch: the net does not run at batch {batch}: "
                            f"{e}") from None
    finally:
        _reshape(net, inputs, kept)


def session(model_bytes: bytes):
    ort = ort_module()
    try:
        return ort.InferenceSession(model_bytes, _options(ort), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 -- onnxruntime raises its own types
        raise ProtonetError(f"onnxruntime cannot load the exported model: "
                            f"{str(e).strip().splitlines()[0][:300]}") from None


def compare(ours: dict, theirs: dict, tolerance: float, batch: int) -> list[dict]:
    """One row per output: shape, largest absolute difference, protonet's scale, the
    difference relative to that scale, and whether it is within ``tolerance``."""
    rows = []
    for name, a in ours.items():
        b = np.asarray(theirs[name])
        row = {"output": name, "batch": batch, "shape": list(a.shape)}
        if a.shape != b.shape:
            row.update(onnx_shape=list(b.shape), max_abs=float("inf"), scale=0.0,
                       max_rel=float("inf"), ok=False)
            rows.append(row)
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        with np.errstate(invalid="ignore"):
            diff = np.abs(a64 - b64)
        same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
        diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
        finite = np.abs(a64[np.isfinite(a64)])
        scale = float(finite.max()) if finite.size else 0.0
        max_abs = float(diff.max()) if diff.size else 0.0
        rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        row.update(max_abs=max_abs, scale=scale, max_rel=rel, ok=bool(rel <= tolerance))
        rows.append(row)
    return rows


def check(net, exported, model_bytes: bytes, seed: int = 0,
          tolerance: float = DEFAULT_TOLERANCE) -> list[dict]:
    """Run ``model_bytes`` (the serialized ``exported.model``) in onnxruntime and ``net``
    in protonet on the same random input; rows as :func:`compare`. With a dynamic batch a
    second batch size is checked too (the net is then reshaped back)."""
    sess = session(model_bytes)
    rng = np.random.default_rng(seed)
    names = [name for name, _ in exported.outputs]
    batches = [None]
    if exported.dynamic_batch and other_batch(exported.inputs):
        batches.append(other_batch(exported.inputs))
    rows = []
    try:
        for batch in batches:
            feeds = random_inputs(exported, rng, batch)
            ours = run_protonet(net, exported, feeds)
            try:
                theirs = dict(zip(names, sess.run(names, feeds)))
            except Exception as e:  # noqa: BLE001
                raise ProtonetError(f"onnxruntime failed to run the exported model: "
                                    f"{str(e).strip().splitlines()[0][:300]}") from None
            size = next(iter(feeds.values())).shape[0] if feeds else 0
            rows += compare(ours, theirs, tolerance, size)
    finally:
        if len(batches) > 1:
            _reshape(net, exported.inputs, exported.kept)
    return rows


def format_rows(rows: list[dict], tolerance: float) -> str:
    """The check as a table, then one verdict line."""
    several = len({r["batch"] for r in rows}) > 1
    width = max([len(r["output"]) for r in rows] + [6])
    head = f"{'output'.ljust(width)}  {'shape':<18} {'max abs diff':>12} {'scale':>10} " \
           f"{'max rel diff':>12}"
    lines = [head]
    for r in rows:
        shape = "x".join(map(str, r["shape"])) or "scalar"
        if "onnx_shape" in r:
            shape += f" (onnx {'x'.join(map(str, r['onnx_shape']))})"
        lines.append(f"{r['output'].ljust(width)}  {shape:<18} {r['max_abs']:12.3g} "
                     f"{r['scale']:10.3g} {r['max_rel']:12.3g}  {'ok' if r['ok'] else 'FAIL'}"
                     + (f"  (batch {r['batch']})" if several else ""))
    bad = [r for r in rows if not r["ok"]]
    if bad:
        lines.append(f"{len(bad)} of {len(rows)} compared outputs differ by more than "
                     f"{tolerance:g} of their scale (first: {bad[0]['output']})")
    else:
        lines.append(f"every output within {tolerance:g} of its scale ({len(rows)} compared)")
    return "\n".join(lines)
