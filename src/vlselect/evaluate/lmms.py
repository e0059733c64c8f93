"""Bridge to lmms-eval for real benchmarks (optional extra ``pip install 'vlselect[lmms]'``).

A vlselect-trained model directory (merged weights, see :mod:`vlselect.train.lora`) is a plain Hugging Face
checkpoint, so lmms-eval's ``llava_hf`` / ``qwen2_vl`` model wrappers load it directly. This module only builds the
command line; running it needs lmms-eval installed.

Example
-------
``vlselect eval lmms --model runs/lora/final --tasks mme,pope --out runs/lora/lmms`` prints::

    python -m lmms_eval --model llava_hf --model_args pretrained=runs/lora/final,device_map=auto
        --tasks mme,pope --batch_size 1 --output_path runs/lora/lmms --log_samples --seed 0
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from vlselect.errors import ConfigError

# vlselect family → lmms-eval model name
LMMS_MODELS = {"llava": "llava_hf", "qwen2-vl": "qwen2_vl", "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl"}


def _family(model_dir: Path) -> str:
    for name in ("vlselect_tiny.json", "config.json"):
        p = model_dir / name
        if p.is_file():
            data = json.loads(p.read_text())
            if "family" in data:
                return data["family"]
            mt = data.get("model_type", "")
            if mt:
                return {"llava": "llava", "qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2_5_vl"}.get(mt, mt)
    raise ConfigError(f"{model_dir}: no config.json; pass a Hugging Face model directory (e.g. a `vlselect train` output)")


def lmms_eval_command(
    model_dir,
    tasks,
    out_dir,
    *,
    batch_size: int = 1,
    seed: int = 0,
    lmms_model: str | None = None,
    limit: int | None = None,
    extra_model_args: dict | None = None,
    num_processes: int = 1,
) -> list[str]:
    """Build the lmms-eval command (argv list) that evaluates a vlselect-trained model.

    Parameters
    ----------
    model_dir : path-like
        Merged Hugging Face model directory.
    tasks : str or list of str
        lmms-eval task names (e.g. ``["mme", "pope", "gqa"]``).
    out_dir : path-like
        ``--output_path``.
    batch_size, seed, limit : int
        Passed through.
    lmms_model : str, optional
        lmms-eval model wrapper; default from the model's family (:data:`LMMS_MODELS`).
    extra_model_args : dict, optional
        Extra ``--model_args`` entries (e.g. ``{"attn_implementation": "sdpa"}``).
    num_processes : int
        > 1 wraps the command in ``accelerate launch --num_processes N -m lmms_eval``.

    Returns
    -------
    list of str
    """
    model_dir = Path(model_dir)
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    if not tasks:
        raise ConfigError("no lmms-eval tasks given; pass --tasks, e.g. --tasks mme,pope")
    if lmms_model is None:
        family = _family(model_dir)
        if family not in LMMS_MODELS:
            raise ConfigError(f"{model_dir}: no lmms-eval wrapper known for model family {family!r}; pass --lmms-model")
        lmms_model = LMMS_MODELS[family]
    margs = {"pretrained": str(model_dir), "device_map": "auto"} if num_processes == 1 else {"pretrained": str(model_dir)}
    margs.update(extra_model_args or {})
    head = (["accelerate", "launch", "--num_processes", str(num_processes), "-m", "lmms_eval"]
            if num_processes > 1 else ["python", "-m", "lmms_eval"])
    cmd = head + [
        "--model", lmms_model,
        "--model_args", ",".join(f"{k}={v}" for k, v in margs.items()),
        "--tasks", ",".join(tasks),
        "--batch_size", str(batch_size),
        "--output_path", str(out_dir),
        "--log_samples",
        "--seed", str(seed),
    ]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    return cmd


def format_command(cmd: list[str]) -> str:
    """Shell-quoted one-line form of a command."""
    return " ".join(shlex.quote(c) for c in cmd)
