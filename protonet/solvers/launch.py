"""``protonet solve SOLVER --ranks N``: start the N ranks through ``mpiexec`` on this machine.

The launcher runs ``mpiexec -n N python -m protonet solve SOLVER ...`` (the same
arguments, without ``--ranks``) in a session of its own, so a terminal's Ctrl-C
reaches only the launcher, which hands it to ``mpiexec`` once per press:
``mpiexec`` forwards the first to every rank (they stop together after the
same iteration and rank 0 writes one snapshot) and aborts the job on the
second. SIGHUP goes to rank 0 (a snapshot, training goes on); SIGTERM to
``mpiexec``.

The ranks' output passes through. When the job fails, ``mpiexec``'s
termination banner is replaced by one line naming the rank that died (its pid
comes from the note each rank leaves in a temporary directory) and the newest
snapshot, which atomic writes keep whole.
"""
from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading

from ..errors import ProtonetError
from .distributed import INSTALL_HINT, RANKS_ENV, RUNDIR_ENV

MPIEXEC_ENV = "PROTONET_MPIEXEC"
_BANNER = re.compile(rb"^(=+\s*$|=   |YOUR APPLICATION TERMINATED|This typically refers to a "
                     rb"problem|Please see the FAQ page|Abort\(\d+\) on node|\s*$)")


def find_mpiexec() -> str:
    """``$PROTONET_MPIEXEC``, else the ``mpiexec`` beside this Python (the mpich wheel's), else
    the first on ``PATH``."""
    given = os.environ.get(MPIEXEC_ENV)
    if given:
        return given
    for folder in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        candidate = os.path.join(folder, "mpiexec")
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("mpiexec")
    if found:
        return found
    raise ProtonetError(f"--ranks starts its processes with mpiexec, and none was found: "
                        f"{INSTALL_HINT}; or name one in ${MPIEXEC_ENV}")


def rank_arguments(args, path: str, progress: str) -> list[str]:
    """The ``protonet solve`` arguments every rank gets (``--ranks`` left out)."""
    argv = ["solve", path, "--sigint-effect", args.sigint_effect,
            "--sighup-effect", args.sighup_effect, "--level", str(args.level),
            "--progress", progress]
    for flag in ("weights", "snapshot", "gpu", "log"):
        value = getattr(args, flag, None)
        if value is not None:
            argv += [f"--{flag}", value]
    for stage in args.stage:
        argv += ["--stage", stage]
    return argv


def newest_snapshot(prefix: str) -> tuple[int, str] | None:
    """(iteration, path) of the newest ``PREFIX_iter_N.solverstate[.h5]``, or None."""
    best = None
    for path in glob.glob(glob.escape(prefix) + "_iter_*.solverstate*"):
        m = re.search(r"_iter_(\d+)\.solverstate(\.h5)?$", path)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), path)
    return best


def check_snapshot_ranks(state_file: str, ranks: int) -> None:
    """Refuse, before starting anything, a snapshot written with another rank count."""
    from . import snapshot as snap
    from .callbacks import rank_count_error
    extra = snap.read_sidecar(snap.sidecar_path(state_file))
    if extra is not None and int(extra.get("ranks", 1)) != ranks:
        raise rank_count_error(state_file, extra, ranks)


def merge_errors(lines: list[str]) -> list[str]:
    """The ranks' ``protonet: error: [rank R: ]message`` lines, each message once, with the
    ranks that gave it (``ranks 0, 1: message``)."""
    ranks_of: dict[str, list[str]] = {}
    for line in lines:
        text = line[len("protonet: error: "):]
        m = re.match(r"rank (\d+): (.*)", text, re.S)
        rank, message = (m.group(1), m.group(2)) if m else (None, text)
        ranks_of.setdefault(message, [])
        if rank is not None:
            ranks_of[message].append(rank)
    out = []
    for message, ranks in ranks_of.items():
        who = "" if not ranks else f"rank {ranks[0]}: " if len(ranks) == 1 else \
            f"ranks {', '.join(ranks)}: "
        out.append(f"protonet: error: {who}{message}")
    return out


class _Output:
    """Passes the job's stderr through; holds back mpiexec's termination banner and notes
    the error lines the ranks print."""

    def __init__(self, stream, sink):
        self.stream, self.sink = stream, sink
        self.banner: list[bytes] = []
        self.errors: list[str] = []
        self._blank = 0  # blank lines held back: one may open mpiexec's banner
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.sink.write(data)
            self.sink.flush()

    def _run(self) -> None:
        pending, shown = b"", 0
        fd = self.stream.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._line(line, shown)
                shown = 0
            if b"\r" in pending and len(pending) > shown:
                self._write(pending[shown:])  # a progress bar's line, as it is drawn
                shown = len(pending)
        if pending:
            self._line(pending, shown)

    def _line(self, line: bytes, shown: int) -> None:
        text = line.decode("utf-8", "replace")
        if text.startswith("protonet: error:"):  # shown once each at the end
            self.errors.append(text)
            return
        if (self.banner or line.startswith(b"====")) and _BANNER.match(line) or \
                line.startswith(b"Abort("):
            self.banner.append(line)
            return
        if not line.strip():
            if self.banner:
                self.banner.append(line)
            else:
                self._blank += 1
            return
        self._write(b"\n" * self._blank + line[shown:] + b"\n")
        self._blank = 0

    def join(self) -> None:
        self._thread.join(timeout=10)
        if self._blank and not self.banner:
            self._write(b"\n" * self._blank)


