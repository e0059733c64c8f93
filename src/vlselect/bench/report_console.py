"""The results table on the console (rich)."""

from __future__ import annotations

from typing import Any, Callable

from rich.console import Console
from rich.table import Table


def _wide(console: Console) -> Console:
    """A log file or a pipe: no need to squeeze ten columns into 80."""
    return Console(width=160) if not console.is_terminal and console.width < 160 else console


def _relative_table(rows: list[dict], title: str, cell: Callable[[dict], str]) -> Table:
    """Method x budget, each cell ``cell(row)``, the best mean of each budget in bold green."""
    budgets = sorted({r["budget"] for r in rows})
    t = Table(title=title, title_justify="left")
    t.add_column("method")
    for b in budgets:
        t.add_column(f"{b * 100:g}%", justify="right")
    best = {b: max((r["relative_mean"] for r in rows if r["budget"] == b), default=None) for b in budgets}
    for m in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for b in budgets:
            r = next((r for r in rows if r["method"] == m and r["budget"] == b), None)
            txt = "–" if r is None else cell(r)
            cells.append(f"[bold green]{txt}[/]" if r is not None and r["relative_mean"] == best[b] else txt)
        t.add_row(m, *cells)
    return t


def _print_targets(targets: list[dict], title: str, console: Console, worlds: int = 1) -> None:
    """The targets (:func:`vlselect.bench.run.check_targets`), one row each, when there are any."""
    if not targets:
        return
    t = Table(title=title, title_justify="left")
    t.add_column("target")
    t.add_column("met")
    t.add_column("numbers")
    with_sd = any(x.get("sd") for x in targets)
    if with_sd:
        t.add_column("margin ± 2 sd")
    for x in targets:
        mark = {True: "[green]yes[/]", False: "[red]no[/]", None: "[dim]–[/]"}[x["met"]]
        cells = [x["target"], mark, x["detail"]]
        if with_sd:
            cells.append("" if not x.get("sd") else f"{x['margin']:+.1f} ± {2 * x['sd']:.1f}"
                         + ("" if x["resolved"] else " [dim](within noise)[/]"))
        t.add_row(*cells)
    console.print(t)
    if not with_sd:
        console.print("[dim]No margins: with one training seed per budget the run has no spread to set its verdicts "
                      "against (the full bench trains three seeds on two worlds and prints each margin ± 2 sd).[/]")
    if with_sd:
        console.print("[dim]margin: how far the number is on the met side of its threshold; sd: of a mean over the "
                      "run's worlds x seeds, from the spread between its training seeds"
                      + (" (one world: the spread between worlds, about as large here, is not in it)" if worlds == 1
                         else " and between its worlds") + ".[/]")


def print_results(results: dict[str, Any], console: Console) -> None:
    """Relative performance per method and budget (with intervals), then per-set scores."""
    console = _wide(console)
    rows = results["rows"]

    def cell(r: dict) -> str:
        txt = f"{r['relative_mean']:.1f}"
        if r.get("relative_low") is not None:
            txt += f" [{r['relative_low']:.1f}, {r['relative_high']:.1f}]"
        return txt

    console.print(_relative_table(rows, "relative performance (% of the full-pool score)", cell))
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
    _print_targets(results.get("targets") or [], "targets", console)


def print_worlds(combined: dict[str, Any], console: Console) -> None:
    """The mean over worlds (:func:`vlselect.bench.worlds.combine_worlds`): per method and budget the mean relative
    performance and each world's value, the full pool's learned sets per world, then the targets on the means."""
    console = _wide(console)
    rows, seeds = combined["rows"], combined["worlds"]
    title = (f"relative performance (% of each world's full pool): mean of worlds {', '.join(map(str, seeds))} "
             "(each world's value in brackets)")
    console.print(_relative_table(rows, title, lambda r: f"{r['relative_mean']:.1f} "
                                  f"({' / '.join(f'{v:.1f}' for v in r['relative_per_world'])})"))
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
    _print_targets(combined.get("targets") or [], "targets, on the mean of the worlds", console, len(combined["worlds"]))
