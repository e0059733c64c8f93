"""The demo's steps; grows as stages land (world → pool stats → features → select → train → eval → report)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

console = Console()


def run_demo(out: Path, size: int, seed: int) -> None:
    console.print(f"[bold]vlselect demo[/] → {out}")
    raise SystemExit("the demo is not wired up yet")
