"""CLI commands for the 'models' stage: ``vlselect models tiny DIR --family llava|qwen2-vl``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

models_app = typer.Typer(help="Model utilities: build tiny test models.\n\nExample: vlselect models tiny tiny-llava --size xs --image-size 24", no_args_is_help=True)


@models_app.command("tiny")
def tiny(
    out_dir: Path = typer.Argument(..., help="Directory to write the model to."),
    family: str = typer.Option("llava", "--family", help="llava or qwen2-vl."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
    size: str = typer.Option("xs", "--size", help="xs (hidden 32, 4 layers), s (hidden 64, 8 layers), b (hidden 128, 4 layers: the bench model) or m (hidden 128, 24 layers)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Image side in px (default: the size's own; 24 fits the world's grid)."),
    initializer_range: Optional[float] = typer.Option(None, "--init-std", help="Std of the language model's random init (default 0.02)."),
) -> None:
    """Build a tiny randomly initialised VLM (+ processor, locally trained tokenizer) with save_pretrained.

    Example: vlselect models tiny tiny-llava --family llava --size xs --image-size 24
    """
    from vlselect.models.tiny import build_tiny

    path = build_tiny(out_dir, family=family, seed=seed, size=size, image_size=image_size or None,
                      initializer_range=initializer_range or None)
    typer.echo(f"wrote a tiny {family} model to {path}")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""
    app.add_typer(models_app, name="models")
