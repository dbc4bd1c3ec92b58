"""Snapshot files: weights (.caffemodel / .caffemodel.h5), solver state
(.solverstate / .solverstate.h5) and protonet's exact-resume sidecar.

Formats are Caffe's, so Caffe reads what protonet writes and vice versa:

* ``.caffemodel``: binary ``NetParameter`` as ``Net::ToProto`` writes it -- the
  net's name and every layer (auto-inserted Split layers included) with its
  ``phase`` filled in and its learnable blobs (shape + data, + diff with
  ``snapshot_diff``).
* ``.caffemodel.h5``: group ``data/<layer>/<i>`` per learnable blob (only the
  owner of a shared blob), and ``diff/<layer>/<i>`` with ``snapshot_diff``.
* ``.solverstate``: binary ``SolverState{iter, learned_net, history[], current_step}``.
* ``.solverstate.h5``: datasets ``iter``, ``learned_net``, ``current_step`` and
  group ``history/<i>``.

Every file is written atomically: into a temporary file beside it, flushed and
fsync'ed, then renamed over the final name, and the directory fsync'ed. A
crash or ``kill -9`` at any moment leaves either the previous complete file or
the new complete one (plus, at worst, a ``*.protonet-tmp-<pid>`` file, removed
by the next snapshot).

Exact resume: Caffe's solverstate does not hold the data layers' read positions
or any random generator. protonet writes them, with the smoothed-loss window,
to ``<solverstate>.protonet.json``, before renaming the solverstate into place
(so a solverstate on disk always has its sidecar). Caffe ignores the sidecar.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import ProtonetError
from ..io.blobs import blob_proto_to_array
from ..io.atomic import TMP_MARK, WRITE_DELAY_ENV, atomic_write  # noqa: F401  (re-exported)
from ..io.caffemodel import _len_field, encode_blob, write_caffemodel  # noqa: F401
from ..proto import caffe_pb2

SIDECAR_SUFFIX = ".protonet.json"
SIDECAR_FORMAT = 1


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_temps(prefix: str) -> list[str]:
    """Delete temporary snapshot files under ``prefix`` left by processes that died."""
    removed = []
    for tmp in glob.glob(glob.escape(prefix) + "_iter_*" + TMP_MARK + "*"):
        try:
            pid = int(tmp.rsplit(TMP_MARK, 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
                removed.append(tmp)
    return removed


def _h5py():
    from ..io.hdf5 import h5py_module
    return h5py_module("HDF5 snapshots", "; or use snapshot_format: BINARYPROTO")


def check_hdf5_snapshot(net) -> None:
    """Raise now if ``net`` cannot be written as HDF5 (no h5py, or a '/' in a layer name)."""
    _h5py()
    for name in net.layer_names:
        if "/" in name:
            raise ProtonetError(
                f"layer '{name}': HDF5 snapshots cannot hold a layer name with '/' (HDF5 "
                "reads it as a group separator; Caffe fails the same way); use "
                "snapshot_format: BINARYPROTO")


def write_caffemodel_h5(net, path: str, write_diff: bool = False) -> None:
    """Net::ToHDF5: ``data/<layer>/<i>`` for owned blobs, ``diff/<layer>/<i>`` for all."""
    h5py = _h5py()
    owners = {id(b) for b in net.learnable_params}
    check_hdf5_snapshot(net)

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            diff = f.create_group("diff") if write_diff else None
            for name, layer in zip(net.layer_names, net.layers):
                group = data.create_group(name)
                dgroup = diff.create_group(name) if diff is not None else None
                for j, blob in enumerate(layer.blobs):
                    if id(blob) in owners:
                        group.create_dataset(str(j), data=blob.data)
                    if dgroup is not None:
                        dgroup.create_dataset(str(j), data=blob.diff)
    atomic_write(path, write)


# -- solver state ----------------------------------------------------------------------------------
@dataclass
class SolverStateData:
    iter: int
    learned_net: str
    current_step: int
    history: list = field(default_factory=list)


def solverstate_bytes(iteration: int, learned_net: str, current_step: int, history) -> bytes:
    head = caffe_pb2.SolverState(iter=iteration, learned_net=learned_net,
                                 current_step=current_step).SerializeToString()
    return head + b"".join(_len_field(3, encode_blob(h)) for h in history)


def write_solverstate(path: str, iteration: int, learned_net: str, current_step: int,
                      history) -> None:
    atomic_write(path, solverstate_bytes(iteration, learned_net, current_step, history))


def _h5_fixed_string(group, name: str, text: str) -> None:
    """A scalar NUL-terminated fixed-length string, as H5LTmake_dataset_string writes it."""
    h5py = _h5py()
    raw = text.encode("utf-8") + b"\0"
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw))
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    dset = h5py.h5d.create(group.id, name.encode(), tid, space)
    dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw, dtype=f"S{len(raw)}"))


def write_solverstate_h5(path: str, iteration: int, learned_net: str, current_step: int,
                         history) -> None:
    h5py = _h5py()

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.create_dataset("iter", data=np.int32(iteration))
            _h5_fixed_string(f, "learned_net", learned_net)
            f.create_dataset("current_step", data=np.int32(current_step))
            group = f.create_group("history")
            for i, h in enumerate(history):
                group.create_dataset(str(i), data=h)
    atomic_write(path, write)


def read_solverstate(path: str) -> SolverStateData:
    """Read a .solverstate (binary SolverState) or .solverstate.h5 (name ends in .h5)."""
    if path.endswith(".h5"):
        return _read_solverstate_h5(path)
    from ..io.blobs import read_binary_message
    state = read_binary_message(path, caffe_pb2.SolverState())
    return SolverStateData(state.iter, state.learned_net, state.current_step,
                           [blob_proto_to_array(h) for h in state.history])


def _read_solverstate_h5(path: str) -> SolverStateData:
    from ..io.hdf5 import open_hdf5
    with open_hdf5(path, "HDF5 solver states") as f:
        try:
            iteration = int(f["iter"][()])
            current_step = int(f["current_step"][()])
            learned = f["learned_net"][()] if "learned_net" in f else b""
            group = f["history"]
            history = [np.asarray(group[str(i)]) for i in range(len(group))]
        except KeyError as e:
            raise ProtonetError(f"{path}: not a Caffe HDF5 solver state ({e})") from None
    if isinstance(learned, bytes):
        learned = learned.split(b"\0", 1)[0].decode("utf-8")
    return SolverStateData(iteration, str(learned), current_step, history)


# -- the exact-resume sidecar --------------------------------------------------------------------
def sidecar_path(state_path: str) -> str:
    return state_path + SIDECAR_SUFFIX


def _jsonable(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": bytes(value).hex()}
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a snapshot sidecar")


def _from_json(obj):
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
    if "__bytes__" in obj:
        return bytes.fromhex(obj["__bytes__"])
    return obj


def write_sidecar(path: str, content: dict) -> None:
    content = dict(content, format=SIDECAR_FORMAT)
    text = json.dumps(content, default=_jsonable, allow_nan=True, separators=(",", ":"))
    atomic_write(path, text.encode("utf-8"))


def read_sidecar(path: str) -> dict | None:
    """The sidecar's content, or None when it is absent or unreadable."""
    try:
        with open(path, "rb") as f:
            content = json.loads(f.read().decode("utf-8"), object_hook=_from_json)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("format") != SIDECAR_FORMAT:
        return None
    return content
