import os
import re

from vlselect.report import jaccard_matrix, render_html, write_report

RESULTS = {
    "title": "bench",
    "created": "2026-11-22",
    "command": "vlselect bench --quick",
    "sets": ["color", "count"],
    "reference": {"label": "full pool", "scores": {"color": 0.8, "count": 0.9}},
    "rows": [
        {"method": "random", "budget": 0.1, "n_seeds": 3, "relative_mean": 90.0, "relative_low": 85.0,
         "relative_high": 95.0, "scores": {"color": 0.7, "count": 0.84}},
        {"method": "random", "budget": 0.2, "n_seeds": 1, "relative_mean": 95.0, "scores": {"color": 0.75, "count": 0.87}},
        {"method": "coincide", "budget": 0.1, "n_seeds": 1, "relative_mean": 97.5, "scores": {"color": 0.8, "count": 0.85}},
    ],
    "composition": {"pool": {"a": 80, "b": 20}, "subsets": {"random@10%": {"a": 8, "b": 2}}},
    "costs": [{"stage": "features", "seconds": 12.5, "peak_rss_mb": 900}],
    "overlap": {"budget": 0.1, "methods": ["random", "coincide"], "jaccard": [[1, 0.25], [0.25, 1]]},
    "notes": ["a <note> & more"],
}


def test_jaccard_by_hand():
    names, m = jaccard_matrix({"a": [1, 2, 3], "b": [2, 3, 4, 5], "c": []})
    assert names == ["a", "b", "c"]
    assert m[0][1] == 2 / 5 and m[1][0] == 2 / 5 and m[0][0] == 1.0 and m[2][2] == 1.0 and m[0][2] == 0.0


def test_report_has_every_section_and_is_self_contained(tmp_path):
    page = render_html(RESULTS)
    for heading in ("Relative performance against budget", "Scores per evaluation set", "Task composition",
                    "Cost per stage", "Overlap between subsets at 10%", "Notes"):
        assert heading in page
    # offline: nothing fetched from anywhere
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    assert "<script" not in page
    # escaping
    assert "a &lt;note&gt; &amp; more" in page
    # the best cell at 10% is coincide's 97.5, with the interval shown for random
    assert "<td class='best'>97.5</td>" in page and "[85.0, 95.0]" in page
    # one point per (method, budget) row in the chart
    assert page.count("<circle") == 3
    out = write_report(RESULTS, tmp_path / "r" / "report.html")
    assert out.read_text(encoding="utf-8") == page
    umask = os.umask(0o022)
    try:
        again = write_report(RESULTS, tmp_path / "r2" / "report.html")
    finally:
        os.umask(umask)
    assert again.stat().st_mode & 0o777 == 0o644  # readable by others, as any file the user writes


def test_missing_sections_are_left_out():
    page = render_html({"rows": RESULTS["rows"]})
    assert "Cost per stage" not in page and "Task composition" not in page


def _browser():
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_a_headless_browser(tmp_path):
    """Screenshot test: the page opens offline in a headless browser and draws something (not a blank page)."""
    import subprocess

    import pytest
    from PIL import Image

    browser = _browser()
    if browser is None:
        pytest.skip("no headless Chromium/Chrome on this machine (apt install chromium to run this test)")
    page = write_report(RESULTS, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1600)
    colours = img.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50  # text, chart lines and the palette, not a blank or error page
    # the header band is the page's dark header colour (#1d2330), i.e. the CSS was applied
    r, g, b = img.getpixel((5, 5))
    assert (r, g, b) == (0x1D, 0x23, 0x30)


def _method_names():
    from vlselect.select import REGISTRY

    return sorted(REGISTRY)


