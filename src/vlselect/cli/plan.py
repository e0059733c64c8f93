"""``vlselect plan``: what the commands would do on a real checkpoint and what each stage would cost, from the
config alone (meta device: no weights, no GPU). Thin over :func:`vlselect.plan.plan`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _bytes(b) -> str:
    if b is None:
        return "-"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b:.0f} B"


def plan_command(
    model: str = typer.Option(..., "--model", help="Model directory, config.json, or a built-in config: "
                              "llava-1.5-7b-hf, qwen2-vl-2b-instruct, qwen2-vl-7b-instruct, tinyllava-2.0b-hf."),
    pool_size: int = typer.Option(..., "--pool-size", help="Rows in the pool (LLaVA-665K: 665298)."),
    budget: float = typer.Option(0.2, "--budget", help="Fraction selected and trained on."),
    text_tokens: int = typer.Option(250, "--text-tokens", help="Mean text tokens per row (assumption)."),
    image_size: str = typer.Option("640x480", "--image-size", help="WxH of a typical image (Qwen2-VL's token count)."),
    lora_r: int = typer.Option(128, "--lora-r"),
    batch_size: int = typer.Option(16, "--batch-size", help="Per-GPU batch for training."),
    tflops: float = typer.Option(100.0, "--tflops", help="Effective TFLOP/s per GPU for GPU-hours."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the plan as JSON here."),
) -> None:
    """Print what the commands would do on a real checkpoint and an estimate of memory, FLOPs and GPU-hours per
    stage, without a GPU and without downloading weights.

    Example: vlselect plan --model llava-1.5-7b-hf --pool-size 665298 --budget 0.2
    """
    from vlselect.errors import ConfigError
    from vlselect.plan import plan

    try:
        w, h = (int(x) for x in image_size.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--image-size {image_size!r}: write WIDTHxHEIGHT, e.g. 640x480") from None
    p = plan(model, pool_size, budget=budget, text_tokens=text_tokens, image_size=(w, h), lora_r=lora_r,
             batch_size=batch_size, tflops=tflops)
    m = p["model"]
    console.print(f"[bold]{m['name']}[/] ({m['model_type']}): {m['parameters']:,} parameters = LLM "
                  f"{m['llm_parameters']:,} + vision {m['vision_parameters']:,} + projector "
                  f"{m['projector_parameters']:,}", highlight=False)
    console.print(f"  LLM: {m['num_layers']} layers, hidden {m['hidden_size']}; image: {m['image_tokens']} tokens "
                  f"({m['vision_patches']} vision patches)", highlight=False)
    console.print(f"  LoRA targets: {m['lora_module_count']} linear modules ("
                  f"{', '.join(sorted({n.rsplit('.', 1)[-1] for n in m['lora_modules']}))}); r={lora_r}: "
                  f"{m['lora_parameters']:,} parameters", highlight=False)
    console.print(f"  features activations: layers {m['probed_layers']} → rows of {m['feature_width']:,} float16",
                  highlight=False)
    t = Table(title=f"pool {pool_size:,} rows, budget {budget:.0%}, {p['assumptions']['tokens_per_sample']} tokens/row, "
                    f"{tflops:g} TFLOP/s per GPU")
    for c in ("stage", "FLOPs", "GPU-hours", "GPU memory", "output", "what"):
        t.add_column(c, justify="right" if c not in ("stage", "what") else "left")
    for name, s in p["stages"].items():
        t.add_row(name, "-" if s["flops"] is None else f"{s['flops']:.2e}",
                  "-" if s["gpu_hours"] is None else f"{s['gpu_hours']:.1f}", _bytes(s["memory_bytes"]),
                  _bytes(s["output_bytes"]), s["note"])
    console.print(t)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(p, indent=2) + "\n")
        tmp.replace(out)


def register(app: typer.Typer) -> None:
    """Add the ``plan`` command to the main app."""
    app.command("plan")(plan_command)
