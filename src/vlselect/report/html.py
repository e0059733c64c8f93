"""A self-contained HTML report (inline CSS and SVG, no script, no network) of a benchmark's results.

The input is a plain dict (what ``vlselect bench`` saves as ``results.json``)::

    {
      "title": str, "created": str, "command": str,
      "sets": [str, ...],                                   # evaluation sets, in display order
      "reference": {"label": str, "scores": {set: float}},  # the full-pool run that Rel. divides by
      "rows": [{"method": str, "budget": float,             # one row per method x budget, seeds aggregated
                "n_seeds": int, "relative_mean": float,
                "relative_low": float | None, "relative_high": float | None,   # 95% interval, if n_seeds > 1
                "scores": {set: float}}],
      "composition": {"pool": {task: int}, "subsets": {"METHOD@BUDGET": {task: int}}},
      "costs": [{"stage": str, "seconds": float, "peak_rss_mb": float | None}],
      "overlap": {"budget": float, "methods": [str], "jaccard": [[float]]},
      "chance": {set: float}, "relative_sets": [str],          # chance row; sets the relative mean uses
      "notes": [str]
    }

Every key but ``rows`` is optional; a missing section is left out of the page.
Relative performance is the unweighted mean over sets of (score / reference score) x 100 (docs/methods.md).
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

# A colour-blind-safe qualitative palette (Okabe-Ito), then Tableau and Kelly extras: 20 distinct colours, more
# than the built-in methods (13) or the world's tasks; beyond it, colours are spread around the hue circle.
PALETTE = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
    "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF", "#1F3A93", "#9E0142", "#5AAE61", "#F781BF",
    "#B15928", "#6A3D9A", "#FDBF6F", "#00441B",
]

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:22px 32px}
header h1{margin:0 0 4px 0;font-size:22px}
header p{margin:0;color:#b9c0cf;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:20px 32px 48px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:18px 22px;margin:18px 0}
h2{font-size:17px;margin:0 0 12px 0}
p.hint{color:#5b6477;font-size:13px;margin:4px 0 12px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{padding:5px 8px;border-bottom:1px solid #e7e9ee;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
th{background:#f0f2f5;font-weight:600}
td.best{font-weight:700;color:#0a6b3d}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
code{background:#f0f2f5;padding:1px 5px;border-radius:3px;font-size:12px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:18px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def colours(names: Iterable[str]) -> dict[str, str]:
    """A stable colour per name, in first-seen order."""
    out: dict[str, str] = {}
    for name in names:
        if name not in out:
            k = len(out)
            # past the palette: golden-angle hues, alternating lightness, so no two names share a colour
            out[name] = PALETTE[k] if k < len(PALETTE) else \
                f"hsl({(k - len(PALETTE)) * 137.508 % 360:.1f},65%,{38 + 14 * (k % 2)}%)"
    return out


def line_chart_svg(
    series: Mapping[str, Sequence[tuple[float, float, float | None, float | None]]],
    *,
    colour: Mapping[str, str],
    x_label: str,
    y_label: str,
    width: int = 760,
    height: int = 340,
    reference: float | None = 100.0,
) -> str:
    """Lines of (x, y, low, high) points per series, with interval whiskers and a dashed reference line; a point
    without a finite y (a relative score with no full-pool reference) is left out, as in the tables' "–"."""
    series = {k: kept for k, v in series.items()
              if (kept := [p for p in v if p[1] is not None and math.isfinite(p[1])])}
    pts = [p for s in series.values() for p in s]
    if not pts:
        return ""
    xs = sorted({p[0] for p in pts})
    ys = [p[1] for p in pts] + [v for p in pts for v in (p[2], p[3]) if v is not None]
    if reference is not None:
        ys.append(reference)
    y_ticks = _nice_ticks(min(ys), max(ys))
    y0, y1 = y_ticks[0], y_ticks[-1]
    longest = max((len(str(n)) for n in series), default=0)
    ml, mr, mt, mb = 56, 18 + 6 * longest, 14, 44  # the right margin holds each line's label
    pw, ph = width - ml - mr, height - mt - mb

    def sx(x: float) -> float:  # budgets: equal spacing reads better than a linear axis for 5/10/20/40 %
        return ml + (xs.index(x) + 0.5) * pw / len(xs)

    def sy(y: float) -> float:
        return mt + ph - (y - y0) / (y1 - y0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{_e(y_label)} against {_e(x_label)}" font-size="11" font-family="sans-serif">']
    for t in y_ticks:
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#e7e9ee"/>'
                   f'<text x="{ml - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" fill="#5b6477">{t:g}</text>')
    for x in xs:
        out.append(f'<text x="{sx(x):.1f}" y="{mt + ph + 16}" text-anchor="middle" fill="#5b6477">{_e(_pct(x))}</text>')
    if reference is not None and y0 <= reference <= y1:
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{sy(reference):.1f}" y2="{sy(reference):.1f}" '
                   f'stroke="#1d2330" stroke-dasharray="5 4"/>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle" fill="#1d2330">{_e(x_label)}</text>')
    out.append(f'<text transform="translate(14 {mt + ph / 2}) rotate(-90)" text-anchor="middle" '
               f'fill="#1d2330">{_e(y_label)}</text>')
    # Each line is labelled at its right end (labels pushed apart so that none overlap) and is one <g>: hovering a
    # line or its label shows it on top and dims the others (CSS only, no script).
    ends = sorted(((sy(sorted(s)[-1][1]), name) for name, s in series.items() if s), reverse=True)
    label_y: dict[str, float] = {}
    below = math.inf
    for y, name in ends:  # from the bottom up: each label at its line's end, or 12 px above the label below
        below = label_y[name] = min(y + 4, below - 12)
    if label_y and min(label_y.values()) < mt + 8:  # too many to fit: shift the whole column down
        shift = mt + 8 - min(label_y.values())
        label_y = {k: v + shift for k, v in label_y.items()}
    out.append("<style>.series:hover path{stroke-width:4}svg:has(.series:hover) .series:not(:hover){opacity:.2}"
               "</style>")
    for name, s in series.items():
        c = colour[name]
        s = sorted(s)
        out.append(f'<g class="series"><title>{_e(name)}</title>')
        if s:
            x_end, y_end = sx(s[-1][0]), sy(s[-1][1])
            out.append(f'<line x1="{x_end + 5:.1f}" x2="{ml + pw + 4:.1f}" y1="{y_end:.1f}" y2="{label_y[name] - 4:.1f}" '
                       f'stroke="{c}" stroke-width="0.8"/><text x="{ml + pw + 6:.1f}" y="{label_y[name]:.1f}" '
                       f'fill="{c}">{_e(name)}</text>')
        if len(s) > 1:
            d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y, _, _) in enumerate(s))
            out.append(f'<path d="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, y, lo, hi in s:
            if lo is not None and hi is not None:
                out.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{sy(lo):.1f}" y2="{sy(hi):.1f}" '
                           f'stroke="{c}" stroke-width="1.5"/>')
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{c}"><title>{_e(name)} @ '
                       f'{_e(_pct(x))}: {y:.1f}</title></circle>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def stacked_bars_svg(rows: Mapping[str, Mapping[str, float]], *, colour: Mapping[str, str], width: int = 560) -> str:
    """One horizontal 100% bar per row, split by category share (e.g. task composition of each subset)."""
    if not rows:
        return ""
    bar_h, gap, ml = 16, 6, 150
    height = len(rows) * (bar_h + gap) + 8
    pw = width - ml - 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
           f'font-family="sans-serif">']
    for i, (label, counts) in enumerate(rows.items()):
        y = 4 + i * (bar_h + gap)
        total = sum(counts.values()) or 1
        out.append(f'<text x="{ml - 6}" y="{y + 12}" text-anchor="end" fill="#1d2330">{_e(label)}</text>')
        x = float(ml)
        for cat, v in counts.items():
            w = v / total * pw
            if w <= 0:
                continue
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour[cat]}">'
                       f'<title>{_e(cat)}: {v:g} ({v / total:.1%})</title></rect>')
            x += w
    out.append("</svg>")
    return "".join(out)


