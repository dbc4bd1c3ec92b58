import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of ``n`` (negative ints as 64-bit two's complement), written
    out independently of protonet's encoder so tests can build records by hand."""
    n = int(n) & ((1 << 64) - 1)
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def corpus_dir():
    """The shared prototxt corpus: $PROTONET_CORPUS, else ../shared/corpus beside the repo."""
    path = os.environ.get("PROTONET_CORPUS") or str(REPO.parent / "shared" / "corpus")
    return pathlib.Path(path) if os.path.isfile(os.path.join(path, "MANIFEST.tsv")) else None


@pytest.fixture
def cut_everything(monkeypatch):
    """Two threads, and every piece of work worth a part of its own."""
    from protonet import parallel
    monkeypatch.setattr(parallel, "MIN_ITEMS", 1)
    parallel.set_num_threads(2)
    yield
    parallel.set_num_threads(None)


@pytest.fixture
def corpus():
    path = corpus_dir()
    if path is None:
        pytest.skip("prototxt corpus not found (set PROTONET_CORPUS)")
    return path


@pytest.fixture
def write(tmp_path):
    """write(text, name='net.prototxt') -> path of a file holding ``text``."""
    def _write(text: str, name: str = "net.prototxt") -> str:
        p = tmp_path / name
        p.write_text(text)
        return str(p)
    return _write


#: generated fuzz cases run in this session (tests/test_fuzz.py counts them)
FUZZ_CASES = {"count": 0}


def pytest_terminal_summary(terminalreporter):
    if FUZZ_CASES["count"]:
        terminalreporter.write_line(f"fuzz: {FUZZ_CASES['count']} generated cases ran "
                                    "(PROTONET_FUZZ_CASES sets the number per property)")
