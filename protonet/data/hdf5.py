"""HDF5 files for the HDF5Data and HDF5Output layers (``src/caffe/util/hdf5.cpp``)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import ProtonetError
from ..io.hdf5 import h5py_module


def read_file_list(source: str, what: str) -> list[str]:
    """The ``.h5`` paths listed in ``source``, split at whitespace as Caffe reads them.

    Relative paths are taken from the working directory, as in Caffe; one that is
    not found there is also looked for beside the list file."""
    try:
        with open(source) as f:
            names = f.read().split()
    except OSError as e:
        raise ProtonetError(
            f"{what}: cannot read HDF5 file list '{source}' ({e.strerror}); hdf5_data_param."
            "source is a text file listing .h5 files, one per line") from None
    if not names:
        raise ProtonetError(f"{what}: '{source}' lists no HDF5 files; hdf5_data_param.source "
                            "is a text file listing .h5 files, one per line")
    base = os.path.dirname(source)
    paths = []
    for name in names:
        if not os.path.isabs(name) and not os.path.exists(name) and \
                os.path.exists(os.path.join(base, name)):
            name = os.path.join(base, name)
        paths.append(name)
    return paths


def load_datasets(path: str, names: list[str], dtype, what: str) -> list[np.ndarray]:
    """The datasets ``names`` of one file, as ``dtype`` arrays with equal first dimensions."""
    h5py = h5py_module()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ProtonetError(f"{what}: cannot open HDF5 file '{path}' ({e})") from None
    arrays = []
    with f:
        for name in names:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                have = ", ".join(k for k in f if isinstance(f[k], h5py.Dataset)) or "none"
                raise ProtonetError(f"{what}: HDF5 file '{path}' has no dataset '{name}' "
                                    f"(HDF5Data reads one dataset per top, named after the top; "
                                    f"datasets there: {have})")
            ds = f[name]
            if ds.dtype.kind not in "fiub":
                raise ProtonetError(f"{what}: dataset '{name}' in '{path}' has type {ds.dtype}; "
                                    "Caffe reads float or integer datasets")
            if ds.ndim < 1:
                raise ProtonetError(f"{what}: dataset '{name}' in '{path}' is a scalar; "
                                    "it needs at least one axis")
            arrays.append(np.asarray(ds[()], dtype=dtype))
    n = len(arrays[0])
    for name, a in zip(names, arrays):
        if len(a) != n:
            raise ProtonetError(f"{what}: in '{path}', dataset '{name}' has {len(a)} rows and "
                                f"'{names[0]}' has {n}; all must have the same first dimension")
    if n == 0:
        raise ProtonetError(f"{what}: the datasets in '{path}' have no rows")
    return arrays


def legacy_4d(shape) -> tuple[int, int, int, int]:
    """num, channels, height, width of a blob of at most 4 axes (missing ones are 1)."""
    if len(shape) > 4:
        raise ProtonetError(f"blob of shape {list(shape)}: more than 4 axes")
    return tuple(list(shape) + [1] * (4 - len(shape)))


class HDF5Writer:
    """Writes float datasets into a new (truncated) file, appending along the first axis."""

    def __init__(self, path: str, what: str):
        h5py = h5py_module()
        self.path, self.what = path, what
        try:
            self.file = h5py.File(path, "w")
        except OSError as e:
            raise ProtonetError(f"{what}: cannot create HDF5 file '{path}' ({e})") from None

    def append(self, name: str, array: np.ndarray) -> None:
        if name not in self.file:
            self.file.create_dataset(name, data=array, maxshape=(None,) + array.shape[1:],
                                     chunks=True)
        else:
            ds = self.file[name]
            if ds.shape[1:] != array.shape[1:]:
                raise ProtonetError(f"{self.what}: '{name}' changed shape from "
                                    f"{list(ds.shape[1:])} to {list(array.shape[1:])} per row")
            start = ds.shape[0]
            ds.resize(start + len(array), axis=0)
            ds[start:] = array

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            finally:
                self.file = None