def _dead_rank(banner: list[bytes], rundir: str) -> str | None:
    """"rank R (pid P on H) was killed by signal S (Name)", from mpiexec's banner."""
    text = b"\n".join(banner).decode("utf-8", "replace")
    pid = re.search(r"PID (\d+) RUNNING AT (\S+)", text)
    if not pid:
        return None
    how = re.search(r"EXIT STRING: (.+)", text)
    code = re.search(r"EXIT CODE: (\d+)", text)
    who = f"pid {pid.group(1)} on {pid.group(2)}"
    for note in glob.glob(os.path.join(rundir, "rank-*.json")):
        with contextlib.suppress(OSError, ValueError):
            with open(note) as f:
                data = json.load(f)
            if int(data["pid"]) == int(pid.group(1)):
                who = f"rank {data['rank']} ({who})"
    if how and "signal" in how.group(1):
        m = re.search(r"(.*)\(signal (\d+)\)", how.group(1))
        what = (f"was killed by signal {m.group(2)} ({m.group(1).strip()})" if m
                else f"ended: {how.group(1).strip()}")
    else:
        what = f"exited with status {code.group(1) if code else '?'}"
    return f"{who} {what}"


def launch(args, path: str, param) -> int:
    """Run ``protonet solve`` as ``args.ranks`` MPI ranks on this machine; the exit status."""
    from .progress import choose_mode
    ranks = int(args.ranks)
    if importlib.util.find_spec("mpi4py") is None:
        raise ProtonetError(f"--ranks needs mpi4py: {INSTALL_HINT}")
    if args.snapshot:
        check_snapshot_ranks(args.snapshot, ranks)
    mpiexec = find_mpiexec()
    rundir = tempfile.mkdtemp(prefix="protonet-ranks-")
    command = [mpiexec, "-n", str(ranks), sys.executable, "-m", "protonet"] + \
        rank_arguments(args, path, choose_mode(args.progress))
    env = dict(os.environ, **{RANKS_ENV: str(ranks), RUNDIR_ENV: rundir})
    try:
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as e:
        shutil.rmtree(rundir, ignore_errors=True)
        raise ProtonetError(f"cannot start {mpiexec}: {e.strerror}") from None
    # mpiexec prints its banner on stdout, the ranks log on stderr
    outputs = [_Output(proc.stdout, getattr(sys.stdout, "buffer", sys.stdout)),
               _Output(proc.stderr, getattr(sys.stderr, "buffer", sys.stderr))]
    interrupts = [0]

    def forward(signum, frame):
        if signum == signal.SIGHUP:  # mpiexec does not forward it: to rank 0, which decides
            with contextlib.suppress(OSError, ValueError, KeyError):
                with open(os.path.join(rundir, "rank-0.json")) as f:
                    os.kill(int(json.load(f)["pid"]), signal.SIGHUP)
            return
        if signum == signal.SIGINT:
            interrupts[0] += 1
        with contextlib.suppress(OSError):
            proc.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            if signum is not None:
                previous[signum] = signal.signal(signum, forward)
    try:
        rc = proc.wait()
        for output in outputs:
            output.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    try:
        if rc == 0:
            return 0
        errors = outputs[0].errors + outputs[1].errors
        if errors:  # the ranks said what went wrong
            for line in merge_errors(errors):
                print(line, file=sys.stderr)
            return 1
        banner = outputs[0].banner + outputs[1].banner
        dead = _dead_rank(banner, rundir)
        if dead is None:
            for output in outputs:
                for line in output.banner:
                    output._write(line + b"\n")
        newest = newest_snapshot(param.snapshot_prefix) if param.snapshot_prefix else None
        whole = (f"the newest snapshot, {newest[1]} (iteration {newest[0]}), is whole: resume "
                 f"with --snapshot {newest[1]}" if newest else "no snapshot was written")
        if dead is not None:
            raise ProtonetError(f"{dead}; mpiexec stopped the other ranks. Training stopped; "
                                f"{whole}")
        cause = "interrupted" if interrupts[0] else f"mpiexec exited with status {rc}"
        raise ProtonetError(f"{cause}; the ranks stopped. {whole[0].upper() + whole[1:]}")
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