def heatmap_svg(labels: Sequence[str], matrix: Sequence[Sequence[float]], *, cell: int = 34) -> str:
    """A square heatmap of values in [0, 1] (e.g. Jaccard overlap between methods' subsets)."""
    if not labels:
        return ""
    longest = max(len(str(lab)) for lab in labels)
    ml, mt = 16 + 6 * longest, 16 + 6 * longest  # room for the row labels and the slanted column headers
    n = len(labels)
    # a header slanted at 60 degrees reaches about 0.5 x its length to the right of its column
    width, height = ml + n * cell + 10 + int(3.2 * longest), mt + n * cell + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
           f'font-family="sans-serif">']
    for i, lab in enumerate(labels):
        out.append(f'<text x="{ml - 6}" y="{mt + i * cell + cell / 2 + 4}" text-anchor="end">{_e(lab)}</text>')
        out.append(f'<text transform="translate({ml + i * cell + cell / 2 + 4} {mt - 6}) rotate(-60)">{_e(lab)}</text>')
    for i in range(n):
        for j in range(n):
            v = float(matrix[i][j])
            light = 96 - 56 * max(0.0, min(1.0, v))
            fill = f"hsl(205,70%,{light:.0f}%)"
            txt = "#fff" if light < 62 else "#1d2330"
            x, y = ml + j * cell, mt + i * cell
            out.append(f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{fill}"/>'
                       f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" fill="{txt}">'
                       f'{v:.2f}</text>')
    out.append("</svg>")
    return "".join(out)


