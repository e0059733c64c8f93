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
    size: str = typer.Option("xs", "--size", help="xs (hidden 32, 4 layers), s (hidden 64, 8 layers), b (hidden 128, 4 layers: the bench model), b8 (b with 8 layers) or m (hidden 128, 24 layers)."),
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


def _recipe_from_file(path: Path, other_options: bool):
    """The :class:`FoundationRecipe` in ``path`` (a foundation marker or a bare recipe object); a clear error for a
    missing file, bad JSON, an unknown field or recipe options given beside it."""
    import json

    from vlselect.errors import ConfigError
    from vlselect.models.foundation import FoundationRecipe

    if other_options:
        raise ConfigError(f"--recipe {path}: the recipe comes from the file; leave --vision-epochs, --answer-style, "
                          "--plain-captions, --format-share, --instruct-word-share and --short-kinds unset (or edit the file)")
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--recipe {path}: no such file; give a foundation's vlselect_foundation.json") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--recipe {path}: not JSON ({exc}); give a foundation's vlselect_foundation.json") from None
    d = d.get("recipe", d) if isinstance(d, dict) else d
    if not isinstance(d, dict):
        raise ConfigError(f"--recipe {path}: holds no recipe object; give a foundation's vlselect_foundation.json")
    known = set(FoundationRecipe.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"--recipe {path}: unknown recipe field(s) {', '.join(unknown)} (known: "
                          f"{', '.join(sorted(known))}); was it written by a newer vlselect?")
    try:
        return FoundationRecipe.from_json(d)
    except (TypeError, ValueError) as exc:  # a field of the wrong type (e.g. avoid not a list of pairs)
        raise ConfigError(f"--recipe {path}: a recipe field has the wrong type ({exc})") from None


