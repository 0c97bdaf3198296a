"""A timeline as one self-contained HTML file: inline CSS and JavaScript, no network.

One row per actor (more when its calls overlap without nesting, and a row per
nesting level), a bar per call labelled with its method and coloured by actor
and outcome, arrows from a call to the calls made inside it, a time axis, a
tooltip with the call's id, duration and status, and zoom (wheel) and pan (drag).
Every string from the event file reaches the page as JSON data and is put into
the document with ``textContent``, never parsed as markup.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

from ._timeline import Bar, Timeline, call_args, track_title

# Colours of actors' bars (white text stays readable on each); host bars and outcomes have their own.
_PALETTE = ("#4e79a7", "#59a14f", "#b0598f", "#9c6b4e", "#3d8c87", "#7a6fc2", "#c0662b", "#5f7f2f")


def _ms(tl: Timeline, t: float) -> float:
    return round((t - tl.t0) * 1000, 4)


def page_data(tl: Timeline, source: str) -> dict[str, Any]:
    """What the page's script draws: rows top to bottom, bars, flows and instants (times in ms)."""
    rows: list[dict[str, Any]] = []
    row_of: dict[tuple[int, int], int] = {}
    depth: dict[tuple[int, int], int] = {}
    for b in tl.bars:
        k = (id(b.track), b.lane)
        depth[k] = max(depth.get(k, 0), b.depth)
    colors: dict[int, str] = {}
    for r in tl.runtimes:
        if len(tl.runtimes) > 1:
            rows.append({"kind": "runtime", "label": f"runtime, host pid {r.host_pid}" if r.host_pid else r.key})
        for t in r.tracks:
            colors[id(t)] = "#5b6478" if t.kind == "host" else _PALETTE[len(colors) % len(_PALETTE)]
            for lane in range(t.lanes):
                row_of[(id(t), lane)] = len(rows)
                sub = {"host": "your program's awaits", "resident": "host-resident named actor",
                       "actor": "actor process", "zygote": "prepared processes actors fork from"}[t.kind]
                rows.append({"kind": "lane", "label": track_title(t) if lane == 0 else "", "sub": sub if lane == 0
                             else "", "levels": depth.get((id(t), lane), 0) + 1, "track": len(colors) - 1,
                             "hostTrack": t.kind == "host", "first": lane == 0})
    index = {id(b): i for i, b in enumerate(tl.bars)}

    callee = {id(b.call): i for i, b in enumerate(tl.bars) if not b.caller_side}

    def bar(b: Bar) -> dict[str, Any]:
        parent = b.call.parent
        return {"row": row_of[(id(b.track), b.lane)], "depth": b.depth, "s": _ms(tl, b.start), "e": _ms(tl, b.end),
                "name": b.name, "status": b.call.status, "caller": b.caller_side, "color": colors[id(b.track)],
                "parent": None if parent is None or b.caller_side else callee.get(id(parent)),
                "args": call_args(b)}

    calls = [b for b in tl.bars if not b.caller_side]
    return {
        "source": source,
        "span_ms": _ms(tl, tl.t1),
        "summary": {"calls": len(calls), "actors": sum(1 for r in tl.runtimes for t in r.tracks
                                                            if t.kind not in ("host", "zygote")),
                    **{s: sum(1 for b in calls if b.call.status == s) for s in ("failed", "cancelled", "unfinished")},
                    "skipped": tl.stats.malformed + tl.stats.skipped},
        "rows": rows,
        "bars": [bar(b) for b in tl.bars],
        "flows": [{"a": index[id(f.src)], "b": index[id(f.dst)], "t": _ms(tl, f.ts_src)} for f in tl.flows],
        "instants": [{"row": row_of[(id(i.track), 0)], "t": _ms(tl, i.ts), "name": i.event,
                      "args": {k: v for k, v in i.fields.items() if k not in ("logger", "runtime", "level")}}
                     for i in tl.instants],
        "startups": [{"row": row_of[(id(s.track), 0)], "s": _ms(tl, s.start), "e": _ms(tl, s.end), "pid": s.pid,
                      "what": "starting zygote" if s.track.kind == "zygote" else "starting actor process"}
                     for s in tl.startups],
    }