def _pct(x: float) -> str:
    return f"{x * 100:g}%" if x <= 1 else f"{x:g}"


def _legend(colour: Mapping[str, str]) -> str:
    return '<div class="legend">' + "".join(
        f'<span><i style="background:{c}"></i>{_e(n)}</span>' for n, c in colour.items()) + "</div>"


def render_html(results: Mapping[str, Any]) -> str:
    """The report page as a string (see the module docstring for the input)."""
    rows = list(results.get("rows", []))
    sets = list(results.get("sets") or sorted({s for r in rows for s in r.get("scores", {})}))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    budgets = sorted({r["budget"] for r in rows})
    col = colours(methods)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(results.get('title', 'vlselect report'))}"
             f"</title><style>{CSS}</style></head><body>"]
    parts.append(f"<header><h1>{_e(results.get('title', 'vlselect report'))}</h1><p>{_e(results.get('created', ''))}"
                 + (f" · <code style='background:#2c3446;color:#dfe4ee'>{_e(results['command'])}</code>"
                    if results.get("command") else "") + "</p></header><main>")

    # 1. relative performance against budget
    ref = results.get("reference") or {}
    series = {m: [(r["budget"], r["relative_mean"], r.get("relative_low"), r.get("relative_high"))
                  for r in rows if r["method"] == m] for m in methods}
    parts.append("<section><h2>Relative performance against budget</h2><p class='hint'>Mean over evaluation sets of "
                 "(score ÷ full-pool score) × 100; whiskers are 95% intervals over seeds; the dashed line is the "
                 f"reference ({_e(ref.get('label', 'full pool'))}) at 100."
                 + (f" The base model without fine-tuning (zero-shot) scores {_fmt(results['zero_shot']['relative'])}: "
                    "what the table owes to no data at all." if results.get("zero_shot") else "") + "</p>")
    parts.append(_legend(col) + line_chart_svg(series, colour=col, x_label="budget (share of the pool)",
                                               y_label="relative performance (%)"))
    # table method x budget
    best = {b: max((r["relative_mean"] for r in rows if r["budget"] == b), default=None) for b in budgets}
    parts.append("<table><tr><th>method</th>" + "".join(f"<th>{_e(_pct(b))}</th>" for b in budgets) + "</tr>")
    for m in methods:
        cells = []
        for b in budgets:
            r = next((r for r in rows if r["method"] == m and r["budget"] == b), None)
            if r is None:
                cells.append("<td>–</td>")
                continue
            ci = (f" <small>[{_fmt(r.get('relative_low'))}, {_fmt(r.get('relative_high'))}]</small>"
                  if r.get("relative_low") is not None else "")
            cls = " class='best'" if best[b] is not None and r["relative_mean"] == best[b] else ""
            cells.append(f"<td{cls}>{_fmt(r['relative_mean'])}{ci}</td>")
        parts.append(f"<tr><td><i style='color:{col[m]}'>■</i> {_e(m)}</td>{''.join(cells)}</tr>")
    parts.append("</table></section>")

    # 2. per-set scores
    if sets:
        counted = set(results.get("relative_sets") or sets)
        parts.append("<section><h2>Scores per evaluation set</h2><p class='hint'>* counted in the relative "
                     "performance (the full pool learned it).</p><table><tr><th>method @ budget</th>"
                     + "".join(f"<th>{_e(s)}{'*' if s in counted else ''}</th>" for s in sets) + "</tr>")
        if results.get("chance"):
            ch = results["chance"]
            parts.append("<tr><td><i>chance (most common answer)</i></td>"
                         + "".join(f"<td><i>{_fmt(ch.get(s), 3)}</i></td>" for s in sets) + "</tr>")
        if ref.get("scores"):
            parts.append(f"<tr><td><b>{_e(ref.get('label', 'reference'))}</b></td>"
                         + "".join(f"<td><b>{_fmt(ref['scores'].get(s), 3)}</b></td>" for s in sets) + "</tr>")
        if results.get("zero_shot"):
            zs = results["zero_shot"]["scores"]
            parts.append("<tr><td><i>base model (zero-shot, 0%)</i></td>"
                         + "".join(f"<td><i>{_fmt(zs.get(s), 3)}</i></td>" for s in sets) + "</tr>")
        for r in rows:
            parts.append(f"<tr><td>{_e(r['method'])} @ {_e(_pct(r['budget']))}</td>"
                         + "".join(f"<td>{_fmt(r.get('scores', {}).get(s), 3)}</td>" for s in sets) + "</tr>")
        parts.append("</table></section>")

    # 3. composition
    comp = results.get("composition") or {}
    if comp.get("subsets"):
        tasks = list(dict.fromkeys(list(comp.get("pool", {})) + [t for c in comp["subsets"].values() for t in c]))
        tcol = colours(tasks)
        bars = {"pool": comp.get("pool", {})} if comp.get("pool") else {}
        bars.update(comp["subsets"])
        parts.append("<section><h2>Task composition: pool against each subset</h2><p class='hint'>Share of each "
                     "task in the subset; hover a segment for its count.</p>" + _legend(tcol)
                     + stacked_bars_svg({k: {t: v.get(t, 0) for t in tasks} for k, v in bars.items()}, colour=tcol)
                     + "</section>")

    # 4. costs and overlap side by side
    costs = results.get("costs") or []
    ov = results.get("overlap") or {}
    if costs or ov.get("methods"):
        parts.append("<div class='grid'>")
        if costs:
            parts.append("<section><h2>Cost per stage</h2><table><tr><th>stage</th><th>time (s)</th>"
                         "<th>peak memory (MB)</th></tr>" + "".join(
                             f"<tr><td>{_e(c['stage'])}</td><td>{_fmt(c.get('seconds'), 1)}</td>"
                             f"<td>{_fmt(c.get('peak_rss_mb'), 0)}</td></tr>" for c in costs) + "</table></section>")
        if ov.get("methods"):
            parts.append(f"<section><h2>Overlap between subsets at {_e(_pct(ov.get('budget', 0)))}</h2>"
                         "<p class='hint'>Jaccard index |A∩B| / |A∪B| of the selected rows.</p>"
                         + heatmap_svg(ov["methods"], ov["jaccard"]) + "</section>")
        parts.append("</div>")

    # 5. the bench's targets, each with its margin against the run's spread
    targets = results.get("targets") or []
    if targets:
        with_sd = any(t.get("sd") for t in targets)
        mark = {True: "yes", False: "no", None: "–"}

        def margin(t: Mapping[str, Any]) -> str:
            if not t.get("sd"):
                return ""
            return f"{t['margin']:+.1f} ± {2 * t['sd']:.1f}" + ("" if t.get("resolved") else " (within noise)")

        hint = ("<p class='hint'>margin: how far the number is on the met side of its threshold, ± 2 sd of a mean "
                "over the run's worlds x seeds; within noise, met or missed is the draw of the seeds and worlds.</p>"
                if with_sd else "")
        head = "<tr><th>target</th><th>met</th><th>numbers</th>" + ("<th>margin ± 2 sd</th>" if with_sd else "")
        body = "".join(f"<tr><td>{_e(t['target'])}</td><td>{mark[t.get('met')]}</td><td>{_e(t.get('detail', ''))}</td>"
                       + (f"<td>{_e(margin(t))}</td>" if with_sd else "") + "</tr>" for t in targets)
        parts.append(f"<section><h2>Targets</h2>{hint}<table>{head}</tr>{body}</table></section>")

    notes = results.get("notes") or []
    if notes:
        parts.append("<section><h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></section>")
    parts.append("</main></body></html>")
    return "".join(parts)


def write_report(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Render :func:`render_html` to ``path`` atomically and return the path."""
    from vlselect.artifact import atomic_write_text

    path = Path(path)
    atomic_write_text(path, render_html(results))  # shared permissions (0666 less the umask), as any output
    return path


def jaccard_matrix(subsets: Mapping[str, Iterable[int]]) -> tuple[list[str], list[list[float]]]:
    """Pairwise Jaccard overlap of index sets, for the report's overlap heatmap."""
    names = list(subsets)
    sets = [set(int(i) for i in subsets[n]) for n in names]
    mat = [[(len(a & b) / len(a | b)) if (a | b) else 1.0 for b in sets] for a in sets]
    return names, mat
