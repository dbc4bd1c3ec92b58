"""Renderers of a net drawing (:mod:`protonet.tools.draw`): SVG written directly, PNG and
PDF through matplotlib's canvases, DOT text, and a self-contained HTML page.
"""
from __future__ import annotations

import html
import json
import math

from ..errors import ProtonetError
from .draw import (FONT_FAMILY, PAD_Y, STYLES, Drawing, Node,  # noqa: F401
                   _shape_text, family_colors)


# -- SVG --------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _path_d(path) -> str:
    parts = []
    for cmd in path:
        if cmd[0] == "M" or cmd[0] == "L":
            parts.append(f"{cmd[0]}{_fmt(cmd[1][0])},{_fmt(cmd[1][1])}")
        else:
            parts.append("C" + " ".join(f"{_fmt(p[0])},{_fmt(p[1])}" for p in cmd[1:]))
    return " ".join(parts)


def _node_title(drawing: Drawing, i: int) -> str:
    d = drawing.details[i]
    out = []
    for e in d["layers"]:
        out.append(f"{e['name']} ({e['type']})")
    for t, s in d["tops"]:
        out.append(f"{t}: {_shape_text(s) if s is not None else '?'}")
    first = d["layers"][0] if d["layers"] else {}
    params = sum(e["params"] or 0 for e in d["layers"])
    macc = sum(e["macc"] or 0 for e in d["layers"])
    if first.get("params") is not None:
        out.append(f"params {params:,} · MACC {_human(macc)}")
    return "\n".join(out)


def _human(n: float) -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.0f}{suffix}" if suffix == "" else f"{n:.2f}{suffix}"
        n /= 1000.0
    return str(n)


def _node_text_rows(nd: Node):
    """(text, style, baseline y relative to the box top) for each line of a box."""
    y = PAD_Y
    rows = []
    for text, style in nd.lines:
        size, _, _, _, lh = STYLES[style]
        rows.append((text, style, y + lh / 2 + size * 0.36))
        y += lh
    return rows


def to_svg(drawing: Drawing, for_html: bool = False) -> str:
    """The drawing as a standalone SVG document (or, ``for_html``, an inline ``<svg>``)."""
    w, h = math.ceil(drawing.width), math.ceil(drawing.height)
    esc = html.escape
    out = []
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}" font-family="{FONT_FAMILY}" id="net-svg">')
    if not for_html:
        out.append('<?xml version="1.0" encoding="UTF-8"?>')
    out.append(head)
    out.append(f"<title>{esc(drawing.name)}</title>")
    out.append(f'<rect width="{w}" height="{h}" fill="#ffffff"/>')
    out.append('<g class="edges" fill="none" stroke="#7a7a7a" stroke-width="1.3">')
    for k, e in enumerate(drawing.edges):
        shapes = [f"{b}: {_shape_text(drawing.shapes[b])}" if b in drawing.shapes else b
                  for b in e.blobs]
        pts = " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in e.arrow)
        out.append(f'<g class="edge" data-e="{k}"><title>{esc(", ".join(shapes))}</title>'
                   f'<path d="{_path_d(e.path)}"/>'
                   f'<polygon points="{pts}" fill="#7a7a7a" stroke="none"/></g>')
    out.append("</g>")
    out.append('<g class="nodes">')
    for i, nd in enumerate(drawing.nodes):
        fill, stroke = ("#ffffff", "#8a8a8a") if nd.implicit else family_colors(nd.type)
        x0, y0 = nd.x - nd.width / 2, nd.y - nd.height / 2
        dash = ' stroke-dasharray="4 3"' if nd.implicit else ""
        out.append(f'<g class="node" data-i="{i}"><title>{esc(_node_title(drawing, i))}</title>'
                   f'<rect x="{_fmt(x0)}" y="{_fmt(y0)}" width="{_fmt(nd.width)}" '
                   f'height="{_fmt(nd.height)}" rx="6" ry="6" fill="{fill}" stroke="{stroke}" '
                   f'stroke-width="1.2"{dash}/>')
        for text, style, by in _node_text_rows(nd):
            size, bold, italic, color, _ = STYLES[style]
            attrs = f'font-size="{_fmt(size)}" fill="{color}"'
            if bold:
                attrs += ' font-weight="bold"'
            if italic:
                attrs += ' font-style="italic"'
            out.append(f'<text x="{_fmt(nd.x)}" y="{_fmt(y0 + by)}" text-anchor="middle" '
                       f'{attrs}>{esc(text)}</text>')
        out.append("</g>")
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


