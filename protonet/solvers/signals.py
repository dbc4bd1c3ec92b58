"""SIGINT/SIGHUP during training, after Caffe's ``util/signal_handler.cpp``.

The handlers only record that a signal arrived; the solver asks
:meth:`SignalHandler.requested_action` between iterations (and between test
batches) and acts then, so a snapshot is never taken half-way through an
update. Effects: ``"snapshot"`` (write a snapshot, keep training), ``"stop"``
(stop; the solver snapshots on the way out) and ``"none"``.

A second SIGINT while the first is still pending raises KeyboardInterrupt at
once (for a user who does not want to wait for the current iteration);
snapshot files are written atomically, so even that leaves none torn.
"""
from __future__ import annotations

import signal
import threading

from ..errors import ProtonetError

NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"
EFFECTS = (SNAPSHOT, STOP, NONE)


def check_effect(value: str, flag: str) -> str:
    if value not in EFFECTS:
        raise ProtonetError(f"invalid {flag} '{value}' (use snapshot, stop or none)")
    return value


class SignalHandler:
    """Context manager installing the handlers; ``requested_action()`` polls them."""

    def __init__(self, sigint_effect: str = STOP, sighup_effect: str = SNAPSHOT):
        self.effects = {"SIGINT": check_effect(sigint_effect, "SIGINT effect"),
                        "SIGHUP": check_effect(sighup_effect, "SIGHUP effect")}
        self.pending = {"SIGINT": 0, "SIGHUP": 0}
        self._previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        self.pending[name] += 1
        if name == "SIGINT" and self.pending[name] > 1 and self.effects[name] != NONE:
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signals can only be handled on the main thread
        for name in self.effects:
            signum = getattr(signal, name, None)
            if signum is not None:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        return False

    def requested_action(self) -> str:
        """The action of the oldest pending signal (SIGINT first, as Caffe checks it)."""
        for name in ("SIGINT", "SIGHUP"):
            if self.pending[name]:
                self.pending[name] = 0
                return self.effects[name]
        return NONE
