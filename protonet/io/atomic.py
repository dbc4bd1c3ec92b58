"""Atomic file writing: a crash or kill at any moment leaves the old file or the new one.

The content goes to a temporary file beside the target (named with
:data:`TMP_MARK` and the writer's pid), is flushed and fsync'ed, renamed over
the target, and the directory is fsync'ed so the rename itself is durable.
"""
from __future__ import annotations

import contextlib
import os
import time

from ..errors import ProtonetError

TMP_MARK = ".protonet-tmp-"
#: seconds to pause half-way through every write (for crash tests only)
WRITE_DELAY_ENV = "PROTONET_SNAPSHOT_WRITE_DELAY"


def _write_delay() -> float:
    try:
        return float(os.environ.get(WRITE_DELAY_ENV, "0") or 0)
    except ValueError:
        return 0.0


def _fsync_dir(directory: str) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, content) -> None:
    """Write ``content`` (bytes, or a function that writes a given path) to ``path`` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    delay = _write_delay()
    try:
        if callable(content):
            content(tmp)
            if delay:
                time.sleep(delay)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            data = memoryview(content)
            with open(tmp, "wb") as f:
                if delay:
                    half = len(data) // 2
                    f.write(data[:half])
                    f.flush()
                    time.sleep(delay)
                    f.write(data[half:])
                else:
                    f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise ProtonetError(f"{path}: cannot write ({e.strerror or e})") from None
        raise
    _fsync_dir(directory)
