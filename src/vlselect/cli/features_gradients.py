"""CLI commands 'features_gradients' (filled in by its implementation); registered onto its group's Typer app."""

from __future__ import annotations

import typer


def register(group: typer.Typer) -> None:
    """Add these commands to the group app (called by the group's own module)."""
