"""What training shows: Caffe-format log lines, or a live progress bar.

The solver logs every line Caffe logs, word for word, to the ``protonet``
logger. :func:`reporting` routes them:

* ``mode="log"`` (the default when stderr is not a terminal): every line to
  stderr with glog's prefix (``I0912 10:32:01.123456 4242 solver.py:251] ...``),
  so ``tools/extra/parse_log.py`` and other Caffe log parsers read it.
* ``mode="bar"`` (the default on a terminal): one progress bar (iteration,
  smoothed loss, learning rate, iter/s, ETA -- tqdm's when installed, else a
  plain carriage-return line) plus the lines worth reading (test outputs,
  snapshots, warnings) printed above it.
* ``log_file``: every line, glog-prefixed, to a file as well (any mode).
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import time

LOGGER = "protonet"
#: ``extra=BRIEF`` marks a line that bar mode prints too
BRIEF = {"brief": True}


class GlogFormatter(logging.Formatter):
    """``Lmmdd hh:mm:ss.uuuuuu pid file:line] message``, glog's line prefix."""

    LETTERS = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W",
               logging.ERROR: "E", logging.CRITICAL: "F"}

    def format(self, record):
        stamp = datetime.datetime.fromtimestamp(record.created)
        prefix = (f"{self.LETTERS.get(record.levelno, 'I')}{stamp:%m%d %H:%M:%S.%f} "
                  f"{record.process} {record.filename}:{record.lineno}] ")
        return prefix + record.getMessage()


class _Bar:
    """The progress bar interface: update(iteration, loss, lr), write(text), close()."""

    label = "Iteration"

    def __init__(self, total: int, initial: int, stream, label: str = "Iteration"):
        self.total, self.stream, self.label = total, stream, label
        self.start_time, self.start_iter = time.monotonic(), initial

    def update(self, iteration: int, loss: float, lr: float) -> None: ...

    def write(self, text: str) -> None: ...

    def close(self) -> None: ...


class TqdmBar(_Bar):
    def __init__(self, total, initial, stream, label="Iteration"):
        super().__init__(total, initial, stream, label)
        from tqdm import tqdm
        self.tqdm = tqdm
        self.bar = tqdm(total=total, initial=initial, file=stream, unit="it",
                        desc=label, dynamic_ncols=True, mininterval=0.2, leave=True)

    def update(self, iteration, loss, lr):
        self.bar.set_postfix_str(_postfix(loss, lr, "=", ", "), refresh=False)
        self.bar.update(iteration - self.bar.n)

    def write(self, text):
        self.tqdm.write(text, file=self.stream)

    def close(self):
        self.bar.close()


def _postfix(loss, lr, eq: str, sep: str) -> str:
    parts = []
    if loss is not None:
        parts.append(f"loss{eq}{loss:.4g}")
    if lr is not None:
        parts.append(f"lr{eq}{lr:.3g}")
    return sep.join(parts)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class LineBar(_Bar):
    """A one-line bar redrawn with a carriage return (no tqdm needed)."""

    def __init__(self, total, initial, stream, label="Iteration", min_interval: float = 0.2):
        super().__init__(total, initial, stream, label)
        self.min_interval = min_interval
        self.last_draw = 0.0
        self.line = ""
        self.iteration = initial

    def text(self, iteration, loss, lr) -> str:
        elapsed = time.monotonic() - self.start_time
        done = iteration - self.start_iter
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = _clock((self.total - iteration) / rate) if rate > 0 else "?"
        pct = 100.0 * iteration / self.total if self.total else 100.0
        middle = _postfix(loss, lr, " ", " | ")
        middle = f" | {middle}" if middle else ""
        return (f"{self.label} {iteration}/{self.total} {pct:3.0f}%{middle} | "
                f"{rate:.2f} it/s | ETA {eta}")

    def _draw(self):
        self.stream.write("\r\x1b[K" + self.line)
        self.stream.flush()

    def update(self, iteration, loss, lr):
        self.iteration = iteration
        now = time.monotonic()
        if now - self.last_draw >= self.min_interval or iteration >= self.total:
            self.line = self.text(iteration, loss, lr)
            self.last_draw = now
            self._draw()

    def write(self, text):
        self.stream.write("\r\x1b[K" + text + "\n")
        if self.line:
            self._draw()
        else:
            self.stream.flush()

    def close(self):
        if self.line:
            self.stream.write("\n")
            self.stream.flush()
        self.line = ""


def make_bar(total: int, initial: int = 0, stream=None, label: str = "Iteration") -> _Bar:
    stream = stream if stream is not None else sys.stderr
    try:
        return TqdmBar(total, initial, stream, label)
    except ImportError:
        return LineBar(total, initial, stream, label)


def choose_mode(mode: str = "auto", stream=None) -> str:
    """"bar" or "log": ``auto`` picks the bar when ``stream`` (stderr) is a terminal."""
    if mode in ("bar", "log"):
        return mode
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "bar" if tty and os.environ.get("TERM") != "dumb" else "log"


class _BarHandler(logging.Handler):
    """Bar mode: brief lines and warnings, printed above the bar."""

    def __init__(self, reporter):
        super().__init__(logging.INFO)
        self.reporter = reporter

    def emit(self, record):
        if record.levelno >= logging.WARNING or getattr(record, "brief", False):
            try:
                self.reporter.write(record.getMessage().strip())
            except Exception:  # pragma: no cover - never let display break training
                self.handleError(record)


class Reporter:
    """Progress callbacks of a running solver: begin / iteration / end, plus write."""

    def __init__(self, mode: str = "log", stream=None):
        self.mode = mode
        self.stream = stream if stream is not None else sys.stderr
        self.bar = None
        self.pending: list[str] = []

    def begin(self, start: int, total: int, label: str = "Iteration") -> None:
        if self.mode == "bar":
            self.bar = make_bar(total, start, self.stream, label)
            for text in self.pending:
                self.bar.write(text)
            self.pending.clear()

    def iteration(self, iteration: int, loss: float | None, lr: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(iteration, loss, lr)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def reporting(mode: str = "auto", log_file: str | None = None, stream=None):
    """Route the ``protonet`` logger for one command; yields the :class:`Reporter`."""
    stream = stream if stream is not None else sys.stderr
    mode = choose_mode(mode, stream)
    reporter = Reporter(mode, stream)
    logger = logging.getLogger(LOGGER)
    handlers = []
    if mode == "log":
        handler = logging.StreamHandler(stream)
        handler.setFormatter(GlogFormatter())
    else:
        handler = _BarHandler(reporter)
    handlers.append(handler)
    if log_file:
        try:
            file_handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as e:
            from ..errors import ProtonetError
            raise ProtonetError(f"{log_file}: cannot write the log ({e.strerror})") from None
        file_handler.setFormatter(GlogFormatter())
        handlers.append(file_handler)
    previous = (logger.level, logger.propagate)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in handlers:
        logger.addHandler(h)
    try:
        yield reporter
    finally:
        reporter.end()
        for h in handlers:
            logger.removeHandler(h)
            h.flush()
            if isinstance(h, logging.FileHandler):
                h.close()
        logger.setLevel(previous[0])
        logger.propagate = previous[1]
