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
import select
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


class _FirstDeath:
    """Watches the ranks' pids (from their notes) and keeps the first to die: mpiexec's banner
    names one dead rank, which can be a rank it stopped itself when it stops the others before
    it collects the first one's status (seen under load)."""

    def __init__(self, rundir: str, ranks: int):
        self.rundir, self.ranks = rundir, ranks
        self.first: dict | None = None  # the rank's note, with "status" (waitpid's) or None
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _notes(self) -> list[dict]:
        notes = []
        for path in glob.glob(os.path.join(self.rundir, "rank-*.json")):
            with contextlib.suppress(OSError, ValueError):
                with open(path) as f:
                    notes.append(json.load(f))
        return notes

    def _run(self) -> None:
        fds: dict[int, dict] = {}
        gone: list[dict] = []
        try:
            while len(fds) + len(gone) < self.ranks:  # the notes appear as the ranks start
                known = {note["pid"] for note in list(fds.values()) + gone}
                for note in self._notes():
                    if note["pid"] in known:
                        continue
                    try:
                        fds[os.pidfd_open(int(note["pid"]))] = note
                    except ProcessLookupError:
                        gone.append(note)
                if gone or select.select([self._wake_r], [], [], 0.05)[0]:
                    break
            poller = select.poll()
            for fd in list(fds) + [self._wake_r]:
                poller.register(fd, select.POLLIN)
            dead = gone or [fds[fd] for fd, _ in poller.poll() if fd in fds]
            if len(dead) == 1:  # two at once: which was first is unknown
                self.first = dict(dead[0], status=_zombie_status(int(dead[0]["pid"])))
        except (OSError, AttributeError, KeyError, ValueError):
            pass  # no pidfd (not Linux): the banner alone names the rank
        finally:
            for fd in fds:
                os.close(fd)

    def stop(self) -> dict | None:
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        os.close(self._wake_r)
        os.close(self._wake_w)
        return self.first


def _zombie_status(pid: int) -> int | None:
    """The waitpid status of a dead process mpiexec has not collected yet, else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[49]) if fields[0] == "Z" and len(fields) > 49 else None


def _dead_rank(banner: list[bytes], rundir: str, first: dict | None = None) -> str | None:
    """"rank R (pid P on H) was killed by signal S (Name)": the first rank seen to die, else
    the one mpiexec's banner names."""
    text = b"\n".join(banner).decode("utf-8", "replace")
    pid = re.search(r"PID (\d+) RUNNING AT (\S+)", text)
    if first is not None and first.get("status") != 0 and \
            not (pid and int(pid.group(1)) == int(first["pid"])):
        who = f"rank {first['rank']} (pid {first['pid']} on {first['host']})"
        status = first.get("status")
        if status is None:
            return f"{who} died first"
        if status & 0x7F:
            signum = status & 0x7F
            with contextlib.suppress(ValueError):
                return f"{who} was killed by signal {signum} ({signal.strsignal(signum)})"
            return f"{who} was killed by signal {signum}"
        return f"{who} exited with status {status >> 8}"
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
    deaths = _FirstDeath(rundir, ranks)
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
        first = deaths.stop()
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
        dead = _dead_rank(banner, rundir, first)
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