# -- PNG / PDF through matplotlib -------------------------------------------------------------
PNG_SCALE = 2.0          # pixels per SVG px
PNG_MAX_PIXELS = 48e6    # scale down beyond this many pixels (memory and time)
PNG_MAX_SIDE = 32000


def to_matplotlib(drawing: Drawing, fmt: str) -> bytes:
    """PNG or PDF bytes, drawn with matplotlib's non-interactive canvases."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.backends.backend_pdf import FigureCanvasPdf
        from matplotlib.figure import Figure
        from matplotlib.patches import FancyBboxPatch, PathPatch, Polygon
        from matplotlib.path import Path
    except ImportError:
        raise ProtonetError(f"drawing .{fmt} needs matplotlib: pip install 'protonet[draw]' "
                            "(.svg, .html and .dot need nothing)") from None
    import io
    w, h = max(drawing.width, 1.0), max(drawing.height, 1.0)
    # one drawing unit = one point; fonts given in px map to the same number of points
    fig = Figure(figsize=(w / 72.0, h / 72.0), dpi=72)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    codes = {"M": Path.MOVETO, "L": Path.LINETO}
    for e in drawing.edges:
        verts, kinds = [], []
        for cmd in e.path:
            if cmd[0] in codes:
                verts.append(cmd[1])
                kinds.append(codes[cmd[0]])
            else:
                verts += list(cmd[1:])
                kinds += [Path.CURVE4] * 3
        ax.add_patch(PathPatch(Path(verts, kinds), fill=False, edgecolor="#7a7a7a",
                               linewidth=1.2, capstyle="round"))
        ax.add_patch(Polygon(e.arrow, closed=True, facecolor="#7a7a7a", edgecolor="none"))
    for nd in drawing.nodes:
        fill, stroke = ("#ffffff", "#8a8a8a") if nd.implicit else family_colors(nd.type)
        x0, y0 = nd.x - nd.width / 2, nd.y - nd.height / 2
        ax.add_patch(FancyBboxPatch((x0, y0), nd.width, nd.height,
                                    boxstyle="round,pad=0,rounding_size=6", facecolor=fill,
                                    edgecolor=stroke, linewidth=1.0,
                                    linestyle="--" if nd.implicit else "-"))
        for text, style, by in _node_text_rows(nd):
            size, bold, italic, color, _ = STYLES[style]
            ax.text(nd.x, y0 + by, text, fontsize=size, color=color, ha="center",
                    va="baseline", family="DejaVu Sans", fontweight="bold" if bold else "normal",
                    fontstyle="italic" if italic else "normal")
    buf = io.BytesIO()
    if fmt == "png":
        scale = min(PNG_SCALE, math.sqrt(PNG_MAX_PIXELS / (w * h)), PNG_MAX_SIDE / max(w, h))
        FigureCanvasAgg(fig)
        fig.savefig(buf, format="png", dpi=72 * scale, facecolor="white")
    else:
        FigureCanvasPdf(fig)
        fig.savefig(buf, format="pdf", facecolor="white",
                    metadata={"Title": drawing.name, "Creator": "protonet draw"})
    return buf.getvalue()


# -- DOT --------------------------------------------------------------------------------------
def to_dot(drawing: Drawing) -> str:
    """Graphviz DOT text with the same boxes (HTML-like labels), colours and edges."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def lab(s: str) -> str:
        return html.escape(s, quote=True)

    out = [f"digraph {q(drawing.name)} {{",
           f"  rankdir={drawing.rankdir};",
           '  graph [ranksep=0.35, nodesep=0.25, fontname="DejaVu Sans"];',
           '  node [shape=box, style="rounded,filled", fontname="DejaVu Sans", fontsize=10, '
           'margin="0.12,0.06"];',
           '  edge [color="#7a7a7a", arrowsize=0.6];']
    for nd in drawing.nodes:
        fill, stroke = ("#ffffff", "#8a8a8a") if nd.implicit else family_colors(nd.type)
        rows = []
        for text, style in nd.lines:
            size, bold, italic, color, _ = STYLES[style]
            t = lab(text)
            if bold:
                t = f"<B>{t}</B>"
            if italic:
                t = f"<I>{t}</I>"
            rows.append(f'<FONT POINT-SIZE="{_fmt(size)}" COLOR="{color}">{t}</FONT>')
        style = ', style="rounded,dashed"' if nd.implicit else ""
        out.append(f"  {q(nd.key)} [label=<{'<BR/>'.join(rows)}>, fillcolor={q(fill)}, "
                   f"color={q(stroke)}{style}];")
    for e in drawing.edges:
        out.append(f"  {q(drawing.nodes[e.src].key)} -> {q(drawing.nodes[e.dst].key)} "
                   f"[tooltip={q(', '.join(e.blobs))}];")
    out.append("}")
    return "\n".join(out) + "\n"


