"""Reports: a self-contained HTML page (inline SVG, opens offline) of a benchmark's results."""

from vlselect.report.html import jaccard_matrix, render_html, write_report

__all__ = ["jaccard_matrix", "render_html", "write_report"]
