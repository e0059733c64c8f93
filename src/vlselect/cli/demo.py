"""``vlselect demo``: the main job on the built-in demo data (what the README's first command runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for everything the demo writes."),
        size: Optional[int] = typer.Option(None, "--size", help="Pool size of the demo world (default 4000, the quick bench's)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the world, the model and the selections."),
        jobs: int = typer.Option(2, "--jobs", help="Training/evaluation workers side by side."),
    ) -> None:
        """Run the whole loop on the built-in demo world: the quick benchmark (same as vlselect bench --quick).

        Makes the world and prints its pool statistics, starts from the shipped foundation (a tiny pretrained VLM), extracts features, runs every
        selection method, fine-tunes on each subset, evaluates, and writes results.csv/.json and report.html.
        Stages are cached under OUT/cache: a second run reuses them.

        Example: vlselect demo --out demo-out
        """
        from vlselect.cli._demo_impl import run_demo

        run_demo(out=out, size=size or 0, seed=seed, jobs=jobs)
