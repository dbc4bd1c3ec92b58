"""CLI subcommand ``draw``: a picture of a net, as Netscope and Caffe's draw_net make them.

    protonet draw models/lenet/lenet.prototxt lenet.svg
    protonet draw deploy.prototxt net.html               # hover a box for its details
    protonet draw train_val.prototxt net.png --phase TRAIN --input-shape data=64,3,227,227
    protonet draw deploy.prototxt net.pdf --rankdir LR
"""
from __future__ import annotations

import sys

from ..errors import ProtonetError


def cmd_draw(args) -> int:
    from ..cli import _stages
    from .draw import FORMATS, draw_to_file
    fmt = args.format or args.output.rsplit(".", 1)[-1].lower()
    if fmt not in FORMATS:
        raise ProtonetError(f"{args.output}: cannot tell the format from the extension; name "
                            f"the file .{', .'.join(FORMATS)} or give --format")
    drawing = draw_to_file(args.net, args.output, rankdir=args.rankdir, phase=args.phase,
                           level=args.level, stages=_stages(args),
                           input_shapes=dict(args.input_shape), lenient=args.lenient, fmt=fmt,
                           display_lrm=args.display_lrm)
    for note in drawing.notes:
        print(f"protonet: note: {note}", file=sys.stderr)
    layers = sum(len(n.layers) for n in drawing.nodes)
    print(f"wrote {args.output} ({fmt}, {layers} layers in {len(drawing.nodes)} boxes, "
          f"{drawing.width:.0f}x{drawing.height:.0f} px)", file=sys.stderr)
    return 0


def add_parsers(sub) -> None:
    """Add this module's subcommands to the ``protonet`` parser."""
    from ..cli import _shape_arg
    from .draw import FORMATS, RANKDIRS
    p = sub.add_parser(
        "draw", help="draw a net as SVG, PNG, PDF, DOT or an interactive HTML page",
        description="Draw a net the way Netscope does: one box per layer with its type, key "
        "parameters and top shapes, in-place layers folded into their producer's box. The "
        "format follows OUT's extension: .svg, .png, .pdf (matplotlib), .dot (Graphviz "
        "text) or .html (one self-contained page showing every layer's full definition, "
        "shapes and cost on hover; works offline).")
    p.add_argument("net", help="network definition (.prototxt)")
    p.add_argument("output", metavar="OUT", help="picture to write (.svg .png .pdf .dot .html)")
    p.add_argument("--rankdir", type=str.upper, choices=RANKDIRS, default="TB",
                   help="direction the net flows: TB (top to bottom, the default, as "
                   "Netscope), LR (as draw_net), BT, RL")
    p.add_argument("--phase", type=str.upper, choices=["TRAIN", "TEST", "ALL"], default="TEST",
                   help="layers of this phase (default TEST); ALL draws every layer, as "
                   "draw_net's default")
    p.add_argument("--level", type=int, default=0, help="net state level (default: 0)")
    p.add_argument("--stage", action="append", default=[],
                   help="net state stage; repeat for several (or comma-separate)")
    p.add_argument("--input-shape", action="append", default=[], type=_shape_arg,
                   metavar="TOP=N,C,H,W",
                   help="shape of a data layer's top, instead of reading its source "
                   "(repeatable)")
    p.add_argument("--format", type=str.lower, choices=FORMATS,
                   help="output format, when OUT's extension does not say")
    p.add_argument("--display-lrm", "--display_lrm", dest="display_lrm", action="store_true",
                   help="show each layer's learning-rate multipliers (as draw_net)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--lenient", dest="lenient", action="store_true", default=True,
                      help="accept Netscope's lenient dialect, warning on each dropped item "
                      "(default)")
    mode.add_argument("--strict", dest="lenient", action="store_false",
                      help="accept exactly what Caffe accepts")
    p.set_defaults(func=cmd_draw)