# -- HTML -------------------------------------------------------------------------------------
_CSS = """
*{box-sizing:border-box}
body{margin:0;font:13px/1.4 DejaVu Sans,Verdana,Geneva,sans-serif;color:#222;background:#f6f7f9}
header{position:sticky;top:0;z-index:2;display:flex;gap:18px;align-items:center;flex-wrap:wrap;
 padding:8px 14px;background:#fff;border-bottom:1px solid #ddd}
header h1{font-size:15px;margin:0}
header .stat{color:#555}
header button{font:inherit;padding:2px 9px;border:1px solid #bbb;border-radius:4px;
 background:#fafafa;cursor:pointer}
header .note{color:#9a5b00}
#graph{padding:10px;overflow:auto}
#graph svg{background:#fff;box-shadow:0 1px 3px rgba(0,0,0,.12)}
g.node{cursor:default}
g.node:hover rect,g.node.on rect{stroke:#111;stroke-width:2.2}
g.edge:hover path{stroke:#222;stroke-width:2.2}
#tip{position:fixed;z-index:3;display:none;max-width:560px;max-height:80vh;overflow:auto;
 background:#fff;border:1px solid #999;border-radius:6px;box-shadow:0 4px 14px rgba(0,0,0,.25);
 padding:8px 10px;pointer-events:none}
#tip h2{font-size:13px;margin:0 0 4px}
#tip table{border-collapse:collapse;margin:2px 0 6px}
#tip td{padding:1px 10px 1px 0;vertical-align:top}
#tip td:first-child{color:#666}
#tip pre{margin:4px 0 8px;padding:6px;background:#f4f4f4;border-radius:4px;font:11px/1.35 monospace;
 white-space:pre-wrap}
"""

