"""CLI commands for the 'features' stage: ``vlselect features activations | info | merge`` (issue 3), plus the
gradient commands registered by :mod:`vlselect.cli.features_gradients`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vlselect.cli._pool_options import IMAGES, SKIP_INVALID, UNIQUE_IDS, open_cli_pool

features_app = typer.Typer(help="Per-sample features: activations, losses, gradients; store info and merge.\n\n"
                           "Example: vlselect features activations --model tiny-llava --pool world/pool.json --out feats/acts",
                           no_args_is_help=True)


@features_app.command("activations")
def activations(
    model: Path = typer.Option(..., "--model", help="Model directory (save_pretrained layout)."),
    pool: Path = typer.Option(..., "--pool", help="Pool file (LLaVA JSON/JSONL, Vision-Flan, DataOptim)."),
    images: Optional[Path] = IMAGES,
    unique_ids: bool = UNIQUE_IDS,
    skip_invalid: bool = SKIP_INVALID,
    out: Path = typer.Option(..., "--out", help="Feature store directory (an unfinished one is resumed)."),
    layers: Optional[str] = typer.Option(None, "--layers",
                                         help="Comma-separated 0-based layers; default: the paper's 3,7,11,15,19 "
                                              "of 24, mapped to the model's depth."),
    batch_size: int = typer.Option(8, "--batch-size", help="Samples per forward pass (halved on out-of-memory)."),
    losses: bool = typer.Option(False, "--losses", help="Also write loss, perplexity and EL2N (same pass)."),
    embeddings: bool = typer.Option(False, "--embeddings",
                                    help="Also write embed_last (SemDeDup), embed_mean and margin (D2-Pruning): "
                                         "last-token and mean last hidden state, answer-token probability margin."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/N: compute only this part (SLURM arrays)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Record rows with a bad image as missing."),
    shard_size: int = typer.Option(256, "--shard-size", help="Rows per store shard (unit of resumption)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, float16 or bfloat16 (default: as saved)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 … (default: cuda if present)."),
    max_length: Optional[int] = typer.Option(None, "--max-length",
                                             help="Fail on longer samples (never truncates)."),
    workers: int = typer.Option(0, "--workers", help="Processes encoding samples (template, tokenizer, images) "
                                                     "while the model runs; 0 = none."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute even if --out holds a store of other "
                                   "inputs (otherwise: exit 2 naming what differs)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """COINCIDE activations (o_proj output, image/text means, tanh, L2, /sqrt(2L)) into a sharded store.

    Example: vlselect features activations --model tiny-llava --pool world/pool.json --losses --out feats/acts
    """
    from vlselect.features.activations import extract_activations

    the_pool, images = open_cli_pool(pool, unique_ids=unique_ids, skip_invalid=skip_invalid, images=images,
                                     progress=not quiet)
    path = extract_activations(model, the_pool, out, images=images, layers=layers, batch_size=batch_size, losses=losses,
                               shard=shard, skip_bad=skip_bad, shard_size=shard_size, dtype=dtype, device=device,
                               max_length=max_length, progress=not quiet, workers=workers, embeddings=embeddings,
                               overwrite=overwrite)
    typer.echo(f"features in {path}")


@features_app.command("info")
def info(path: Path = typer.Argument(..., help="A feature store directory.")) -> None:
    """Print a store's manifest summary: model, layers, pool fingerprint, arrays and shapes, missing rows.

    Example: vlselect features info feats/acts
    """
    from vlselect.features.store import FeatureStore

    st = FeatureStore.open(path)
    m = st.manifest
    typer.echo(f"store       {path}")
    for key in ("kind", "model", "model_hash", "family", "layers", "pooling", "pool_fingerprint", "n_rows",
                "n_missing", "n_text_only", "n_with_image"):
        if key in m:
            typer.echo(f"{key:<17} {m[key]}")
    for name, a in m["arrays"].items():
        typer.echo(f"array {name:<11} shape={tuple(a['shape'])} dtype={a['dtype']}")


@features_app.command("merge")
def merge_cmd(
    dirs: List[Path] = typer.Argument(..., help="Partial stores of one run (e.g. the --shard i/N outputs)."),
    out: Path = typer.Option(..., "--out", help="Directory of the merged store."),
) -> None:
    """Join partial stores (same settings) into one finished store, byte-identical to a single run.

    Example: vlselect features merge feats/acts-part0 feats/acts-part1 --out feats/acts
    """
    from vlselect.features.store import merge

    st = merge(dirs, out)
    typer.echo(f"merged {len(dirs)} stores into {out} ({st.manifest['n_rows']} rows)")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""
    from vlselect.cli import features_gradients

    features_gradients.register(features_app)
    app.add_typer(features_app, name="features")
