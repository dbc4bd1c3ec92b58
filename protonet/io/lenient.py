"""The lenient prototxt dialect that Netscope renders and Caffe refuses.

Accepted beyond Caffe's text format: keys and enum values in any case,
``key: [a, b]`` lists, ``key: {...}``, single-quoted strings, ``1.`` floats,
files that mix ``layer {}`` with legacy ``layers {}`` entries (each legacy
entry is upgraded where it stands, so file order is kept), V1 enum names
that V1 never had (``type: CROP``), lower-case layer types (``"data"`` with an
``input_param`` is an ``Input`` layer), and unknown fields. Every dropped or
guessed item produces exactly one warning naming file:line:column. A value that a known
field cannot hold (``pool: MEDIAN``, ``dim: "four"``, a negative ``kernel_size``) is an
error naming file:line:column, as in strict mode; a file that ends inside a block names
the ``{`` left open.
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

from google.protobuf.descriptor import FieldDescriptor as FD

from ..errors import ProtonetError
from ..proto import caffe_pb2
from . import upgrade
from .pbcompat import is_repeated

_TOKEN = re.compile(r"""
    (?P<newline>\n)
  | (?P<space>[ \t\r\f\v]+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?)
              |-(?:inf|infinity|nan)\b)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}:<>\[\],;])