def test_every_method_gets_a_distinct_colour():
    from vlselect.report.html import colours

    names = _method_names()
    assert len(names) >= 13
    col = colours(names)
    assert len(set(col.values())) == len(names)
    many = colours(f"m{i}" for i in range(60))  # past the palette too
    assert len(set(many.values())) == 60
    rows = [{"method": m, "budget": b, "n_seeds": 1, "relative_mean": 0.0, "scores": {}} for m in names
            for b in (0.1, 0.2)]
    page = render_html({"rows": rows})
    legend = dict((n, c) for c, n in re.findall(r'<span><i style="background:([^"]+)"></i>([^<]+)</span>', page))
    assert sorted(legend) == names and len(set(legend.values())) == len(names)


def test_line_labels_do_not_overlap_when_every_line_ends_at_zero():
    """13 methods at 0 at every budget: each line's direct label sits at least 12 px from the next, in the chart."""
    names = _method_names()
    rows = [{"method": m, "budget": b, "n_seeds": 1, "relative_mean": 0.0, "scores": {}} for m in names
            for b in (0.1, 0.2)]
    page = render_html({"rows": rows})
    svg = re.search(r'<svg[^>]*height="(\d+)"[^>]*aria-label="relative[^"]*"[^>]*>(.*?)</svg>', page, re.S)
    height, body = float(svg.group(1)), svg.group(2)
    ys = sorted(float(y) for y, n in re.findall(r'<text x="[\d.]+" y="([\d.]+)" fill="[^"]+">([^<]+)</text>', body)
                if n in names)
    assert len(ys) == len(names)
    assert all(b - a >= 12 - 1e-6 for a, b in zip(ys, ys[1:])) and ys[0] > 0 and ys[-1] <= height
    assert body.count('<g class="series">') == len(names)


def test_a_row_without_a_relative_score_is_a_dash_and_not_a_point():
    """No full-pool reference gives NaN relative scores (the bench's full-pool runs all failed): the page is still
    written, the table says "–" and the chart draws only the finite points (it used to raise ValueError)."""
    nan = float("nan")
    rows = [{"method": "random", "budget": 0.1, "n_seeds": 1, "relative_mean": nan, "scores": {}},
            {"method": "coincide", "budget": 0.1, "n_seeds": 1, "relative_mean": 80.0, "scores": {}},
            {"method": "coincide", "budget": 0.2, "n_seeds": 1, "relative_mean": 90.0, "scores": {}}]
    page = render_html({"rows": rows})
    svg = re.search(r'<svg[^>]*aria-label="relative[^"]*"[^>]*>(.*?)</svg>', page, re.S).group(1)
    assert svg.count('<g class="series">') == 1 and "–" in page and "nan" not in page.lower()
    only_nan = render_html({"rows": rows[:1]})
    assert "aria-label=\"relative" not in only_nan and "–" in only_nan


def test_bench_notes_for_the_quick_form_read_well():
    from vlselect.bench.run import BenchConfig, _notes

    text = " ".join(_notes(BenchConfig.quick(), {}))
    assert "[]" not in text and "survey.md" not in text
    assert "one training seed (0) at every budget" in text


def test_targets_section_shows_each_margin_and_whether_it_is_within_noise():
    targets = [{"target": "icons above random at 10%", "met": True, "detail": "84.0 vs 80.0", "margin": 4.0,
                "sd": 1.5, "resolved": True},
               {"target": "tive above random at 10%", "met": False, "detail": "79.0 vs 80.0", "margin": -1.0,
                "sd": 3.0, "resolved": False},
               {"target": "the full pool learns at least 7 evaluation sets", "met": False, "detail": "4 (a, b)"}]
    page = render_html({**RESULTS, "targets": targets})
    assert "<h2>Targets</h2>" in page
    assert "<td>+4.0 ± 3.0</td>" in page and "<td>-1.0 ± 6.0 (within noise)</td>" in page
    assert "<td>4 (a, b)</td><td></td>" in page  # no margin for a count of sets
    plain = render_html({**RESULTS, "targets": [{k: v for k, v in t.items() if k in ("target", "met", "detail")}
                                                  for t in targets]})
    assert "<h2>Targets</h2>" in plain and "margin ± 2 sd" not in plain  # no spread: no margin column
    assert "Targets" not in render_html(RESULTS)
