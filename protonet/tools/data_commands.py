"""CLI subcommands for datasets: ``data``, ``convert-imageset``, ``compute-mean``.

    protonet data fashion-mnist             # -> data/mnist/mnist_{train,test}_lmdb
    protonet data fashion-mnist-siamese     # -> data/mnist/mnist_siamese_{train,test}_leveldb
    protonet convert-imageset --resize_height=256 --resize_width=256 --shuffle \\
        images/ train.txt train_lmdb
    protonet compute-mean train_lmdb mean.binaryproto

Caffe's gflags spellings work (``--resize_height=256``, ``--shuffle``,
``--gray=true``), as do dashes (``--resize-height 256``).
"""
from __future__ import annotations

import argparse
import sys

from ..errors import ProtonetError


def _flag(p, name: str, help: str) -> None:
    """A gflags-style boolean: ``--name``, ``--name=true|false``, ``--noname``; dashes work too."""
    spellings = [name] + ([name.replace("_", "-")] if "_" in name else [])
    p.add_argument(*[f"--{s}" for s in spellings], dest=name, action="store_true", help=help)
    # literal option strings: argparse matches a whole registered string before splitting at '='
    p.add_argument(*[f"--{s}={v}" for s in spellings for v in ("true", "1", "True")],
                   dest=name, action="store_true", help=argparse.SUPPRESS)
    p.add_argument(*[f"--{s}={v}" for s in spellings for v in ("false", "0", "False")],
                   *[f"--no{s}" for s in spellings], dest=name, action="store_false",
                   help=argparse.SUPPRESS)


def _int_option(p, name: str, help: str) -> None:
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    p.add_argument(*names, dest=name, type=int, default=0, metavar="N", help=help)


def _check_backend(backend: str | None) -> str | None:
    """``lmdb``/``leveldb`` (any case), or None when not given."""
    if backend is None:
        return None
    if backend.lower() not in ("lmdb", "leveldb"):
        raise ProtonetError(f"backend '{backend}' is not supported; use lmdb or leveldb "
                            "(Caffe's Data layer reads them with `backend: LMDB` or "
                            "`backend: LEVELDB`)")
    return backend.lower()


# -- data --------------------------------------------------------------------------------------
def cmd_data(args) -> int:
    backend = _check_backend(args.backend)
    if args.dataset.endswith("-siamese"):
        from ..data.siamese import prepare_siamese
        summary = prepare_siamese(args.dataset[:-len("-siamese")], args.from_dir, args.out,
                                  allow_download=not args.no_download,
                                  backend=backend or "leveldb", seed=args.seed)
        what = "pairs"
    else:
        from ..data.mnist import prepare
        summary = prepare(args.dataset, args.from_dir, args.out,
                          allow_download=not args.no_download, backend=backend or "lmdb")
        what = "images"
    parts = [f"{path} ({n} {what}, {'x'.join(map(str, (1,) * (3 - len(shape)) + shape))})"
             for path, n, shape in summary["written"].values()]
    print(f"{summary['dataset']} from {summary['source']}: wrote {' and '.join(parts)}",
          file=sys.stderr)
    return 0


# -- convert-imageset --------------------------------------------------------------------------
def cmd_convert_imageset(args) -> int:
    from ..data.imageset import convert_imageset
    backend = _check_backend(args.backend)
    if args.encode_type and not args.encoded:
        print("protonet: encode_type given, so storing encoded images (--encoded)",
              file=sys.stderr)
    summary = convert_imageset(
        args.root, args.list, args.db, gray=args.gray, shuffle=args.shuffle,
        resize_height=args.resize_height, resize_width=args.resize_width,
        check_size=args.check_size, encoded=args.encoded, encode_type=args.encode_type,
        seed=args.seed, backend=backend)
    failed = summary["failed"]
    for path in failed[:10]:
        print(f"protonet: warning: could not read image {path}; skipped", file=sys.stderr)
    if len(failed) > 10:
        print(f"protonet: warning: ... and {len(failed) - 10} more unreadable images",
              file=sys.stderr)
    print(f"wrote {summary['count']} of {summary['lines']} images to {summary['db']}",
          file=sys.stderr)
    if summary["count"] == 0:
        raise ProtonetError(f"no image in {args.list} could be read under '{args.root}'; check "
                            "that ROOT + each listed path names an image file (ROOT is "
                            "prepended as is: end it with '/')")
    return 0


