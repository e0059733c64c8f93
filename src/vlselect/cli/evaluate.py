"""``vlselect eval``: generation-based evaluation with relative performance (thin over
:func:`vlselect.evaluate.evaluate`); ``vlselect eval summarize`` (mean and 95% interval over seeds) and
``vlselect eval lmms`` (the lmms-eval command line for real benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from vlselect.errors import ConfigError

console = Console()

eval_app = typer.Typer(
    name="eval",
    help="Evaluate a model on evaluation sets; relative performance against a reference; intervals over seeds.\n\n"
    "Example: vlselect eval --model runs/coincide/final --eval world/eval/color.json --images world/images --out ev/coincide",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _fmt_interval(iv: dict) -> str:
    if iv.get("half_width") is None:
        return f"{iv['mean']:.2f}"
    return f"{iv['mean']:.2f} ± {iv['half_width']:.2f}"


@eval_app.callback(invoke_without_command=True)
def eval_command(
    ctx: typer.Context,
    model: Optional[Path] = typer.Option(None, "--model", help="Model directory, merged LoRA model or MMA final/ folder."),
    eval_files: Optional[List[Path]] = typer.Option(None, "--eval", help="Evaluation-set file (repeat for several)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder of the evaluation sets."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (results.json, predictions/)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Reference results.json (e.g. full-pool run) or a pinned name (llava-1.5-7b-lora)."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="LoRA adapter/ or MMA final/ folder to apply."),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Reuse sets already finished in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Evaluate again even if --out holds predictions of "
                                   "another model or options (otherwise: exit 2 naming what differs)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Evaluate --model on --eval sets; without a subcommand this runs the evaluation.

    Example: vlselect eval --model runs/coincide/final --eval world/eval/color.json --images world/images --out ev/coincide
    """
    if ctx.invoked_subcommand is not None:
        return
    missing = [n for n, v in (("--model", model), ("--eval", eval_files), ("--images", images), ("--out", out)) if not v]
    if missing:
        raise ConfigError(f"vlselect eval needs {', '.join(missing)}; e.g. vlselect eval --model DIR --eval SET.json "
                          "--images DIR --out DIR")
    from vlselect.evaluate import evaluate

    res = evaluate(model, eval_files, images, out, adapter=adapter, reference=reference, batch_size=batch_size,
                   max_new_tokens=max_new_tokens, resume=resume, progress=progress, overwrite=overwrite)
    t = Table(title=f"evaluation of {model}")
    t.add_column("set")
    t.add_column("metric")
    t.add_column("n", justify="right")
    t.add_column("score", justify="right")
    if "relative" in res:
        t.add_column("relative", justify="right")
    for name, s in res["sets"].items():
        row = [name, s["metric"], str(s["n"]), f"{s['score']:.2f}"]
        if "relative" in res:
            row.append(f"{s['relative']:.1f}" if "relative" in s else "n/a (reference 0)")
        t.add_row(*row)
    console.print(t)
    line = f"mean score {res['mean_score']:.2f}"
    if "relative" in res:
        line += f" · relative performance {res['relative']:.1f} (reference {reference})"
        if res.get("relative_skipped"):
            line += f"\n  [yellow]left out of the relative mean[/] (reference score 0): {', '.join(res['relative_skipped'])}"
    console.print(line + f"\n  written: {out / 'results.json'}", highlight=False)


@eval_app.command("summarize")
def summarize_command(
    results: List[Path] = typer.Argument(..., help="results.json files, e.g. one per training seed."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Reference results.json or pinned name for relative performance."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the summary JSON here."),
    confidence: float = typer.Option(0.95, "--confidence"),
) -> None:
    """Mean and t-distribution interval over several result files (seeds).

    The mean over sets is taken over percent-scale sets only: a set whose scale is "points" (MME's ~1500-of-2000
    sum, from eval lmms-import) is shown on its own row and left out of the mean; relative performance includes it.

    Example: vlselect eval summarize ev-seed0/results.json ev-seed1/results.json ev-seed2/results.json --reference full/results.json
    """
    from vlselect.evaluate import summarize

    s = summarize(results, reference=reference, confidence=confidence)
    t = Table(title=f"{s['n']} runs, mean ± {confidence:.0%} interval")
    t.add_column("set")
    t.add_column("score", justify="right")
    for name, iv in s["sets"].items():
        t.add_row(name, _fmt_interval(iv))
    apart = s.get("mean_excludes") or []
    label = "[bold]mean[/]" + (f" (without {', '.join(apart)}: another scale)" if apart else "")
    t.add_row(label, _fmt_interval(s["mean_score"]) if s["mean_score"] is not None else "n/a (no percent-scale set)")
    if "relative" in s:
        t.add_row("[bold]relative[/]", _fmt_interval(s["relative"]))
    console.print(t)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(s, indent=2) + "\n")
        tmp.replace(out)