""", re.VERBOSE)


@dataclass
class Token:
    kind: str
    text: str
    line: int
    col: int


@dataclass
class Block:
    entries: list
    line: int
    col: int


@dataclass
class Entry:
    key: str
    values: list = field(default_factory=list)  # Tokens and/or Blocks
    line: int = 0
    col: int = 0


def tokenize(text: str, path: str) -> list[Token]:
    tokens, line, start, pos = [], 1, 0, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ProtonetError(f"{path}:{line}:{pos - start + 1}: unexpected character "
                                f"'{text[pos]}'")
        kind = m.lastgroup
        if kind == "newline":
            line, start = line + 1, m.end()
        elif kind not in ("space", "comment"):
            tokens.append(Token(kind, m.group(), line, pos - start + 1))
        pos = m.end()
    return tokens


#: deeper than any Caffe message nests (NetParameter > layer > param > filler is 4)
MAX_DEPTH = 64


class _Parser:
    def __init__(self, tokens, path):
        self.tokens, self.i, self.path = tokens, 0, path
        self.depth = 0
        self.open: list[Token] = []  # the '{', '<' and '[' not closed yet

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def fail(self, message, tok=None):
        tok = tok or self.peek()
        if tok is None:  # at end of file: name the innermost bracket left open
            if "end of file" not in message:
                message += " at end of file"
            if self.open:
                o = self.open[-1]
                return ProtonetError(f"{self.path}:{o.line}:{o.col}: {message}; the '{o.text}' "
                                     "here is never closed")
            return ProtonetError(f"{self.path}: {message}")
        return ProtonetError(f"{self.path}:{tok.line}:{tok.col}: {message} (near '{tok.text}')")

    def next(self):
        tok = self.peek()
        if tok is None:
            raise self.fail("unexpected end of file")
        self.i += 1
        return tok

    def entries(self, closer=None) -> list[Entry]:
        out = []
        while True:
            tok = self.peek()
            if tok is None:
                if closer:
                    raise self.fail(f"missing '{closer}'")
                return out
            if closer and tok.text == closer:
                self.i += 1
                return out
            if tok.kind != "ident":
                raise self.fail("expected a field name", tok)
            self.i += 1
            entry = Entry(tok.text, [], tok.line, tok.col)
            colon = self.peek() is not None and self.peek().text == ":"
            if colon:
                self.i += 1
            entry.values = self.value(colon)
            out.append(entry)
            if self.peek() is not None and self.peek().text in (",", ";"):
                self.i += 1

    def value(self, had_colon):
        tok = self.next()
        if tok.text in ("{", "<"):
            if self.depth >= MAX_DEPTH:
                raise self.fail(f"blocks nested more than {MAX_DEPTH} deep", tok)
            self.depth += 1
            self.open.append(tok)
            block = Block(self.entries("}" if tok.text == "{" else ">"), tok.line, tok.col)
            self.open.pop()
            self.depth -= 1
            return [block]
        if not had_colon:
            raise self.fail("expected ':' or '{' after the field name", tok)
        if tok.text == "[":
            items = []
            self.open.append(tok)
            while self.peek() is not None and self.peek().text != "]":
                items.extend(self.value(True))
                if self.peek() is not None and self.peek().text == ",":
                    self.i += 1
            if self.peek() is None:
                raise self.fail("missing ']'")
            self.open.pop()
            self.next()
            return items
        if tok.kind not in ("string", "number", "ident"):
            raise self.fail("expected a value", tok)
        if tok.kind == "string":  # adjacent strings concatenate
            while self.peek() is not None and self.peek().kind == "string":
                nxt = self.next()
                tok = Token("string", tok.text[:-1] + nxt.text[1:], tok.line, tok.col)
        return [tok]


def parse_tree(text: str, path: str) -> list[Entry]:
    return _Parser(tokenize(text, path), path).entries()


# -- tree -> message ------------------------------------------------------------------------
_INT_TYPES = {FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64,
              FD.TYPE_SINT32, FD.TYPE_SINT64, FD.TYPE_FIXED32, FD.TYPE_FIXED64,
              FD.TYPE_SFIXED32, FD.TYPE_SFIXED64}


class _Guess(Exception):
    """A value was accepted with a guess (carries the converted value and a note)."""

    def __init__(self, value, note):
        super().__init__(note)
        self.value, self.note = value, note


def _convert(fd, tok: Token):
    text = tok.text
    if fd.type == FD.TYPE_ENUM:
        values = fd.enum_type.values_by_name
        if text in values:
            return values[text].number
        for name, v in values.items():
            if name.lower() == text.lower():
                raise _Guess(v.number, f"enum value '{text}' read as '{name}'")
        if tok.kind == "number" and int(text, 0) in fd.enum_type.values_by_number:
            return int(text, 0)
        raise ValueError(f"'{text}' is not a value of {fd.enum_type.name}")
    if fd.type == FD.TYPE_BOOL:
        low = text.lower()
        if low in ("true", "t", "1"):
            return True
        if low in ("false", "f", "0"):
            return False
        raise ValueError(f"'{text}' is not a boolean")
    if fd.type in _INT_TYPES:
        if tok.kind != "number":
            raise ValueError(f"'{text}' is not an integer")
        try:
            return int(text, 0)
        except ValueError:
            number = float(text.rstrip("fF"))
            if number.is_integer():
                raise _Guess(int(number), f"integer field written as '{text}'") from None
            raise ValueError(f"'{text}' is not an integer") from None
    if fd.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        if tok.kind == "ident" and tok.text.lower() in ("inf", "infinity", "nan"):
            return float(tok.text)
        if tok.kind != "number":
            raise ValueError(f"'{text}' is not a number")
        return float(int(text, 16)) if text.lower().startswith(("0x", "-0x")) \
            else float(text.rstrip("fF"))
    # string / bytes
    if tok.kind == "string":
        raw = codecs.decode(text[1:-1], "unicode_escape")
    else:
        raw = text
    value = raw.encode("latin-1", "replace") if fd.type == FD.TYPE_BYTES else raw
    if tok.kind != "string":
        raise _Guess(value, f"unquoted string '{text}'")
    return value


class _Applier:
    def __init__(self, path, warn):
        self.path, self.warn = path, warn
        self.unknown_v1_type: dict[int, str] = {}  # id(V1LayerParameter) -> raw type

    def note(self, where, message):
        self.warn(f"{self.path}:{where.line}:{where.col}: {message}")

    def apply(self, entries, msg):
        desc = msg.DESCRIPTOR
        by_lower = {f.name.lower(): f for f in desc.fields}
        for entry in entries:
            fd = desc.fields_by_name.get(entry.key) or by_lower.get(entry.key.lower())
            if fd is None:
                self.note(entry, f"dropped unknown field '{entry.key}' in {desc.name}")
                continue
            if fd.name != entry.key:
                self.note(entry, f"field '{entry.key}' read as '{fd.name}'")
            if isinstance(msg, caffe_pb2.NetParameter) and fd.name == "layers":
                for block in entry.values:
                    self.legacy_layer(block, msg)
                continue
            for value in entry.values:
                self.assign(msg, fd, value, entry)

    def error(self, where, message) -> ProtonetError:
        return ProtonetError(f"{self.path}:{where.line}:{where.col}: {message}")

    def assign(self, msg, fd, value, entry):
        """Set one value of a known field; a value the field cannot hold is an error, as in
        strict mode (only unknown fields and layer types are tolerated)."""
        repeated = is_repeated(fd)
        where = f"{msg.DESCRIPTOR.name}.{fd.name}"
        if fd.message_type is not None:
            if not isinstance(value, Block):
                raise self.error(value, f"{where} expects a {{ ... }} block, got "
                                        f"'{value.text}'")
            sub = getattr(msg, fd.name).add() if repeated else getattr(msg, fd.name)
            self.apply(value.entries, sub)
            return
        if isinstance(value, Block):
            raise self.error(value, f"{where} expects a value, not a {{ ... }} block")
        try:
            converted = _convert(fd, value)
        except _Guess as guess:
            converted = guess.value
            self.note(value, guess.note)
        except (ValueError, UnicodeDecodeError) as err:
            if isinstance(msg, caffe_pb2.V1LayerParameter) and fd.name == "type":
                self.unknown_v1_type[id(msg)] = value.text
                return
            raise self.error(value, f"{where}: {err}") from None
        try:
            if repeated:
                getattr(msg, fd.name).append(converted)
            else:
                if msg.HasField(fd.name):
                    self.note(value, f"'{fd.name}' given more than once; the last value wins")
                setattr(msg, fd.name, converted)
        except (ValueError, TypeError) as err:  # out of range (a negative unsigned value)
            raise self.error(value, f"{where}: '{value.text}' is out of range ({err})") from None

    def legacy_layer(self, block, net):
        """A ``layers {}`` entry: V0 stays for the upgrader; V1 is upgraded where it stands."""
        if not isinstance(block, Block):
            raise self.error(block, f"'layers' expects a {{ ... }} block, got '{block.text}'")
        v1 = caffe_pb2.V1LayerParameter()
        self.apply(block.entries, v1)
        if v1.HasField("layer"):  # V0: leave for upgrade_net, which handles whole V0 nets
            net.layers.append(v1)
            return
        upgrade.upgrade_v1_data_transform(v1)
        raw = self.unknown_v1_type.pop(id(v1), None)
        override = None
        if raw is not None:
            override = guess_type(raw) or raw
            self.note(block, f"layer '{v1.name}': V1 type '{raw}' read as '{override}'")
        net.layer.append(upgrade.upgrade_v1_layer(v1, type_override=override))


def _known_types():
    from ..layers import LAYER_REGISTRY
    return set(upgrade.BVLC_LAYER_TYPES) | set(LAYER_REGISTRY)


def _squash(name: str) -> str:
    return name.replace("_", "").lower()


def guess_type(raw: str) -> str | None:
    """A known layer type matching ``raw`` up to case and underscores, or None."""
    if raw in upgrade.V1_TYPE_NAMES:
        return upgrade.V1_TYPE_NAMES[raw]
    matches = [t for t in sorted(_known_types()) if _squash(t) == _squash(raw)]
    return matches[0] if matches else None


def parse_lenient(text: str, message, path: str, warn):
    """Parse Netscope-dialect ``text`` into ``message``; ``warn(str)`` receives each note."""
    applier = _Applier(path, warn)
    applier.apply(parse_tree(text, path), message)
    if isinstance(message, caffe_pb2.NetParameter):
        if len(message.layer) and len(message.layers):
            warn(f"{path}: V0 'layers' entries mixed with 'layer' entries; the V0 ones are dropped")
            message.ClearField("layers")
        known = _known_types()
        for layer in message.layer:
            if layer.type in known:
                continue
            if _squash(layer.type) == "data" and layer.HasField("input_param") \
                    and not layer.HasField("data_param"):
                guessed = "Input"
            else:
                guessed = guess_type(layer.type)
            if guessed and guessed != layer.type:
                warn(f"{path}: layer '{layer.name}': type '{layer.type}' read as '{guessed}'")
                layer.type = guessed
    return message
