"""``vlselect features gradients``: per-sample projected LoRA gradients (and their norms) into a feature store, thin
over :func:`vlselect.features.gradients.extract_gradients` (issue 4; icons.md §2-3, tive.md §4).

Multi-GPU: ``torchrun --nproc_per_node N --no-python vlselect features gradients ...`` (ranks write their own
shards); SLURM arrays: ``--shard i/N`` into one ``--out`` (or separate ones joined by ``vlselect features merge``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlselect.cli._pool_options import IMAGES, SKIP_INVALID, UNIQUE_IDS, open_cli_pool


def gradients(
    model: Path = typer.Option(..., "--model", help="Base model directory (save_pretrained layout)."),
    lora: Optional[Path] = typer.Option(None, "--lora", help="PEFT LoRA adapter of the warm-up reference model "
                                        "(e.g. the lora/ folder of 'vlselect train warmup')."),
    pool: Path = typer.Option(..., "--pool", help="Pool file, or a validation set for ICONS's target tasks."),
    images: Optional[Path] = IMAGES,
    unique_ids: bool = UNIQUE_IDS,
    skip_invalid: bool = SKIP_INVALID,
    out: Path = typer.Option(..., "--out", help="Feature store directory (an unfinished one is resumed)."),
    dim: int = typer.Option(8192, "--dim", help="Projection dimension: 8192 (TIVE, LESS) or 5120 (ICONS)."),
    projection: str = typer.Option("rademacher", "--projection",
                                   help="rademacher (official), gaussian, or factored (LoGra: faster, a different "
                                        "sketch)."),
    seed: int = typer.Option(0, "--seed", help="Projection seed (official: 0); use the same for train and val."),
    params: str = typer.Option("lora", "--params", help="lora: every LoRA A/B (ICONS, LESS); self_attn: attention "
                               "LoRA only (TIVE)."),
    also: list[str] = typer.Option([], "--also", help="SET=DIR: also write parameter set SET (lora or self_attn) "
                                   "into store DIR from the same forward/backward pass (e.g. --params lora --also "
                                   "self_attn=feats/tive: ICONS's and TIVE's gradients in one pass). Repeatable."),
    adam_state: Optional[Path] = typer.Option(None, "--adam-state", help="Warm-up Adam state for LESS "
                                              "preconditioning (adam_state.pt of 'vlselect train warmup')."),
    norms: bool = typer.Option(False, "--norms", help="Also store grad_norms, the full gradient L2 norm (TIVE)."),
    factor_dim: int = typer.Option(64, "--factor-dim", help="Per-side dimension of the factored projection."),
    batch_size: int = typer.Option(8, "--batch-size", help="Samples per forward/backward pass."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/N: compute only this part (SLURM arrays)."),
    shard_size: int = typer.Option(256, "--shard-size", help="Rows per store shard (unit of resumption)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Record rows with a bad image as missing."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, float16 or bfloat16 (default: as saved)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Fail on longer samples (never truncates)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute even if --out holds a store of other "
                                   "inputs (otherwise: exit 2 naming what differs)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Per-sample LoRA gradients of the mean answer-token loss, a batch per backward pass, exact, projected with a
    seeded JL matrix. The matrix depends on the seed alone: bit for bit the same on any device, shard or batch size.
    The projected values are not bit for bit the same across batch sizes, shards or devices (float32 sums run in
    another order): they agree within 1e-5 of the largest |value|.

    Recipes: ICONS --dim 5120 (and the same command on each target task's validation file); TIVE --params
    self_attn --norms; LESS --adam-state WARM/adam_state.pt. ICONS and TIVE from one pass: --params lora --norms
    --also self_attn=DIR.

    Example: vlselect features gradients --model tiny-llava --lora warm/lora --pool world/pool.json --params self_attn --norms --dim 256 --out feats/grads
    """
    from vlselect.errors import ConfigError
    from vlselect.features.gradients import PROJECTIONS, extract_gradients

    if projection not in PROJECTIONS or projection == "none":
        raise ConfigError(f"--projection {projection!r} is unknown; use rademacher, gaussian or factored")
    from vlselect.evaluate.sets import eval_set_as_samples, looks_like_eval_set

    if looks_like_eval_set(pool):  # a validation set (ICONS, LESS); its images sit where the pool's do
        source = eval_set_as_samples(pool)
    else:
        source, images = open_cli_pool(pool, unique_ids=unique_ids, skip_invalid=skip_invalid, images=images,
                                       progress=not quiet)
    outs: dict[str, Path] = {params: out}
    for item in also:
        name, sep, folder = item.partition("=")
        if not sep or not folder or not name:
            raise ConfigError(f"--also {item!r}: expected SET=DIR, e.g. --also self_attn=feats/tive")
        if name in outs:
            raise ConfigError(f"--also {item!r}: parameter set '{name}' is already written (to {outs[name]}); give "
                              "each set once")
        outs[name] = Path(folder)
    if len(set(map(str, outs.values()))) < len(outs):
        raise ConfigError("--out and --also name the same folder twice; give each parameter set its own store")
    stores = extract_gradients(model, lora, source, outs if also else out, image_root=images, dim=dim, projection=projection, seed=seed,
                              params=params, adam_state=adam_state, norms=norms, batch_size=batch_size,
                              shard=shard, shard_size=shard_size, factor_dim=factor_dim, skip_bad=skip_bad,
                              device=device, dtype=dtype, max_length=max_length, progress=not quiet,
                              overwrite=overwrite)
    for name, store in (stores.items() if also else [(params, stores)]):
        state = "finished" if store.finished else f"{len(store.done_shards())}/{store.n_shards} shards done"
        typer.echo(f"gradients ({name}) in {outs[name]} ({state})")


def register(group: typer.Typer) -> None:
    """Add ``gradients`` to the ``features`` group."""
    group.command("gradients")(gradients)
