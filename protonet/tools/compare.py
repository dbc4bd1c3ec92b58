"""``protonet compare``: run a net and check every blob against reference values.

The reference is what a few lines of pycaffe write on a Caffe machine::

    np.savez("ref.npz", **{k: v.data for k, v in net.blobs.items()})

(or an HDF5 file with one dataset per blob name). The net's inputs are taken
from the reference (or ``--input NAME=file.npy``); every other blob the
reference holds is compared after one forward pass. ``--backend opencv``
computes the reference with OpenCV's independent Caffe importer instead.
"""
from __future__ import annotations

import numpy as np

from ..errors import ProtonetError


def load_reference(path: str) -> dict[str, np.ndarray]:
    """Blob name -> array from ``.npz`` (no pickles) or ``.h5``/``.hdf5``."""
    if path.endswith((".h5", ".hdf5")):
        from ..io.hdf5 import h5py_module, open_hdf5
        h5py = h5py_module("HDF5 references")
        out = {}
        with open_hdf5(path, "HDF5 references") as f:
            f.visititems(lambda name, obj: out.__setitem__(name, np.asarray(obj))
                         if isinstance(obj, h5py.Dataset) else None)
        return out
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ProtonetError(f"{path}: no such file") from None
    except (ValueError, OSError) as e:
        raise ProtonetError(f"{path}: not a readable .npz reference ({e})") from None


def opencv_reference(prototxt: str, weights: str, net, inputs: dict) -> dict[str, np.ndarray]:
    """Every blob of ``net`` that OpenCV's Caffe importer can produce, on ``inputs``.

    OpenCV names outputs by layer; a blob's value is the output of the last layer
    that writes it (in-place layers included)."""
    try:
        import cv2
    except ImportError:
        raise ProtonetError("--backend opencv needs OpenCV: pip install "
                            "'opencv-python-headless<5' (OpenCV 5 has no Caffe importer)") from None
    try:
        cvnet = cv2.dnn.readNetFromCaffe(prototxt, weights)
    except cv2.error as e:
        raise ProtonetError(f"OpenCV could not load {prototxt}: {str(e).strip()[:200]}") from None
    known = set(cvnet.getLayerNames())
    producer = {}
    for name, layer, tops in zip(net.layer_names, net.layers, net.layer_tops):
        if layer.type == "Split":
            continue
        for top in tops:
            producer[top] = name
    for name, value in inputs.items():
        cvnet.setInput(np.ascontiguousarray(value, np.float32), name)
    wanted = [(blob, layer) for blob, layer in producer.items() if layer in known]
    outs = cvnet.forward([layer for _, layer in wanted])
    ref = {blob: np.asarray(out) for (blob, _), out in zip(wanted, outs)}
    ref.update(inputs)
    return ref


def compare(net, reference: dict, inputs: dict, atol: float, rtol: float) -> list[dict]:
    """Forward ``net`` on ``inputs``; one row per reference blob the net has, in net order."""
    for name, value in inputs.items():
        if name not in net.blobs:
            raise ProtonetError(f"input '{name}' is not a blob of the net")
        value = np.asarray(value)
        if value.shape != net.blobs[name].shape:
            net.blobs[name].reshape(value.shape)
        net.blobs[name].data[...] = value
    net.forward_from_to(_first_non_input(net, inputs))
    rows = []
    for name, blob in net.blobs.items():
        if name not in reference or name in inputs:
            continue
        ref = np.asarray(reference[name], np.float64)
        ours = blob.data.astype(np.float64)
        row = {"blob": name, "shape": list(ours.shape), "ref_shape": list(ref.shape)}
        if ref.size != ours.size:
            row.update(max_abs=float("inf"), max_rel=float("inf"), ok=False)
        else:
            ref = ref.reshape(ours.shape)
            err = np.abs(ours - ref)
            row["max_abs"] = float(err.max()) if err.size else 0.0
            row["max_rel"] = float((err / np.maximum(np.abs(ref), 1e-12)).max()) if err.size else 0.0
            row["ok"] = bool(np.all(err <= atol + rtol * np.abs(ref)))
        rows.append(row)
    return rows


def _first_non_input(net, inputs) -> int:
    """Skip leading layers whose tops are all given as inputs (Input/data layers)."""
    for i, tops in enumerate(net.layer_tops):
        if not all(t in inputs for t in tops):
            return i
    return len(net.layers)


def format_rows(rows: list[dict], atol: float, rtol: float) -> str:
    width = max([len(r["blob"]) for r in rows] + [4])
    lines = [f"{'blob'.ljust(width)}  {'shape':<18} {'max abs err':>12} {'max rel err':>12}  "]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        if r["shape"] != r["ref_shape"] and r["max_abs"] == float("inf"):
            shape += f" (ref {'x'.join(map(str, r['ref_shape']))})"
        lines.append(f"{r['blob'].ljust(width)}  {shape:<18} {r['max_abs']:12.3g} "
                     f"{r['max_rel']:12.3g}  {'ok' if r['ok'] else 'FAIL'}")
    bad = [r for r in rows if not r["ok"]]
    if bad:
        lines.append(f"first blob over tolerance (atol {atol:g}, rtol {rtol:g}): {bad[0]['blob']}"
                     f" ({len(bad)} of {len(rows)} blobs differ)")
    else:
        lines.append(f"all {len(rows)} blobs within tolerance (atol {atol:g}, rtol {rtol:g})")
    return "\n".join(lines)