def to_html(tl: Timeline, source: str = "") -> str:
    """The timeline as a self-contained HTML page."""
    data = json.dumps(page_data(tl, os.path.basename(source)), separators=(",", ":"), default=str)
    # Inside <script>, "</" could end the element early: JSON allows "<" escaped as \u003c.
    data = data.replace("<", "\\u003c")
    title = f"actorbox timeline: {os.path.basename(source)}" if source else "actorbox timeline"
    return _TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  :root { --label-w: 250px; --row-h: 24px; --ink: #1f2430; --muted: #687083; --line: #e3e6ec; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
         color: var(--ink); background: #f6f7f9; }
  header { padding: 14px 20px 10px; background: #fff; border-bottom: 1px solid var(--line); }
  h1 { font-size: 17px; margin: 0 0 4px; font-weight: 600; }
  .meta { color: var(--muted); }
  .meta b { color: var(--ink); font-weight: 600; }
  .meta .bad { color: #b3261e; }
  .legend { display: flex; flex-wrap: wrap; gap: 16px; margin-top: 8px; color: var(--muted); align-items: center; }
  .legend span { display: inline-flex; align-items: center; gap: 6px; }
  .sw { width: 22px; height: 12px; border-radius: 3px; display: inline-block; }
  .sw.unf { background: repeating-linear-gradient(135deg, #4e79a7 0 4px, #9fb8d6 4px 8px); }
  .sw.starting { background: repeating-linear-gradient(135deg, #d9dde5 0 3px, #f3f4f7 3px 6px);
                 border: 1px solid #c3c8d3; }
  section { margin: 0 20px 24px; background: #fff; border: 1px solid var(--line); border-radius: 6px; }
  h2 { font-size: 14px; margin: 0; padding: 10px 14px; border-bottom: 1px solid var(--line); font-weight: 600; }
  h2 .meta { font-weight: 400; margin-left: 8px; }
  table { border-collapse: collapse; width: 100%; font-size: 12.5px; }
  th { text-align: left; font-weight: 600; color: var(--muted); padding: 6px 14px;
       border-bottom: 1px solid var(--line); }
  td { padding: 3px 14px; border-bottom: 1px solid #f0f1f4; white-space: nowrap; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
  tbody tr { cursor: pointer; }
  tbody tr:hover { background: #f3f6fb; }
  tbody tr.sel { background: #e4ecf8; }
  .dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 6px; }
  .nest { color: #9aa1b0; }
  .st-failed { color: #b3261e; font-weight: 600; } .st-cancelled { color: #6b707b; }
  .st-unfinished { color: #a05a00; font-weight: 600; }
  .controls { margin-left: auto; display: flex; gap: 6px; align-items: center; }
  button { font: inherit; border: 1px solid #c9ceda; background: #fff; border-radius: 5px; padding: 2px 10px;
           cursor: pointer; color: var(--ink); }
  button:hover { background: #eef1f6; }
  #chart { position: relative; margin: 12px 20px 20px; background: #fff; border: 1px solid var(--line);
           border-radius: 6px; overflow: hidden; }
  svg { display: block; user-select: none; }
  svg.grab { cursor: grab; } svg.grabbing { cursor: grabbing; }
  .lbl { font-size: 12.5px; font-weight: 600; fill: var(--ink); }
  .sub { font-size: 11px; fill: var(--muted); }
  .tick { font-size: 11px; fill: var(--muted); }
  .bartext { font-size: 11.5px; fill: #fff; pointer-events: none; }
  .bartext.dark { fill: var(--ink); }
  #tip { position: fixed; pointer-events: none; background: #1f2430; color: #fff; padding: 7px 10px;
         border-radius: 5px; font-size: 12px; line-height: 1.45; box-shadow: 0 3px 12px rgba(0,0,0,.25);
         display: none; max-width: 420px; z-index: 10; }
  #tip b { font-size: 13px; }
  #tip .k { color: #aab3c5; display: inline-block; min-width: 92px; }
  .empty { padding: 30px; color: var(--muted); }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <div class="meta" id="meta"></div>
  <div class="legend" id="legend">
    <span><i class="sw" style="background:#4e79a7"></i>call (colour of its actor)</span>
    <span><i class="sw" style="background:#e3e7ef;border:1px solid #5b6478"></i>host awaiting a call</span>
    <span><i class="sw" style="background:#c62828"></i>failed</span>
    <span><i class="sw" style="background:#b5b9c2;border:1px dashed #6b707b"></i>cancelled</span>
    <span><i class="sw unf"></i>never finished</span>
    <span><i class="sw starting"></i>actor process starting</span>
    <span><svg width="30" height="14"><path d="M2 2 C2 8 24 8 24 12" stroke="#39404f" fill="none"
      stroke-width="1.4"/><path d="M20 8 L24 14 L28 8 z" fill="#39404f"/></svg>call made inside a call</span>
    <div class="controls"><span class="meta" id="hint"></span><span class="meta">wheel: zoom &middot; drag: pan</span>
      <button id="zin" title="zoom in">+</button><button id="zout" title="zoom out">&minus;</button>
      <button id="fit" title="show everything">fit</button></div>
  </div>
</header>
<div id="chart"></div>
<section id="calls"><h2>Calls <span class="meta">in call order, calls made inside a call indented under it;
  click one to zoom to it</span></h2>
  <table><thead><tr><th class="num">began</th><th class="num">took</th><th>call</th><th class="num">id</th>
  <th>status</th><th class="num">queued</th></tr></thead><tbody id="rows"></tbody></table></section>
<div id="tip"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const LABEL_W = 250, ROW_H = 24, AXIS_H = 30, PAD_R = 24, RT_H = 24, CHAR_W = 6.6;
  const chart = document.getElementById("chart"), tip = document.getElementById("tip");

  function el(tag, attrs, parent, text) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmtDur(ms) {
    if (ms >= 1000) return (ms / 1000).toFixed(ms >= 10000 ? 1 : 2) + " s";
    if (ms >= 10) return ms.toFixed(1) + " ms";
    if (ms >= 1) return ms.toFixed(2) + " ms";
    return (ms * 1000).toFixed(0) + " \u00b5s";
  }
  function fmtAt(ms) {  // a moment, as time since the first event, at a precision that suits the whole span
    if (D.span_ms >= 100000) return (ms / 1000).toFixed(2) + " s";
    if (D.span_ms >= 1000) return (ms / 1000).toFixed(4) + " s";
    return ms.toFixed(D.span_ms >= 10 ? 2 : 3) + " ms";
  }
  function fmtTick(ms, step) {
    if (step >= 1000) return (ms / 1000).toFixed(step >= 10000 ? 0 : (step >= 1000 && step % 1000 ? 1 : 0)) + " s";
    const dec = step >= 1 ? 0 : Math.min(3, Math.ceil(-Math.log10(step)));
    return ms.toFixed(dec) + " ms";
  }
  function niceStep(range, target) {
    const raw = range / target, p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
    return 10 * p;
  }
  function fit(text, px) {
    const n = Math.floor((px - 8) / CHAR_W);
    if (n < 2) return "";
    return text.length <= n ? text : text.slice(0, n - 1) + "\u2026";
  }

  // -- header ----------------------------------------------------------------------------
  const S = D.summary;
  document.getElementById("title").textContent = "actorbox timeline" + (D.source ? " \u2014 " + D.source : "");
  const meta = document.getElementById("meta");
  function part(label, value, bad) {
    const b = document.createElement("b"); b.textContent = value; if (bad) b.className = "bad";
    meta.appendChild(b); meta.appendChild(document.createTextNode(" " + label + "   "));
  }
  part("calls", S.calls); part("actors", S.actors); part("total", fmtDur(D.span_ms));
  if (S.failed) part("failed", S.failed, true);
  if (S.cancelled) part("cancelled", S.cancelled);
  if (S.unfinished) part("never finished", S.unfinished, true);
  if (S.skipped) part("lines skipped", S.skipped);

  if (!D.bars.length && !D.startups.length) {
    const p = document.createElement("div"); p.className = "empty";
    p.textContent = "No calls in this event file. Was the Runtime run with ACTORBOX_TRACE_FILE set?";
    chart.appendChild(p); return;
  }

  // -- layout: rows top to bottom ----------------------------------------------------------
  // Lanes are equally spaced; a track's last lane grows when its name needs more room.
  const rowY = [], rowH = [], TRACK_MIN_H = 46;
  let y = AXIS_H;
  D.rows.forEach((r, i) => {
    let h = r.kind === "runtime" ? RT_H : r.levels * ROW_H + 8;
    const next = D.rows[i + 1];
    if (r.kind === "lane" && (!next || next.first || next.kind !== "lane")) {
      let top = i;
      while (!D.rows[top].first) top--;
      h = Math.max(h, TRACK_MIN_H - (top === i ? 0 : y - rowY[top]));
    }
    rowY.push(y); rowH.push(h); y += h;
  });
  const H = y + 10;
  let view = [0, Math.max(D.span_ms, 0.001)];
  const pad = (view[1] - view[0]) * 0.02;
  view = [view[0] - pad, view[1] + pad];
  const full = view.slice();

  const svg = el("svg", {height: H, class: "grab"}, chart);
  const defs = el("defs", {}, svg);
  const mk = el("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
                           orient: "auto-start-reverse"}, defs);
  el("path", {d: "M0,0 L10,5 L0,10 z", fill: "#39404f"}, mk);
  const pat = el("pattern", {id: "starting", width: 6, height: 6, patternUnits: "userSpaceOnUse",
                             patternTransform: "rotate(45)"}, defs);
  el("rect", {width: 6, height: 6, fill: "#f3f4f7"}, pat);
  el("rect", {width: 3, height: 6, fill: "#d9dde5"}, pat);
  const clip = el("clipPath", {id: "plot"}, defs);
  const clipRect = el("rect", {x: LABEL_W, y: 0, height: H}, clip);

  const gBack = el("g", {}, svg), gPlot = el("g", {"clip-path": "url(#plot)"}, svg), gLabels = el("g", {}, svg);
  let W = 0;
  const xOf = t => LABEL_W + (t - view[0]) / (view[1] - view[0]) * (W - LABEL_W - PAD_R);

  function barBox(b) {
    const x0 = xOf(b.s), x1 = xOf(b.e);
    return {x: x0, w: Math.max(x1 - x0, 2), y: rowY[b.row] + 4 + b.depth * ROW_H, h: ROW_H - 4};
  }

  function draw() {
    W = Math.max(chart.clientWidth, 600);
    svg.setAttribute("width", W);
    clipRect.setAttribute("width", W - LABEL_W - PAD_R + 1);
    for (const g of [gBack, gPlot, gLabels]) while (g.firstChild) g.removeChild(g.firstChild);

    // row backgrounds, separators and labels
    let band = -1, lastTrack = null;
    D.rows.forEach((r, i) => {
      if (r.kind === "runtime") {
        el("rect", {x: 0, y: rowY[i], width: W, height: rowH[i], fill: "#eceff4"}, gBack);
        el("text", {x: 12, y: rowY[i] + 16, class: "lbl"}, gLabels, r.label);
        return;
      }
      if (r.track !== lastTrack) { band++; lastTrack = r.track; }
      el("rect", {x: 0, y: rowY[i], width: W, height: rowH[i], fill: band % 2 ? "#fafbfc" : "#ffffff"}, gBack);
      if (r.first) {
        el("line", {x1: 0, x2: W, y1: rowY[i], y2: rowY[i], stroke: "#e3e6ec"}, gBack);
        el("rect", {x: 12, y: rowY[i] + 8, width: 4, height: 28, rx: 2, fill: trackColor(i)}, gLabels);
        el("text", {x: 24, y: rowY[i] + 20, class: "lbl"}, gLabels, fit(r.label, LABEL_W - 30));
        el("text", {x: 24, y: rowY[i] + 34, class: "sub"}, gLabels, r.sub);
      }
    });
    el("line", {x1: LABEL_W, x2: LABEL_W, y1: 0, y2: H, stroke: "#d5d9e2"}, gBack);

    // time axis and grid
    const span = view[1] - view[0], step = niceStep(span, Math.max(4, (W - LABEL_W) / 110));
    el("rect", {x: 0, y: 0, width: W, height: AXIS_H, fill: "#fff"}, gBack);
    el("text", {x: 12, y: 19, class: "sub"}, gLabels, "time since first event");
    for (let t = Math.ceil(view[0] / step) * step; t <= view[1]; t += step) {
      const x = xOf(t);
      if (x < LABEL_W - 0.5) continue;
      el("line", {x1: x, x2: x, y1: AXIS_H - 6, y2: H, stroke: "#eef0f4"}, gBack);
      el("line", {x1: x, x2: x, y1: AXIS_H - 6, y2: AXIS_H, stroke: "#9aa1b0"}, gBack);
      el("text", {x: x + 3, y: 17, class: "tick"}, gBack, fmtTick(Math.abs(t) < step / 1e6 ? 0 : t, step));
    }
    el("line", {x1: LABEL_W, x2: W, y1: AXIS_H, y2: AXIS_H, stroke: "#9aa1b0"}, gBack);

    // actor processes starting
    for (const s of D.startups) {
      const x0 = xOf(s.s), x1 = xOf(s.e), w = Math.max(x1 - x0, 2), yy = rowY[s.row] + 4;
      const r = el("rect", {x: x0, y: yy, width: w, height: ROW_H - 4, rx: 3, fill: "url(#starting)",
                            stroke: "#c3c8d3"}, gPlot);
      hover(r, () => [[s.what, ""], ["pid", s.pid], ["took", fmtDur(s.e - s.s)]]);
      const t = fit("start", w);
      if (t) el("text", {x: x0 + 5, y: yy + 14, class: "bartext dark"}, gPlot, t);
    }

    // bars
    let thin = 0;
    D.bars.forEach((b, i) => {
      const bx = barBox(b);
      if (bx.x > W || bx.x + bx.w < LABEL_W) return;
      if (!b.caller && xOf(b.e) - xOf(b.s) < 3) thin++;
      let fill = b.color, stroke = "none", dash = null, dark = false;
      if (b.caller) { fill = "#e3e7ef"; stroke = "#5b6478"; dark = true; }
      if (b.status === "failed") { fill = "#c62828"; stroke = "#8e1b1b"; dark = false; }
      else if (b.status === "cancelled") { fill = "#b5b9c2"; stroke = "#6b707b"; dash = "3 2"; dark = true; }
      const r = el("rect", {x: bx.x, y: bx.y, width: bx.w, height: bx.h, rx: 3, fill: fill, stroke: stroke},
                   gPlot);
      if (dash) r.setAttribute("stroke-dasharray", dash);
      if (b.status === "unfinished") {
        r.setAttribute("fill", "url(#" + unfinishedPattern(b.caller ? "#e3e7ef" : fill) + ")");
      }
      if (i === selected) { r.setAttribute("stroke", "#111"); r.setAttribute("stroke-width", 2.5); }
      hover(r, () => tipRows(b));
      r.addEventListener("click", () => select(i, false));
      const room = Math.min(bx.x + bx.w, W) - Math.max(bx.x, LABEL_W);
      const mark = b.status === "failed" ? " \u2717" : "";
      // A host bar names actor.method; when that does not fit, the method alone says more than a stub.
      let label = fit(b.name + mark, room);
      if (b.caller && label.endsWith("\u2026")) label = fit(b.args.method + mark, room);
      if (label) el("text", {x: Math.max(bx.x, LABEL_W) + 5, y: bx.y + 14, class: "bartext" + (dark ? " dark" : "")},
                    gPlot, label);
    });

    document.getElementById("hint").textContent = thin ? thin + " of the calls shown are too short to see " +
      "at this zoom (zoom in, or click one in the list below) \u00b7 " : "";

    // flows: from where the call was made in its parent to the start of its own bar
    for (const f of D.flows) {
      const a = barBox(D.bars[f.a]), b = barBox(D.bars[f.b]);
      const x1 = xOf(f.t), x2 = b.x, down = b.y > a.y;
      const y1 = down ? a.y + a.h : a.y, y2 = down ? b.y : b.y + b.h;
      const dx = Math.max(Math.abs(x2 - x1) * 0.5, 18);
      el("circle", {cx: x1, cy: y1, r: 2.2, fill: "#39404f"}, gPlot);
      el("path", {d: `M${x1},${y1} C${x1},${(y1 + y2) / 2} ${x2 - dx * 0},${(y1 + y2) / 2} ${x2},${y2}`,
                  stroke: "#39404f", "stroke-width": 1.3, fill: "none", opacity: 0.75,
                  "marker-end": "url(#arrow)"}, gPlot);
    }

    // lifecycle instants
    for (const it of D.instants) {
      if (it.name === "actor.started" || it.name === "zygote.ready") continue;  // the end of its start bar
      const x = xOf(it.t), yy = rowY[it.row] + ROW_H / 2 + 2;
      const bad = ["actor.died", "actor.killed", "actor.restart_failed", "zygote.unavailable", "zygote.fork_failed",
                   "zygote.misbehaved"].includes(it.name);
      const m = el("path", {d: `M${x},${yy - 7} L${x + 6},${yy} L${x},${yy + 7} L${x - 6},${yy} z`,
                            fill: bad ? "#c62828" : "#39404f", stroke: "#fff"}, gPlot);
      hover(m, () => [[it.name, ""]].concat(Object.entries(it.args).filter(e => e[0] !== "actor")
                                              .map(e => [e[0], String(e[1])])));
    }
  }

  const patterns = {};
  function unfinishedPattern(color) {
    if (!(color in patterns)) {
      const id = "unf" + Object.keys(patterns).length;
      const p = el("pattern", {id: id, width: 8, height: 8, patternUnits: "userSpaceOnUse",
                               patternTransform: "rotate(45)"}, defs);
      el("rect", {width: 8, height: 8, fill: color}, p);
      el("rect", {width: 4, height: 8, fill: "#ffffff", opacity: 0.45}, p);
      patterns[color] = id;
    }
    return patterns[color];
  }

  const colorByRow = {};
  D.bars.forEach(b => { if (!b.caller && !(b.row in colorByRow)) colorByRow[b.row] = b.color; });
  function trackColor(row) {
    const r = D.rows[row];
    if (r.hostTrack) return "#5b6478";
    for (let i = row; i < D.rows.length && D.rows[i].track === r.track; i++) if (i in colorByRow) return colorByRow[i];
    return "#b5b9c2";
  }

  function tipRows(b) {
    const a = b.args, rows = [[b.caller ? "host awaits " + b.name : a.actor + "." + a.method, ""]];
    rows.push(["call id", a.call_id]);
    if (a.parent_call_id != null) rows.push(["made in call", a.parent_call_id]);
    if (a.caller) rows.push(["caller", a.caller]);
    rows.push(["status", a.status + (a.failure ? " (" + a.failure + ")" : "")]);
    rows.push([b.caller ? "waited" : "ran for",
               fmtDur(a.duration_ms) + (a.unfinished ? " (until the last event)" : "")]);
    if (a.queued_ms != null) rows.push(["queued", fmtDur(a.queued_ms)]);
    rows.push(["began at", fmtAt(b.s)]);
    return rows;
  }
  function hover(node, rows) {
    node.addEventListener("mousemove", ev => {
      tip.textContent = "";
      rows().forEach((r, i) => {
        const line = document.createElement("div");
        if (i === 0) { const t = document.createElement("b"); t.textContent = r[0]; line.appendChild(t); }
        else {
          const k = document.createElement("span"); k.className = "k"; k.textContent = r[0];
          line.appendChild(k); line.appendChild(document.createTextNode(String(r[1])));
        }
        tip.appendChild(line);
      });
      tip.style.display = "block";
      const w = tip.offsetWidth, h = tip.offsetHeight;
      tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - w - 8) + "px";
      tip.style.top = Math.min(ev.clientY + 14, window.innerHeight - h - 8) + "px";
    });
    node.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  }

  // -- zoom and pan ------------------------------------------------------------------------
  function tAt(px) { return view[0] + (px - LABEL_W) / (W - LABEL_W - PAD_R) * (view[1] - view[0]); }
  function setView(v) {
    view = v;
    draw();
    // The view is in the address, so a link (or a reload) shows the same part.
    const h = v === full ? "" : "#from=" + +v[0].toFixed(4) + "&to=" + +v[1].toFixed(4);
    try { history.replaceState(null, "", h || location.pathname + location.search); } catch (e) { /* file: */ }
  }
  function zoom(factor, px) {
    const c = tAt(px === undefined ? LABEL_W + (W - LABEL_W - PAD_R) / 2 : px);
    const w = Math.max((view[1] - view[0]) * factor, 0.001);
    setView([c - (c - view[0]) * factor, c - (c - view[0]) * factor + w]);
  }
  svg.addEventListener("wheel", ev => {
    ev.preventDefault();
    zoom(ev.deltaY > 0 ? 1.25 : 0.8, ev.offsetX);
  }, {passive: false});
  let drag = null;
  svg.addEventListener("mousedown", ev => {
    drag = {x: ev.clientX, v: view.slice()};
    svg.setAttribute("class", "grabbing");
  });
  window.addEventListener("mouseup", () => { drag = null; svg.setAttribute("class", "grab"); });
  window.addEventListener("mousemove", ev => {
    if (!drag) return;
    const dt = (ev.clientX - drag.x) / (W - LABEL_W - PAD_R) * (drag.v[1] - drag.v[0]);
    if (dt) setView([drag.v[0] - dt, drag.v[1] - dt]);
  });
  svg.addEventListener("dblclick", () => setView(full));
  document.getElementById("zin").onclick = () => zoom(0.5);
  document.getElementById("zout").onclick = () => zoom(2);
  document.getElementById("fit").onclick = () => setView(full);
  window.addEventListener("resize", draw);

  // -- the calls as a tree: each call, then the calls made inside it -------------------------
  let selected = -1;
  const kids = {}, roots = [], order = [], rowOf = {};
  D.bars.forEach((b, i) => {
    if (b.caller) return;
    if (b.parent == null) roots.push(i); else (kids[b.parent] = kids[b.parent] || []).push(i);
  });
  const stack = [[roots, 0]];
  roots.sort((a, b) => D.bars[b].s - D.bars[a].s);
  for (let item; (item = stack.pop());) {  // depth-first without recursion (chains can be long)
    const [list, depth] = item;
    if (!list.length) continue;
    const i = list.pop();
    stack.push([list, depth]);
    order.push([i, depth]);
    const ks = (kids[i] || []).slice().sort((a, b) => D.bars[b].s - D.bars[a].s);
    stack.push([ks, depth + 1]);
  }
  const tbody = document.getElementById("rows"), MAX_ROWS = 5000;
  function td(tr, text, cls) { const c = document.createElement("td"); c.textContent = text;
    if (cls) c.className = cls; tr.appendChild(c); return c; }
  order.slice(0, MAX_ROWS).forEach(([i, depth]) => {
    const b = D.bars[i], a = b.args, tr = document.createElement("tr");
    rowOf[i] = tr;
    td(tr, fmtAt(b.s), "num");
    td(tr, fmtDur(a.duration_ms), "num");
    const c = td(tr, "");
    c.style.paddingLeft = 14 + depth * 20 + "px";
    if (depth) { const n = document.createElement("span"); n.className = "nest"; n.textContent = "\u21b3 ";
      c.appendChild(n); }
    const dot = document.createElement("span"); dot.className = "dot"; dot.style.background = b.color;
    c.appendChild(dot);
    c.appendChild(document.createTextNode((depth ? "" : (a.caller || "host") + " \u2192 ") + a.actor + "." + a.method));
    td(tr, a.call_id, "num");
    td(tr, a.status + (a.failure ? " (" + a.failure + ")" : ""), "st-" + a.status);
    td(tr, a.queued_ms == null ? "" : fmtDur(a.queued_ms), "num");
    tr.addEventListener("click", () => select(i, true));
    tbody.appendChild(tr);
  });
  if (order.length > MAX_ROWS) {
    const tr = document.createElement("tr"); td(tr, "");
    td(tr, "").textContent = "\u2026 and " + (order.length - MAX_ROWS) + " more calls"; tbody.appendChild(tr);
  }
  function select(i, zoomTo) {
    if (rowOf[selected]) rowOf[selected].classList.remove("sel");
    selected = i;
    if (rowOf[i]) { rowOf[i].classList.add("sel"); if (!zoomTo) rowOf[i].scrollIntoView({block: "nearest"}); }
    if (zoomTo) {
      const b = D.bars[i], w = Math.max((b.e - b.s) * 1.8, 1), mid = (b.s + b.e) / 2;
      setView([mid - w / 2, mid + w / 2]);
      chart.scrollIntoView({block: "nearest"});
    } else draw();
  }

  const m = /from=([-0-9.e]+)&to=([-0-9.e]+)/.exec(location.hash);
  if (m && +m[2] > +m[1]) view = [+m[1], +m[2]];
  draw();
})();
</script>
</body>
</html>
"""