@models_app.command("foundation")
def foundation(
    out_dir: Optional[Path] = typer.Argument(None, help="Directory to build the foundation into (omit with --check)."),
    check: bool = typer.Option(False, "--check", help="Only verify the shipped foundation (or OUT_DIR's): recipe and fingerprint."),
    path: bool = typer.Option(False, "--path", help="Print the shipped foundation's directory (after checking it), e.g. for --model \"$(vlselect models foundation --path)\"."),
    scale: float = typer.Option(1.0, "--scale", help="Build on this fraction of the recipe's data (e.g. 0.01 for a quick try; the shipped one is 1)."),
    threads: int = typer.Option(0, "--threads", help="Torch threads (0: torch's default). Use 1 on a busy machine."),
    vision_epochs: Optional[int] = typer.Option(None, "--vision-epochs", min=1, help="Epochs of stage 2 (vision tower, projector and language model on captions); the shipped recipe has 2, which make the vision tower read words (benchmarks/RESULTS.md)."),
    answer_style: Optional[str] = typer.Option(None, "--answer-style", help="How stage 1's reading records answer: sentence (\"The answer is red.\", no format prompt, as a general LLM does; the shipped recipe, with --short-kinds) or short (every kind in the evaluation sets' short format, as the first foundation answered)."),
    sentence_answers: bool = typer.Option(False, "--sentence-answers", hidden=True, help="The same as --answer-style sentence (the default now; kept for the commands of benchmarks/RESULTS.md)."),
    counted_captions: Optional[bool] = typer.Option(None, "--counted-captions/--plain-captions", help="Captions of stages 2 and 3 start with the number of objects (\"3 objects: ...\"; the shipped recipe), which makes counting cheap to fine-tune; --plain-captions changes only that field of the shipped recipe: the first foundation's whole recipe is --recipe benchmarks/recipes/first-2026-12-03.json)."),
    format_share: Optional[float] = typer.Option(None, "--format-share", min=0.0, max=1.0, help="Share of stage 1's one-word chat facts (arithmetic, colour mixing, sides) asked with the short-answer format prompt and answered in one word, so the language model knows the instruction from questions the bench does not ask (the shipped recipe: 0)."),
    short_kinds: Optional[str] = typer.Option(None, "--short-kinds", help="With --answer-style sentence: comma-separated reading kinds of stage 1 that keep the short format and its prompt, so the foundation answers those in the bench's format zero-shot and leaves the others' format to the fine-tune; 'none' for none (default: the shipped recipe's color_of_shape,count_all,pos_of,exist,mc_color)."),
    instruct_word_share: Optional[float] = typer.Option(None, "--instruct-word-share", min=0.0, max=1.0, help="Share of stage 4's pictures with a sign (only those can be asked the sign's word; the world's own share is 0.15)."),
    recipe_file: Optional[Path] = typer.Option(None, "--recipe", help="Build the recipe in this JSON file instead: a foundation's vlselect_foundation.json (e.g. one screened by benchmarks/foundation_screen.py, with its lookup warm-up and alignment questions) or the 'recipe' object of one. The recipe options above are then left unset; --scale still applies."),
) -> None:
    """Build the world's foundation (pretrained language model, vision tower, aligned projector) from its recipe,
    or check one. The shipped foundation is what 'vlselect bench' and 'vlselect demo' fine-tune.

    Example: vlselect models foundation /tmp/foundation --threads 2      (about an hour on 2 cores; the shipped copy was built with two threads, its stages by benchmarks/foundation_screen.py)
    """
    from vlselect.models.foundation import SHIPPED_RECIPE, foundation_path, verify_foundation
    from vlselect.train.foundation import build_foundation

    if path:
        verify_foundation(foundation_path())
        typer.echo(str(foundation_path()))
        return
    if check:
        target = out_dir or foundation_path()
        info = verify_foundation(target)
        typer.echo(f"{target}: foundation {info['fingerprint']} (recipe {info['recipe']})")
        return
    if out_dir is None:
        from vlselect.errors import ConfigError

        raise ConfigError("give OUT_DIR to build into, or --check to verify the shipped foundation")
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    flags = {k: v for k, v in (("vision_epochs", vision_epochs), ("answer_style", answer_style),
                                ("counted_captions", counted_captions), ("format_share", format_share),
                                ("instruct_word_share", instruct_word_share)) if v is not None}
    if sentence_answers:
        flags["answer_style"] = "sentence"
    if recipe_file is not None:
        recipe = _recipe_from_file(recipe_file, bool(flags) or short_kinds is not None)
        recipe = recipe if scale == 1.0 else recipe.scaled(scale)
        path = build_foundation(out_dir, recipe, log=lambda m: typer.echo(m, err=True))
        info = verify_foundation(path)
        typer.echo(f"wrote the foundation of {recipe_file} to {path}: {info['fingerprint']}")
        return
    if short_kinds is not None:
        flags["short_kinds"] = () if short_kinds.strip().lower() == "none" \
            else tuple(k.strip() for k in short_kinds.split(",") if k.strip())
    elif flags.get("answer_style") == "short":
        flags["short_kinds"] = ()  # every kind is short already
    from dataclasses import replace

    # the shipped recipe, with the flags given changed
    recipe = replace(SHIPPED_RECIPE, **flags)
    recipe = recipe if scale == 1.0 else recipe.scaled(scale)
    path = build_foundation(out_dir, recipe, log=lambda m: typer.echo(m, err=True))
    info = verify_foundation(path)
    from vlselect.errors import ModelError

    try:
        shipped_info = verify_foundation(foundation_path())
    except ModelError:  # no shipped copy (or a damaged one): nothing to compare with
        shipped_info = None
    typer.echo(f"wrote the foundation to {path}: {info['fingerprint']}")
    if shipped_info is None:
        return
    shipped, mine = shipped_info["recipe"], info["recipe"]
    if shipped != mine:  # another recipe: another model, whatever the machine
        fields = sorted(k for k in set(shipped) | set(mine) if shipped.get(k) != mine.get(k))
        typer.echo(f"another recipe than the shipped foundation's (differs in {', '.join(fields)}): "
                   "not comparable with it")
    elif shipped_info["fingerprint"] == info["fingerprint"]:
        typer.echo("identical to the shipped foundation")
    else:
        from vlselect.models.foundation import explain_fingerprint_difference

        typer.echo(f"differs from the shipped foundation ({shipped_info['fingerprint']}): "
                   + explain_fingerprint_difference(path, foundation_path()))


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""
    app.add_typer(models_app, name="models")
