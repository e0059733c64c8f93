"""``vlselect pool``: read, describe and check instruction pools (thin over :mod:`vlselect.pool`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from vlselect.cli._pool_options import SKIP_INVALID, UNIQUE_IDS  # one definition for every pool-reading command

pool_app = typer.Typer(
    name="pool",
    help="Read, describe and check instruction pools (LLaVA JSON/JSONL, Vision-Flan, DataOptim).\n\n"
    "Example: vlselect pool stats world/pool.json",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

_FMT_HELP = "Force the format: json (LLaVA), jsonl, vision-flan or dataoptim. Detected when left out."
_TASK_HELP = "Take each record's task label from this field (e.g. 'dataset', as TIVE uses) instead of inferring it."


def _open(file: Path, fmt: Optional[str], task_field: Optional[str], unique_ids: bool, skip_invalid: bool,
          image_root: Optional[Path] = None):  # fmt: skip
    from vlselect.pool import open_pool

    return open_pool(file, fmt=fmt, task_field=task_field, unique_ids=unique_ids, skip_invalid=skip_invalid,
                     image_root=image_root, progress=True)  # fmt: skip


def _fmt_num(x: float | int) -> str:
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.1f}"


def print_stats(stats: dict[str, Any], console=None) -> None:
    """Render :func:`vlselect.pool.pool_stats` output as rich tables (used by ``pool stats`` and the demo)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    n = stats["records"]
    head = (f"[bold]{stats['path']}[/]  format [cyan]{stats['format']}[/]  {n:,} records  "
            f"fingerprint {stats['fingerprint'][:16]}…")  # fmt: skip
    console.print(head, highlight=False)
    if stats.get("files"):
        console.print(f"read {len(stats['files'])} files: " + ", ".join(Path(q).name for q in stats["files"]),
                      highlight=False, soft_wrap=True)
    t = Table(title="records per task", title_justify="left")
    t.add_column("task")
    t.add_column("records", justify="right")
    t.add_column("share", justify="right")
    for row in stats["tasks"]:
        t.add_row(row["task"], f"{row['count']:,}", f"{100 * row['share']:.2f}%")
    t.add_row("[dim]text-only (no image)[/]", f"{stats['text_only']['count']:,}",
              f"{100 * stats['text_only']['share']:.2f}%", style="dim")  # fmt: skip
    console.print(t)
    d = Table(title="per record", title_justify="left")
    d.add_column("")
    for col in ("min", "median", "p90", "max", "mean"):
        d.add_column(col, justify="right")
    for key, label in (("turns", "turns (answers)"), ("words", "words of text"), ("chars", "characters of text")):
        v = stats[key]
        d.add_row(label, *(_fmt_num(v[c]) for c in ("min", "median", "p90", "max", "mean")))
    console.print(d)
    skipped = stats.get("skipped_total", 0)
    extra = f"skipped records: {skipped:,}" + (f" {stats['skipped']}" if skipped else "")
    extra += f" · ids made unique: {stats['renamed_ids']:,} · task labels from: {stats['task_source']}"
    if "task_layout" in stats:
        extra += f" · task layout: {stats['task_layout']}"
    console.print(extra, highlight=False)
    if stats.get("task_note"):
        from rich.text import Text

        console.print(Text("task layout unknown: ", style="bold yellow") + Text(stats["task_note"]), soft_wrap=True)
    for reason, examples in stats.get("skipped_examples", {}).items():
        for ex in examples:
            console.print(f"  skipped ({reason}): {ex}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``pool`` command group to the main app."""
    app.add_typer(pool_app, name="pool")


@pool_app.command("stats")
def stats_cmd(
    file: Path = typer.Argument(..., help="Pool file (LLaVA JSON/JSONL, Vision-Flan JSON) or DataOptim data/ dir."),
    task_field: Optional[str] = typer.Option(None, "--task-field", help=_TASK_HELP),
    fmt: Optional[str] = typer.Option(None, "--format", help=_FMT_HELP),
    unique_ids: bool = UNIQUE_IDS,
    skip_invalid: bool = SKIP_INVALID,
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables."),
) -> None:
    """Count and share per task, text-only share, turns and text length (min/median/p90/max) of a pool.

    One streaming pass: a 1 M-record JSONL needs well under 2 GB.

    Skipped records and renamed ids are always reported. Exit code 2 on a bad file (the message names the record).

    Example: vlselect pool stats world/pool.json --json
    """
    from vlselect.pool import pool_stats

    pool = _open(file, fmt, task_field, unique_ids, skip_invalid)
    stats = pool_stats(pool)
    if len(pool.files) > 1:  # a DataOptim data/ directory: say which files were read
        stats["files"] = [str(q) for q in pool.files]
    if pool.skipped_examples:
        stats["skipped_examples"] = pool.skipped_examples
    if as_json:
        import orjson

        typer.echo(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode())
    else:
        print_stats(stats)


@pool_app.command("check")
def check_cmd(
    file: Path = typer.Argument(..., help="Pool file (LLaVA JSON/JSONL, Vision-Flan JSON) or DataOptim data/ dir."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder the paths are relative to "
                                          "(LLaVA's --image_folder). Default: the pool file's folder, or its images/ subfolder "
                                          "when the paths resolve only there."),  # fmt: skip
    fmt: Optional[str] = typer.Option(None, "--format", help=_FMT_HELP),
    unique_ids: bool = UNIQUE_IDS,
    skip_invalid: bool = SKIP_INVALID,
    max_examples: int = typer.Option(10, "--max-examples", min=0, help="Examples shown per kind of problem."),
    model: Optional[Path] = typer.Option(None, "--model", help="Also put every image through this model's "
                                         "processor (as features/train do); count the images it rejects."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Find missing, undecodable (also truncated) or, with --model, processor-rejected images: counts and first
    examples; the scan goes on past problems.

    Exit code: 0 when every image exists and decodes, 1 when problems were found.

    Exit code 2 when the pool file itself is bad or the image folder does not exist. LLaVA-665K: --images
    ./playground/data.

    Example: vlselect pool check world/pool.json
    """
    from vlselect.errors import PoolError
    from vlselect.pool import check_images

    if images is not None and not images.is_dir():
        raise PoolError(f"image folder not found: {images} (give the folder the pool's image paths are relative "
                        "to, LLaVA's --image_folder)")  # fmt: skip
    pool = _open(file, fmt, None, unique_ids, skip_invalid, image_root=images)
    report = check_images(pool, images, max_examples=max_examples, progress=True, model=model)
    report["skipped"] = dict(pool.skipped)
    if as_json:
        import orjson

        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        from rich.console import Console

        con = Console()
        con.print(f"[bold]{report['path']}[/]  images under {report['image_root']}", highlight=False)
        con.print(f"records {report['records']:,} · with an image {report['records_with_image']:,} · image "
                  f"references {report['image_refs']:,} ({report['unique_images']:,} distinct)", highlight=False)  # fmt: skip
        colour = "green" if report["ok"] else "red"
        rej = f" · rejected by the processor {report['rejected']:,}" if model is not None else ""
        con.print(f"[{colour}]missing {report['missing']:,} · unreadable {report['unreadable']:,}{rej} · records "
                  f"with a problem {report['records_with_problems']:,}[/]", highlight=False)  # fmt: skip
        for kind in ("missing", "unreadable", "rejected"):
            for ex in report["examples"][kind]:
                err = f" ({ex['error']})" if "error" in ex else ""
                con.print(f"  {kind}: row {ex['row']} id {ex['id']!r}: {ex['path']}{err}", highlight=False,
                          markup=False)
        if pool.skipped:
            con.print(f"skipped records: {dict(pool.skipped)}", highlight=False)
    if not report["ok"]:
        raise typer.Exit(code=1)


@pool_app.command("subset")
def subset_cmd(
    file: Path = typer.Argument(..., help="Pool file or DataOptim data/ directory."),
    ids: Path = typer.Option(..., "--ids", help="DataOptim-style id list: one id per line."),
    out: Path = typer.Option(..., "--out", help="Output LLaVA JSON (records copied byte-exact, in id-list order)."),
    fmt: Optional[str] = typer.Option(None, "--format", help=_FMT_HELP),
    unique_ids: bool = UNIQUE_IDS,
    skip_invalid: bool = SKIP_INVALID,
) -> None:
    """Write the records named by an id list as LLaVA JSON (DataOptim's ids → training JSON step).

    Ids are looked up in a global index over all files (not by id prefix); repeats are written again.

    An unknown id is an error that names it and its line. DataOptim: pass its data/ directory as FILE.

    Example: vlselect pool subset world/pool.json --ids sel/coincide/frac0.2/ids.txt --out train.json
    """
    from vlselect.pool import read_dataoptim_ids, write_llava_subset

    pool = _open(file, fmt, None, unique_ids, skip_invalid)
    rows = pool.indices_of(read_dataoptim_ids(ids), source=ids)
    write_llava_subset(pool, rows, out)
    typer.echo(f"wrote {len(rows):,} records to {out}")


@pool_app.command("tasks")
def tasks_cmd(
    file: Path = typer.Argument(..., help="Pool file (LLaVA JSON/JSONL, Vision-Flan JSON) or DataOptim data/ dir."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSON list: one task label per pool row."),
    task_field: Optional[str] = typer.Option(None, "--task-field", help=_TASK_HELP),
    fmt: Optional[str] = typer.Option(None, "--format", help=_FMT_HELP),
    unique_ids: bool = UNIQUE_IDS,
    skip_invalid: bool = SKIP_INVALID,
) -> None:
    """Write every row's task label (as inferred or taken from --task-field) to a --tasks TASKS.json file.

    Selection commands that take --tasks read this file (one label per row, in pool order).

    Example: vlselect pool tasks world/pool.json -o tasks.json
    """
    from vlselect.pool import write_task_labels

    pool = _open(file, fmt, task_field, unique_ids, skip_invalid)
    write_task_labels(pool, out)
    typer.echo(f"wrote {len(pool):,} task labels ({len(pool.task_names)} tasks) to {out}")
    if pool.task_layout == "unknown":
        from vlselect.pool.stats import unknown_layout_note

        typer.echo(f"warning: task layout unknown: {unknown_layout_note(pool)}", err=True)
