"""``vlselect train warmup``: the warm-up reference model of ICONS / TIVE / LESS, thin over
:func:`vlselect.train.warmup.train_warmup` (issue 4; tive.md §1-2, icons.md §1)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlselect.cli._pool_options import IMAGES, SKIP_INVALID, UNIQUE_IDS, open_cli_pool


def warmup(
    model: Path = typer.Option(..., "--model", help="Base model directory."),
    pool: Path = typer.Option(..., "--pool", help="The pool (LLaVA JSON/JSONL)."),
    images: Optional[Path] = IMAGES,
    unique_ids: bool = UNIQUE_IDS,
    skip_invalid: bool = SKIP_INVALID,
    rule: str = typer.Option("tive", "--rule", help="tive: 8% of the pool, equal count per task, 1 epoch, lr 2e-5; "
                             "icons: checkpoint at --step of a 1-epoch run over the pool, lr 2e-4."),
    out: Path = typer.Option(..., "--out", help="Output folder (lora/, adam_state.pt, warmup.json, run/)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the TIVE draw and the training run."),
    ratio: float = typer.Option(0.08, "--ratio", help="TIVE: warm-up fraction of the pool."),
    step: Optional[int] = typer.Option(None, "--step", help="ICONS: checkpoint step (default: 9.6% of the epoch, "
                                       "where checkpoint-500 is in the official 8-GPU run)."),
    strict_official: bool = typer.Option(False, "--strict-official", help="TIVE: fail on a task smaller than the "
                                         "per-task count, as the official script does."),
    r: Optional[int] = typer.Option(None, "--r", help="LoRA rank (default 128; alpha follows as 2r)."),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Default 2e-5 (tive) or 2e-4 (icons)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Per-device batch (default 16)."),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    device: Optional[str] = typer.Option(None, "--device"),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Fail on longer samples (never truncates)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute even if --out holds a warm-up of other "
                                   "inputs (otherwise: exit 2 naming what differs)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train the warm-up reference model and export its LoRA adapter (for --lora) and Adam state (--adam-state).

    Example: vlselect train warmup --model tiny-llava --pool world/pool.json --rule tive --out warm
    """
    from vlselect.train.warmup import train_warmup

    the_pool, images = open_cli_pool(pool, unique_ids=unique_ids, skip_invalid=skip_invalid, images=images,
                                     progress=not quiet)
    res = train_warmup(model, the_pool, images, out, rule=rule, seed=seed, ratio=ratio, step=step,
                       strict_official=strict_official, r=r, lora_alpha=lora_alpha, lr=lr, batch_size=batch_size,
                       grad_accum=grad_accum, max_length=max_length, progress=not quiet, device=device,
                       overwrite=overwrite)
    typer.echo(f"warm-up ({res.rule}, step {res.step}/{res.total_steps}, {res.n_train} samples): adapter "
               f"{res.lora_dir}" + (f", Adam state {res.adam_state}" if res.adam_state else ""))


def register(group: typer.Typer) -> None:
    """Add ``warmup`` to the ``train`` group."""
    group.command("warmup")(warmup)
