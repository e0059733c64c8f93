"""CLI commands for the 'world' stage: ``vlselect world make``."""

from __future__ import annotations

from pathlib import Path

import typer

world_app = typer.Typer(
    name="world",
    help="The synthetic VIT world: pictures, a LLaVA-format pool and evaluation sets, all from a seed.\n\n"
    "Example: vlselect world make world --size 20000 --seed 0",
    no_args_is_help=True,
)


@world_app.command("make")
def make(
    out_dir: Path = typer.Argument(..., help="Folder to write the world into (new, empty, or an earlier world)."),
    size: int = typer.Option(20000, "--size", help="Pool records."),
    seed: int = typer.Option(0, "--seed", help="Seed of everything; the same seed gives byte-identical files."),
    image_size: int = typer.Option(64, "--image-size", help="Picture side in pixels."),
    eval_size: int = typer.Option(200, "--eval-size", help="Samples per evaluation set."),
    noisy_share: float = typer.Option(0.3, "--noisy-share", help="Share of image-task groups from the noisy source."),
    noise_rate: float = typer.Option(0.25, "--noise-rate", help="Share of the noisy source's answers that are wrong."),
    easy_share: float = typer.Option(0.15, "--easy-share", help="Share of trivially easy groups."),
    force: bool = typer.Option(True, "--force/--no-force", help="Replace an earlier world in OUT_DIR."),
) -> None:
    """Make the world: DIR/images/*.png, DIR/pool.json, DIR/eval/<set>.json, DIR/world.json, DIR/README.md.

    Example: vlselect world make world --size 20000 --seed 0
    """
    from rich.console import Console

    from vlselect.world import make_world

    info = make_world(out_dir, size=size, seed=seed, image_size=image_size, eval_size=eval_size,
                      noisy_share=noisy_share, noise_rate=noise_rate, easy_share=easy_share, overwrite=force)
    console = Console()
    counts = ", ".join(f"{t} {n}" for t, n in info.task_counts.items())
    console.print(f"[bold]world[/] → {info.out_dir}: {sum(info.task_counts.values())} records ({counts}); "
                  f"{info.n_images} pool pictures; {len(info.eval_sets)} evaluation sets "
                  f"({info.n_eval_images} samples). Card: {info.out_dir / 'README.md'}", highlight=False)


@world_app.command("pretrain")
def pretrain(
    out_dir: Path = typer.Argument(..., help="Folder for the caption pool (new, empty, or an earlier one)."),
    size: int = typer.Option(50000, "--size", help="Caption records (one picture each)."),
    seed: int = typer.Option(0, "--seed", help="The world's seed; its evaluation scenes are avoided."),
    image_size: int = typer.Option(64, "--image-size", help="Picture side in pixels."),
    eval_size: int = typer.Option(200, "--eval-size", help="The world's evaluation set size (to avoid its scenes)."),
    counted: bool = typer.Option(False, "--counted", help="Start every caption with the number of objects (\"3 objects: a small red cross at the top, ...\")."),
) -> None:
    """Make a separate clean caption pool for pre-training the base model (DIR/images, DIR/pool.json).

    Example: vlselect world pretrain pretrain --size 50000 --seed 0
    """
    from rich.console import Console

    from vlselect.world import make_pretrain_pool

    info = make_pretrain_pool(out_dir, size=size, seed=seed, image_size=image_size, eval_size=eval_size,
                              counted=counted)
    Console().print(f"[bold]pre-training pool[/] → {info.out_dir}: {info.task_counts['caption']} captions, "
                    f"{info.n_images} pictures", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``world`` group to the main app."""
    app.add_typer(world_app, name="world")
