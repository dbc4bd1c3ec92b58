"""Reading Caffe's text and binary protobuf files.

``read_net``/``read_solver`` parse, upgrade legacy dialects (see
:mod:`protonet.io.upgrade`) and return the message. Strict mode (the default)
accepts exactly what Caffe accepts and reports the first problem as
``file:line:column: message (near 'token')``. ``lenient=True`` reads the
superset Netscope renders (see :mod:`protonet.io.lenient`), warning once per
dropped or guessed item.
"""
from __future__ import annotations

import logging
import warnings

from google.protobuf import text_format

from ..errors import ProtonetError
from ..proto import caffe_pb2
from . import upgrade


log = logging.getLogger("protonet")


class ProtonetWarning(UserWarning):
    """Something in the input was dropped, guessed or upgraded."""


def warn(message: str) -> None:
    warnings.warn(message, ProtonetWarning, stacklevel=3)


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ProtonetError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ProtonetError(f"{path}: is a directory, not a prototxt file") from None
    except OSError as e:
        raise ProtonetError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtonetError(
            f"{path}: not a text prototxt (byte {e.start} is not UTF-8); "
            "binary .caffemodel files are weights, not net definitions") from None


def _token_at(text: str, line: int, column: int) -> str:
    """The token starting at 1-based (line, column), for error messages."""
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return ""
    rest = lines[line - 1][max(column - 1, 0):].lstrip()
    token = ""
    for ch in rest:
        if ch.isspace() or (token and ch in "{}:<>[],;"):
            break
        token += ch
        if ch in "{}:<>[],;":
            break
    return token


def parse_text(text: str, message, path: str = "<string>"):
    """Strictly parse prototxt ``text`` into ``message`` (Caffe's TextFormat rules)."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        line, column = e.GetLine(), e.GetColumn()
        detail = str(e)
        if line is not None and detail.startswith(f"{line}:"):
            detail = detail.split(" : ", 1)[-1] if " : " in detail else detail.split(":", 2)[-1]
        where = f"{path}:{line}:{column}" if line is not None else path
        token = _token_at(text, line, column) if line is not None else ""
        near = f" (near '{token}')" if token else ""
        unclosed = _unclosed_block(text, line, column) if line is not None else ""
        detail = detail.strip().rstrip(".") if unclosed else detail.strip()
        raise ProtonetError(f"{where}: {detail}{unclosed}{near}") from None
    return message


def _unclosed_block(text: str, line: int, column: int) -> str:
    """For an error at the file's last token: where the block left open begins, if one is."""
    from .lenient import tokenize
    try:
        tokens = tokenize(text, "")
    except ProtonetError:
        return ""
    if not tokens or (line, column) < (tokens[-1].line, tokens[-1].col):
        return ""
    stack = []
    for tok in tokens:
        if tok.kind == "punct" and tok.text in "{<[":
            stack.append(tok)
        elif tok.kind == "punct" and tok.text in "}>]" and stack:
            stack.pop()
    if not stack:
        return ""
    return f"; the '{stack[-1].text}' at {stack[-1].line}:{stack[-1].col} is never closed"


def _parse_any(text: str, message, path: str, lenient: bool):
    if lenient:
        from .lenient import parse_lenient
        parse_lenient(text, message, path, warn)
    else:
        parse_text(text, message, path)
    return message


def parse_net(text: str, path: str = "<string>", lenient: bool = False):
    """Parse and upgrade a text NetParameter."""
    net = _parse_any(text, caffe_pb2.NetParameter(), path, lenient)
    return upgrade_net_checked(net, path)


def upgrade_net_checked(net, path: str):
    for note in upgrade.upgrade_net(net, path):
        log.info("%s: %s", path, note)
    return net


def read_net(path: str, lenient: bool = False):
    """Read a net definition: text prototxt, or a binary NetParameter (.caffemodel)."""
    if is_binary_proto(path):
        return read_net_binary(path)
    return parse_net(read_text(path), path, lenient)


def read_net_binary(path: str):
    """Read a binary NetParameter (a .caffemodel) and upgrade it."""
    from .blobs import read_binary_message
    net = read_binary_message(path, caffe_pb2.NetParameter())
    return upgrade_net_checked(net, path)


def is_binary_proto(path: str) -> bool:
    if path.endswith((".caffemodel", ".binaryproto", ".solverstate")):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < len(head) - 4  # not just a multi-byte char cut at the end
    return b"\x00" in head


def parse_solver(text: str, path: str = "<string>", lenient: bool = False,
                 solver_path: str | None = None):
    """Parse and upgrade a text SolverParameter; ``solver_path`` sets the default snapshot_prefix."""
    solver = _parse_any(text, caffe_pb2.SolverParameter(), path, lenient)
    for note in upgrade.upgrade_solver(solver, solver_path):
        log.info("%s: %s", path, note)
    for field in ("net_param", "train_net_param"):
        if solver.HasField(field):
            upgrade_net_checked(getattr(solver, field), f"{path} ({field})")
    for net in solver.test_net_param:
        upgrade_net_checked(net, f"{path} (test_net_param)")
    return solver


def read_solver(path: str, lenient: bool = False):
    """Read a solver prototxt and upgrade it (and any inline nets) as Caffe does."""
    return parse_solver(read_text(path), path, lenient, solver_path=path)


def write_text(message) -> str:
    """Text prototxt of ``message`` (as upgrade_net_proto_text writes it)."""
    return text_format.MessageToString(message)


def write_text_file(message, path: str) -> None:
    from .atomic import atomic_write
    atomic_write(path, write_text(message).encode("utf-8"))
