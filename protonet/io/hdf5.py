"""Opening HDF5 files with errors that name the file (h5py is an optional dependency)."""
from __future__ import annotations

from ..errors import ProtonetError


def h5py_module(purpose: str = "HDF5 files", alternative: str = ""):
    """The h5py module, or a ProtonetError saying what needs it and how to install it."""
    try:
        import h5py
    except ImportError:
        raise ProtonetError(f"{purpose} need the 'h5py' package: pip install 'protonet[data]' "
                            f"(or pip install h5py){alternative}") from None
    return h5py


def open_hdf5(path: str, purpose: str = "HDF5 files"):
    """``h5py.File(path, "r")``; a missing or unreadable file is a ProtonetError naming it."""
    h5py = h5py_module(purpose)
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise ProtonetError(f"{path}: no such file") from None
    except OSError as e:
        raise ProtonetError(f"{path}: not a readable HDF5 file ({e})") from None
