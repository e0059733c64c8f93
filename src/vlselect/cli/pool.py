"""CLI commands for the 'pool' stage (filled in by its implementation)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""