@eval_app.command("lmms")
def lmms_command(
    model: Path = typer.Option(..., "--model", help="Merged model directory (LoRA final/)."),
    tasks: str = typer.Option(..., "--tasks", help="Comma list of lmms-eval tasks, e.g. mme,pope,gqa."),
    out: Path = typer.Option(..., "--out", help="lmms-eval --output_path."),
    batch_size: int = typer.Option(1, "--batch-size"),
    seed: int = typer.Option(0, "--seed"),
    limit: Optional[int] = typer.Option(None, "--limit"),
    num_processes: int = typer.Option(1, "--num-processes", help="> 1: data parallel over GPUs (accelerate launch)."),
    lmms_model: Optional[str] = typer.Option(None, "--lmms-model", help="lmms-eval model wrapper (default by family)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)."),
    model_args: Optional[str] = typer.Option(None, "--model-args", help="Extra lmms-eval model arguments K=V,K2=V2 (override the defaults, e.g. device_map=auto)."),
    include_path: Optional[List[Path]] = typer.Option(None, "--include-path", help="Folder of extra task YAMLs (repeat for several)."),
    run: bool = typer.Option(False, "--run", help="Run it with this Python (lmms-eval must be installed in it); default: print it."),
) -> None:
    """Build (and optionally run) the lmms-eval command for a vlselect-trained model.

    Install lmms-eval keeping your torch: pip install 'vlselect\\[lmms]' -c keep-torch.txt, where keep-torch.txt holds
    torch==YOUR_VERSION (see vlselect.evaluate.lmms). With --run, a run that writes no results file fails (exit 2).

    Example: vlselect eval lmms --model runs/lora/final --tasks textvqa_val,mmbench_en_dev --out lmms-out
    """
    from vlselect.evaluate.lmms import format_command, lmms_eval_command, parse_model_args, run_lmms_eval

    cmd = lmms_eval_command(model, tasks, out, batch_size=batch_size, seed=seed, limit=limit,
                            num_processes=num_processes, lmms_model=lmms_model, device=device,
                            extra_model_args=parse_model_args(model_args), include_path=include_path or None)
    if not run:
        typer.echo(format_command(cmd))
        return
    import importlib.util
    import sys

    from vlselect.errors import MissingDependencyError

    if importlib.util.find_spec("lmms_eval") is None:
        raise MissingDependencyError(
            f"lmms-eval is not installed in the Python vlselect runs in ({sys.executable}); install it there keeping "
            "your torch: python -c \"import torch; print('torch==' + torch.__version__.split('+')[0])\" > "
            "keep-torch.txt && pip install 'vlselect[lmms]' -c keep-torch.txt (with a CPU torch, see "
            "vlselect.evaluate.lmms about torchvision); or run the printed command (without --run) yourself")
    typer.echo(format_command(cmd))
    found = run_lmms_eval(cmd, out, echo=typer.echo)
    typer.echo(f"lmms-eval results: {found}\n  import them with: vlselect eval lmms-import {found} --out RESULTS.json")


def _pairs(items, option: str, example: str) -> dict[str, str]:
    chosen = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{option} {item!r}: write TASK=VALUE, e.g. {option} {example}")
        k, v = item.split("=", 1)
        chosen[k.strip()] = v.strip()
    return chosen


@eval_app.command("lmms-import")
def lmms_import_command(
    results: Path = typer.Argument(..., help="lmms-eval results JSON."),
    out: Path = typer.Option(..., "--out", help="vlselect results.json to write."),
    metric: Optional[List[str]] = typer.Option(None, "--metric", help="TASK=METRIC to choose a task's score."),
    scale: Optional[List[str]] = typer.Option(None, "--scale", help="TASK=fraction|percent|points for a metric vlselect does not know."),
    reference: Optional[str] = typer.Option(None, "--reference", help="results.json or pinned name (llava-1.5-7b-lora)."),
) -> None:
    """Convert lmms-eval results into a vlselect results.json (optionally with relative performance).

    Each metric's scale comes from a table of lmms-eval metrics (fractions become percent; MME stays in points and
    is kept out of the mean); an unknown metric must be declared with --scale TASK=fraction|percent|points.

    Example: vlselect eval lmms-import lmms-out/results.json --reference llava-1.5-7b-lora --out ev/results.json
    """
    from vlselect.evaluate.lmms import import_lmms_results

    chosen = _pairs(metric, "--metric", "mme=mme_perception_score")
    scales = _pairs(scale, "--scale", "mytask=fraction")
    res = import_lmms_results(results, out, metrics=chosen, reference=reference, scales=scales)
    for name, v in res["sets"].items():
        typer.echo(f"{name}: {v['score']:.2f} ({v['metric']}, {v['scale']})"
                   + (f" · relative {v['relative']:.1f}" if "relative" in v else ""))
    if res["mean_score"] is not None:
        apart = f" (without {', '.join(res['mean_excludes'])}: points)" if res["mean_excludes"] else ""
        typer.echo(f"mean score {res['mean_score']:.2f}{apart}")
    if "relative" in res:
        typer.echo(f"relative performance {res['relative']:.1f} (reference {res['reference']})")


def register(app: typer.Typer) -> None:
    """Add the ``eval`` group to the main app."""
    app.add_typer(eval_app, name="eval")
