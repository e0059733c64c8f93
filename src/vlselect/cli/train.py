"""``vlselect train``: fine-tune a model on a pool or subset with LoRA or MMA adapters (thin over
:func:`vlselect.train.train_lora`); ``vlselect train warmup`` (the warm-up reference model) joins this group.

Multi-GPU: ``torchrun --nproc_per_node N --no-python vlselect train --model ... --pool ...`` (same options).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlselect.cli._pool_options import IMAGES, SKIP_INVALID, UNIQUE_IDS, open_cli_pool
from rich.console import Console

from vlselect.errors import ConfigError

console = Console()

train_app = typer.Typer(
    name="train",
    help="Fine-tune a VLM on a pool or subset (LoRA with the LLaVA-1.5 recipe, --adapter full or mma), resumable.\n\n"
    "Example: vlselect train --model tiny-llava --pool sel/coincide/frac0.2/subset.json --images world/images --out runs/coincide --epochs 1",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _read_indices(path: Path) -> list[int]:
    import json

    if not path.is_file():
        raise ConfigError(f"indices file '{path}' does not exist; pass a .json list, .npy array or one index a line")
    try:
        if path.suffix == ".npy":
            import numpy as np

            return [int(i) for i in np.load(path).ravel()]
        text = path.read_text()
        if text.lstrip().startswith("["):
            return [int(i) for i in json.loads(text)]
        return [int(line) for line in text.split() if line.strip()]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"indices file '{path}': {exc}; write integers only (a JSON list or one a line)") from None


@train_app.callback(invoke_without_command=True)
def train_command(
    ctx: typer.Context,
    model: Optional[Path] = typer.Option(None, "--model", help="Hugging Face model directory (e.g. `vlselect models tiny`)."),
    pool: Optional[Path] = typer.Option(None, "--pool", help="Training pool or subset (LLaVA JSON/JSONL)."),
    images: Optional[Path] = IMAGES,
    unique_ids: bool = UNIQUE_IDS,
    skip_invalid: bool = SKIP_INVALID,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (checkpoints, final/, train_result.json)."),
    adapter: str = typer.Option("lora", "--adapter", help="lora (PEFT, LLaVA-1.5 recipe), full (LLaVA-1.5 full fine-tuning: LLM + projector) or mma (LaVIN adapters)."),
    indices: Optional[Path] = typer.Option(None, "--indices", help="Train on these pool positions only (.json/.npy/.txt)."),
    epochs: int = typer.Option(1, "--epochs"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Default 2e-4 (lora), 2e-5 (full) or 9e-3 x batch/256 (mma)."),
    projector_lr: Optional[float] = typer.Option(None, "--projector-lr", help="mm_projector_lr: default 2e-5 (lora), --lr (full)."),
    r: int = typer.Option(128, "--r", help="LoRA rank."),
    lora_alpha: int = typer.Option(256, "--lora-alpha"),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout"),
    batch_size: int = typer.Option(16, "--batch-size", help="Per-device batch."),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    length_group: int = typer.Option(0, "--length-group", help="0: LLaVA's shuffle. m > 0: each step takes samples "
                                     "of similar token count from m steps' worth of the shuffle (less padding)."),
    warmup_ratio: float = typer.Option(0.03, "--warmup-ratio"),
    schedule: str = typer.Option("cosine", "--schedule"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    save_steps: str = typer.Option("", "--save-steps", help="Comma list of steps to checkpoint at (the end always is)."),
    seed: int = typer.Option(0, "--seed"),
    modules_to_save: str = typer.Option("", "--modules-to-save", help="Comma list of modules trained in full besides the recipe's: lora e.g. lm_head; full e.g. vision_tower."),
    temperature: float = typer.Option(10.0, "--temperature", help="MMA router temperature (10 for 7B, 5 for 13B)."),
    adapter_dim: int = typer.Option(8, "--adapter-dim", help="MMA bottleneck."),
    vit_routing: str = typer.Option("per_token", "--vit-routing", help="MMA ViT routing: per_token or official_batch0."),
    gradient_checkpointing: bool = typer.Option(True, "--gradient-checkpointing/--no-gradient-checkpointing"),
    bf16: str = typer.Option("auto", "--bf16", help="auto, yes or no."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the last checkpoint in --out "
                                "(only a run of the same inputs); --no-resume starts over."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Train from scratch even if --out holds a run of "
                                   "other inputs (otherwise: exit 2 naming what differs)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    record_dynamics: bool = typer.Option(False, "--record-dynamics",
                                         help="Also record each row's AUM (mean logit margin over training) into "
                                              "OUT/aum, a feature store: D2-Pruning's score (--input scores=OUT/aum)."),
) -> None:
    """Fine-tune --model on --pool; without a subcommand this runs training.

    Example: vlselect train --model tiny-llava --pool sel/coincide/frac0.2/subset.json --images world/images --out runs/coincide --epochs 1
    """
    if ctx.invoked_subcommand is not None:
        return
    missing = [n for n, v in (("--model", model), ("--pool", pool), ("--out", out)) if v is None]
    if missing:
        raise ConfigError(f"vlselect train needs {', '.join(missing)}; e.g. vlselect train --model DIR --pool "
                          "SUBSET.json --images DIR --out DIR")
    if bf16 not in ("auto", "yes", "no"):
        raise ConfigError(f"--bf16 must be auto, yes or no (got {bf16!r})")
    try:
        steps = [int(s) for s in save_steps.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--save-steps must be a comma list of integers (got {save_steps!r})") from None
    from vlselect.train import train_lora

    aum_dir = None
    if record_dynamics:
        from vlselect.features.dynamics import train_with_dynamics

        def train_lora(*a, **kw):  # noqa: F811 - same call, dynamics recorded
            nonlocal aum_dir
            r, aum_dir = train_with_dynamics(*a, **kw)
            return r

    the_pool, images = open_cli_pool(pool, unique_ids=unique_ids, skip_invalid=skip_invalid, images=images,
                                     progress=progress)
    res = train_lora(
        model, the_pool, images, out, indices=_read_indices(indices) if indices else None, adapter=adapter, r=r,
        lora_alpha=lora_alpha, lora_dropout=lora_dropout, lr=lr, projector_lr=projector_lr, epochs=epochs,
        batch_size=batch_size, grad_accum=grad_accum, length_group=length_group, warmup_ratio=warmup_ratio, schedule=schedule,
        max_steps=max_steps, save_steps=steps, seed=seed, gradient_checkpointing=gradient_checkpointing,
        bf16={"auto": "auto", "yes": True, "no": False}[bf16], resume=resume,
        modules_to_save=[m.strip() for m in modules_to_save.split(",") if m.strip()] or None,
        mma_kwargs={"temperature": temperature, "adapter_dim": adapter_dim, "vit_routing": vit_routing}
        if adapter == "mma" else None, progress=progress, overwrite=overwrite,
    )
    first, last = (res.losses[0], res.losses[-1]) if res.losses else (float("nan"), float("nan"))
    pad = f"padding {res.padding:.0%} · " if res.padding is not None else ""
    console.print(
        f"[bold green]trained[/] {res.adapter} · {res.steps}/{res.total_steps} steps · loss {first:.4f} → {last:.4f} · "
        f"{res.trainable_parameters:,} trainable parameters · {res.samples_per_second:.1f} samples/s · {pad}"
        f"peak memory {res.peak_memory_bytes / 2**20:.0f} MiB\n  model: {res.final_dir}", highlight=False,
    )
    if aum_dir is not None:
        console.print(f"  training dynamics (AUM): {aum_dir}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``train`` group (and its ``warmup`` subcommand) to the main app."""
    app.add_typer(train_app, name="train")
    from vlselect.cli import train_warmup

    train_warmup.register(train_app)