# -- compute-mean ------------------------------------------------------------------------------
def cmd_compute_mean(args) -> int:
    from ..data.imageset import compute_mean
    result = compute_mean(args.db, args.out, backend=_check_backend(args.backend))
    for c, value in enumerate(result["channel_means"]):
        print(f"mean_value channel [{c}]: {value:g}")
    target = f" to {args.out}" if args.out else ""
    print(f"mean of {result['count']} records, shape {list(result['shape'])}{target}",
          file=sys.stderr)
    return 0


def add_parsers(sub) -> None:
    """Add this module's subcommands to the ``protonet`` parser."""
    p = sub.add_parser(
        "data", help="prepare MNIST or Fashion-MNIST (or their siamese pairs) as Caffe's "
        "databases",
        description="Write the train and test sets as databases of Datum records, as Caffe's "
        "convert_mnist_data does (keys %08d, 1x28x28 uint8, label; LMDB unless --backend "
        "leveldb). The -siamese datasets are the pairs of Caffe's create_mnist_siamese.sh: each "
        "record holds two random images as a 2x28x28 Datum, label 1 when their classes agree "
        "(LevelDB unless --backend lmdb). The IDX files are taken "
        "from --from DIR, else from a system package (Debian: apt-get install "
        "dataset-fashion-mnist), else downloaded and checked against their MD5 sums.")
    p.add_argument("dataset", choices=["mnist", "fashion-mnist", "mnist-siamese",
                                       "fashion-mnist-siamese"])
    p.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="directory holding the four IDX files (gzipped or not)")
    p.add_argument("--out", default="data/mnist", metavar="DIR",
                   help="where the databases go (default: data/mnist, where models/lenet and "
                   "models/siamese read them)")
    p.add_argument("--no-download", action="store_true",
                   help="never download; fail if the files are not found locally")
    p.add_argument("--backend", default=None, help="lmdb or leveldb (default: lmdb; leveldb "
                   "for the -siamese datasets, as Caffe's example)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the siamese pairs (default 0)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser(
        "convert-imageset", help="image files listed in a text file -> LMDB/LevelDB of Datums",
        description="Caffe's convert_imageset: ROOT is prepended to each path in LIST (lines "
        "'path label', split at the last space); keys are %08d_<path>.")
    p.add_argument("root", metavar="ROOT", help="folder the listed paths are relative to "
                   "(prepended as is, so end it with '/')")
    p.add_argument("list", metavar="LIST", help="text file with one 'path label' per line")
    p.add_argument("db", metavar="DB", help="the database directory to create")
    _flag(p, "gray", "read images as grayscale")
    _flag(p, "shuffle", "shuffle the lines (reproducibly; see --seed)")
    p.add_argument("--backend", default="lmdb", help="lmdb (the default) or leveldb")
    _int_option(p, "resize_width", "width images are resized to (with --resize_height)")
    _int_option(p, "resize_height", "height images are resized to (with --resize_width)")
    _flag(p, "check_size", "check that all images have the same size")
    _flag(p, "encoded", "store the encoded image files (JPEG/PNG bytes) instead of pixels")
    p.add_argument("--encode_type", "--encode-type", dest="encode_type", default="",
                   metavar="EXT", help="re-encode as this type ('png', 'jpg', ...); implies "
                   "--encoded")
    p.add_argument("--seed", type=int, default=0, help="random seed of --shuffle (default 0)")
    p.set_defaults(func=cmd_convert_imageset)

    p = sub.add_parser(
        "compute-mean", help="mean image of an LMDB or LevelDB, as a .binaryproto mean_file",
        description="Caffe's compute_image_mean: the per-pixel mean of every record, written "
        "as a BlobProto (1, C, H, W) for transform_param.mean_file.")
    p.add_argument("db", metavar="DB", help="LMDB or LevelDB of Datum records")
    p.add_argument("out", metavar="OUT.binaryproto", nargs="?",
                   help="where to write the mean (omit to only print per-channel means)")
    p.add_argument("--backend", default=None, help="lmdb or leveldb (default: whichever DB "
                   "is)")
    p.set_defaults(func=cmd_compute_mean)
