"""Progress bars for the data tools: tqdm on a terminal, silence elsewhere."""
from __future__ import annotations

import os
import sys


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total: int | None, desc: str, unit: str = "rec", stream=None):
    """A bar with ``update(n)``/``close()``: tqdm when installed and ``stream`` (stderr) is a
    terminal, otherwise a silent stand-in (the tools print one summary line instead)."""
    stream = stream if stream is not None else sys.stderr
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if not interactive:
        return _Silent()
    try:
        from tqdm import tqdm
    except ImportError:
        return _Silent()
    try:
        width = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        width = 0
    # a terminal that reports no width (some ptys) would get an empty bar
    size = {"dynamic_ncols": True} if width else {"ncols": 80}
    return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False, unit_scale=True,
                **size)