_JS = r"""
(function(){
var data=JSON.parse(document.getElementById('net-data').textContent);
var tip=document.getElementById('tip'),svg=document.getElementById('net-svg');
var W=+svg.getAttribute('width'),H=+svg.getAttribute('height'),zoom=1;
function human(n){var s=['','K','M','G','T'],i=0;while(Math.abs(n)>=1000&&i<4){n/=1000;i++}
 return i?n.toFixed(2)+s[i]:String(Math.round(n))}
function bytes(n){var s=['B','KiB','MiB','GiB'],i=0;while(n>=1024&&i<3){n/=1024;i++}
 return i?n.toFixed(1)+' '+s[i]:n+' B'}
function shape(s){return s===null?'?':(s.length?s.map(function(d){return d===null?'?':d})
 .join('\u00d7'):'scalar')}
function el(tag,text,parent){var e=document.createElement(tag);
 if(text!==undefined)e.textContent=text;if(parent)parent.appendChild(e);return e}
function row(t,k,v){var r=el('tr',undefined,t);el('td',k,r);el('td',v,r)}
function show(i,ev){
 var d=data.nodes[i];tip.textContent='';
 d.layers.forEach(function(l){
  el('h2',l.name+' ('+l.type+')',tip);var t=el('table',undefined,tip);
  if(l.bottoms.length)row(t,'bottoms',l.bottoms.join(', '));
  l.tops.forEach(function(p){row(t,'top '+p[0],shape(p[1]))});
  if(l.param_shapes){function q(v,f){return v===null?'?':f(v)}
   row(t,'parameters',q(l.params,function(v){return v.toLocaleString()})+(l.param_shapes&&
     l.param_shapes.length?'  ('+l.param_shapes.map(shape).join(', ')+')':''));
   row(t,'MACC',q(l.macc,human));row(t,'activations',q(l.activation_bytes,bytes));}
  el('pre',l.text,tip);});
 if(d.implicit){el('h2','blob '+d.tops[0][0],tip);el('div','shape '+shape(d.tops[0][1])+
  ' (no layer produces it)',tip)}
 tip.style.display='block';move(ev)}
function move(ev){var pad=14,w=tip.offsetWidth,h=tip.offsetHeight,x=ev.clientX+pad,y=ev.clientY+pad;
 if(x+w>innerWidth)x=Math.max(0,ev.clientX-w-pad);if(y+h>innerHeight)y=Math.max(0,innerHeight-h);
 tip.style.left=x+'px';tip.style.top=y+'px'}
Array.prototype.forEach.call(document.querySelectorAll('g.node'),function(g){
 var i=+g.getAttribute('data-i');var t=g.querySelector('title');if(t)t.parentNode.removeChild(t);
 g.addEventListener('mouseenter',function(ev){g.classList.add('on');show(i,ev)});
 g.addEventListener('mousemove',move);
 g.addEventListener('mouseleave',function(){g.classList.remove('on');tip.style.display='none'})});
function setZoom(z){zoom=Math.max(0.05,Math.min(4,z));svg.setAttribute('width',W*zoom);
 svg.setAttribute('height',H*zoom);
 document.getElementById('zl').textContent=Math.round(zoom*100)+'%'}
document.getElementById('zin').onclick=function(){setZoom(zoom*1.25)};
document.getElementById('zout').onclick=function(){setZoom(zoom/1.25)};
document.getElementById('zfit').onclick=function(){var g=document.getElementById('graph');
 setZoom(Math.min((g.clientWidth-24)/W,(innerHeight-70)/H,1))};
document.getElementById('z1').onclick=function(){setZoom(1)};
})();
"""


def to_html(drawing: Drawing) -> str:
    """One self-contained page: the SVG inline, hover details from inline JSON, no network."""
    esc = html.escape
    data = {"name": drawing.name, "nodes": drawing.details, "totals": drawing.totals}
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/").replace("<!--",
                                                                              "<\\!--")
    layers = sum(len(d["layers"]) for d in drawing.details)
    stats = [f"{layers} layers in {len(drawing.nodes)} boxes"]
    known = "≥ " if drawing.totals.get("partial") else ""  # the totals leave out what is ?
    if drawing.totals.get("params") is not None:
        stats.append(f"{known}{drawing.totals['params']:,} parameters")
    if drawing.totals.get("macc") is not None:
        stats.append(f"{known}{_human(drawing.totals['macc'])} MACC")
    notes = "".join(f'<span class="note">{esc(n)}</span>' for n in drawing.notes)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(drawing.name)} — protonet draw</title>"
        f"<style>{_CSS}</style></head><body>\n"
        f"<header><h1>{esc(drawing.name)}</h1>"
        + "".join(f'<span class="stat">{esc(s)}</span>' for s in stats)
        + '<span><button id="zout" title="zoom out">−</button> <span id="zl">100%</span> '
        '<button id="zin" title="zoom in">+</button> <button id="z1">1:1</button> '
        '<button id="zfit">fit</button></span>'
        '<span class="stat">hover a box for its full definition</span>'
        f"{notes}</header>\n"
        f'<div id="graph">{to_svg(drawing, for_html=True)}</div>\n<div id="tip"></div>\n'
        f'<script type="application/json" id="net-data">{blob}</script>\n'
        f"<script>{_JS}</script>\n</body></html>\n")
