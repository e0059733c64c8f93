"""The results table on the console (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_results(results: dict[str, Any], console: Console) -> None:
    """Relative performance per method and budget (with intervals), then per-set scores."""
    if not console.is_terminal and console.width < 160:
        console = Console(width=160)  # a log file or a pipe: no need to squeeze ten columns into 80
    rows = results["rows"]
    budgets = sorted({r["budget"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    t = Table(title="relative performance (% of the full-pool score)", title_justify="left")
    t.add_column("method")
    for b in budgets:
        t.add_column(f"{b * 100:g}%", justify="right")
    best = {b: max((r["relative_mean"] for r in rows if r["budget"] == b), default=None) for b in budgets}
    for m in methods:
        cells = []
        for b in budgets:
            r = next((r for r in rows if r["method"] == m and r["budget"] == b), None)
            if r is None:
                cells.append("–")
                continue
            txt = f"{r['relative_mean']:.1f}"
            if r.get("relative_low") is not None:
                txt += f" [{r['relative_low']:.1f}, {r['relative_high']:.1f}]"
            cells.append(f"[bold green]{txt}[/]" if r["relative_mean"] == best[b] else txt)
        t.add_row(m, *cells)
    console.print(t)
    zs = results.get("zero_shot")
    if zs:
        console.print(f"[dim]the base model without fine-tuning (zero-shot): {zs['relative']:.1f}% of the full pool "
                      "(what the scores above owe to no data at all)[/]")
    sets = results["sets"]
    counted = set(results.get("relative_sets") or sets)
    s = Table(title="scores per evaluation set (0-100; * = counted in the relative performance)", title_justify="left")
    s.add_column("method @ budget")
    for name in sets:
        s.add_column(name + ("*" if name in counted else ""), justify="right")
    ref = results["reference"]
    if results.get("chance"):
        s.add_row("[dim]chance (most common answer)[/]",
                  *[f"[dim]{results['chance'].get(x, float('nan')):.1f}[/]" for x in sets])
    s.add_row(f"[bold]{ref['label']}[/]", *[f"[bold]{ref['scores'].get(x, float('nan')):.1f}[/]" for x in sets])
    if zs:
        s.add_row("[dim]base model (zero-shot, 0%)[/]", *[f"[dim]{zs['scores'].get(x, float('nan')):.1f}[/]" for x in sets])
    for r in rows:
        s.add_row(f"{r['method']} @ {r['budget'] * 100:g}%", *[f"{r['scores'].get(x, float('nan')):.1f}" for x in sets])
    console.print(s)
    targets = results.get("targets") or []
    if targets:
        t2 = Table(title="targets", title_justify="left")
        t2.add_column("target")
        t2.add_column("met")
        t2.add_column("numbers")
        for x in targets:
            mark = {True: "[green]yes[/]", False: "[red]no[/]", None: "[dim]–[/]"}[x["met"]]
            t2.add_row(x["target"], mark, x["detail"])
        console.print(t2)


def print_worlds(combined: dict[str, Any], console: Console) -> None:
    """The mean over worlds (:func:`vlselect.bench.worlds.combine_worlds`): per method and budget the mean relative
    performance and each world's value, the full pool's learned sets per world, then the targets on the means."""
    if not console.is_terminal and console.width < 160:
        console = Console(width=160)
    rows, seeds = combined["rows"], combined["worlds"]
    budgets = sorted({r["budget"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    t = Table(title=f"relative performance (% of each world's full pool): mean of worlds {', '.join(map(str, seeds))} "
                    f"(each world's value in brackets)", title_justify="left")
    t.add_column("method")
    for b in budgets:
        t.add_column(f"{b * 100:g}%", justify="right")
    best = {b: max((r["relative_mean"] for r in rows if r["budget"] == b), default=None) for b in budgets}
    for m in methods:
        cells = []
        for b in budgets:
            r = next((r for r in rows if r["method"] == m and r["budget"] == b), None)
            if r is None:
                cells.append("–")
                continue
            txt = f"{r['relative_mean']:.1f} ({' / '.join(f'{v:.1f}' for v in r['relative_per_world'])})"
            cells.append(f"[bold green]{txt}[/]" if r["relative_mean"] == best[b] else txt)
        t.add_row(m, *cells)
    console.print(t)
    zs = combined.get("zero_shot")
    if zs:
        console.print(f"[dim]the base model without fine-tuning (zero-shot): {zs['relative']:.1f}% of the full pool "
                      f"({' / '.join(f'{v:.1f}' for v in zs['relative_per_world'])})[/]")
    for s, learned, folder in zip(seeds, combined["learned_per_world"], combined["world_folders"]):
        console.print(f"world {s}: the full pool learns {len(learned)} sets ({', '.join(learned)}); its table, "
                      f"intervals over seeds and report: {folder}/")
    for note in combined.get("notes", []):
        if not note.startswith("Target"):
            console.print(f"[dim]{note}[/]")
    targets = combined.get("targets") or []
    if targets:
        t2 = Table(title="targets, on the mean of the worlds", title_justify="left")
        t2.add_column("target")
        t2.add_column("met")
        t2.add_column("numbers")
        for x in targets:
            mark = {True: "[green]yes[/]", False: "[red]no[/]", None: "[dim]–[/]"}[x["met"]]
            t2.add_row(x["target"], mark, x["detail"])
        console.print(t2)
