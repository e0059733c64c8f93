"""``vlselect demo``: the main job on the built-in demo data (what the README's first command runs)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for everything the demo writes."),
        size: int = typer.Option(2000, "--size", help="Pool size of the demo world."),
        seed: int = typer.Option(0, "--seed", help="Seed of the world."),
    ) -> None:
        """Run the whole loop on the built-in demo world.

        Example: vlselect demo --out demo-out
        """
        from vlselect.cli._demo_impl import run_demo

        run_demo(out=out, size=size, seed=seed)
