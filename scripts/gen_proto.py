#!/usr/bin/env python3
"""Regenerate protonet/proto/caffe_pb2.py from proto/caffe.proto.

Usage (from anywhere; paths are resolved against the repository root):

    python scripts/gen_proto.py            # rewrite protonet/proto/caffe_pb2.py
    python scripts/gen_proto.py --check    # exit 1 if the committed file is stale
    python scripts/gen_proto.py --protoc /path/to/protoc

The generated module is produced by ``protoc -I proto --python_out=<tmp>
proto/caffe.proto`` and written with a short header recording the SHA-256 of
proto/caffe.proto and the protoc version, so tests can detect a stale module
without protoc.

protoc must be version 3.21.x: newer protoc (22 and later) emits Python code
that needs a newer protobuf runtime than protonet supports, and older protoc
emits different code, so the committed file would not be reproducible.
3.21 gencode runs on every Python protobuf runtime from 4.21 to 7.x.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
PROTO_FILE = PROTO_DIR / "caffe.proto"
OUTPUT_FILE = REPO_ROOT / "protonet" / "proto" / "caffe_pb2.py"

#: The protoc major.minor this project's generated code is pinned to.
REQUIRED_PROTOC = (3, 21)

HEADER_SHA_PREFIX = "# source-sha256: "
HEADER_PROTOC_PREFIX = "# protoc: "

_SHA_RE = re.compile(r"^# source-sha256: ([0-9a-f]{64})$", re.MULTILINE)


class GenProtoError(RuntimeError):
    """Raised when the module cannot be (re)generated."""


def source_sha256(proto_file: Path = PROTO_FILE) -> str:
    """Hex SHA-256 of the raw bytes of the schema file."""
    return hashlib.sha256(Path(proto_file).read_bytes()).hexdigest()


def recorded_sha256(text: str) -> str | None:
    """The source hash recorded in a generated module's header, or None."""
    m = _SHA_RE.search(text)
    return m.group(1) if m else None


def find_protoc(protoc: str | None = None) -> str:
    """Path of the protoc executable; raises GenProtoError if missing."""
    exe = shutil.which(protoc or "protoc")
    if exe is None:
        raise GenProtoError(
            f"protoc not found ({protoc or 'protoc'!r} is not on PATH); "
            "install protoc 3.21.x (e.g. Debian/Ubuntu package protobuf-compiler "
            "3.21.12) to regenerate protonet/proto/caffe_pb2.py"
        )
    return exe


def protoc_version(exe: str) -> tuple[str, tuple[int, ...]]:
    """Return (version string, numeric tuple) as printed by ``protoc --version``."""
    try:
        out = subprocess.run(
            [exe, "--version"], check=True, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise GenProtoError(f"could not run {exe} --version: {exc}") from exc
    m = re.search(r"(\d+(?:\.\d+)+)", out)
    if not m:
        raise GenProtoError(f"cannot parse protoc version from {out!r}")
    version = m.group(1)
    return version, tuple(int(p) for p in version.split("."))


def check_protoc_version(numbers: tuple[int, ...], version: str) -> None:
    """Refuse protoc versions other than 3.21.x."""
    major_minor = tuple(numbers[:2])
    if major_minor > REQUIRED_PROTOC:
        raise GenProtoError(
            f"protoc {version} is newer than 3.21: its Python output requires a "
            "newer protobuf runtime than protonet supports (4.21+). "
            "Use protoc 3.21.x."
        )
    if major_minor < REQUIRED_PROTOC:
        raise GenProtoError(
            f"protoc {version} is older than 3.21: its output would differ from "
            "the committed module. Use protoc 3.21.x."
        )


def render(protoc_output: str, sha: str, version: str) -> str:
    """Prefix protoc's output with the provenance header."""
    header = (
        f"{HEADER_SHA_PREFIX}{sha}\n"
        f"{HEADER_PROTOC_PREFIX}{version}\n"
        "# Generated from proto/caffe.proto by scripts/gen_proto.py -- do not edit.\n"
    )
    return header + protoc_output


def generate(protoc: str | None = None, proto_file: Path = PROTO_FILE) -> str:
    """Run protoc into a temporary directory and return the module's text."""
    exe = find_protoc(protoc)
    version, numbers = protoc_version(exe)
    check_protoc_version(numbers, version)
    proto_file = Path(proto_file).resolve()
    include = proto_file.parent
    with tempfile.TemporaryDirectory(prefix="gen_proto_") as tmp:
        cmd = [exe, f"-I{include}", f"--python_out={tmp}", str(proto_file)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise GenProtoError(
                f"protoc failed (exit {proc.returncode}):\n{proc.stderr.strip()}"
            )
        generated = Path(tmp) / (proto_file.stem + "_pb2.py")
        body = generated.read_text(encoding="utf-8")
    return render(body, source_sha256(proto_file), version)


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def write(protoc: str | None = None, output: Path = OUTPUT_FILE) -> Path:
    """Regenerate and write the module; returns its path."""
    text = generate(protoc)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, output)
    return output


def check(protoc: str | None = None, output: Path = OUTPUT_FILE) -> list[str]:
    """Return a list of problems with the committed module (empty when fresh)."""
    output = Path(output)
    if not output.exists():
        return [f"{_rel(output)} does not exist"]
    committed = output.read_text(encoding="utf-8")
    problems = []
    want_sha = source_sha256()
    got_sha = recorded_sha256(committed)
    if got_sha != want_sha:
        problems.append(
            f"{_rel(output)} records source-sha256 {got_sha}, but "
            f"{_rel(PROTO_FILE)} hashes to {want_sha}"
        )
    fresh = generate(protoc)
    if fresh != committed:
        problems.append(
            f"{_rel(output)} differs from a fresh protoc run on {_rel(PROTO_FILE)}"
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the committed module is stale",
    )
    parser.add_argument(
        "--protoc", default=None, help="protoc executable (default: protoc on PATH)"
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check(args.protoc)
            if problems:
                for p in problems:
                    print(f"gen_proto: STALE: {p}", file=sys.stderr)
                print(
                    "gen_proto: run `python scripts/gen_proto.py` to regenerate",
                    file=sys.stderr,
                )
                return 1
            print(f"gen_proto: {_rel(OUTPUT_FILE)} is up to date")
            return 0
        out = write(args.protoc)
        print(f"gen_proto: wrote {_rel(out)}")
        return 0
    except GenProtoError as exc:
        print(f"gen_proto: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
