"""Bridge to lmms-eval for real benchmarks (optional extra ``pip install 'vlselect[lmms]'``).

A vlselect-trained model directory (merged weights, see :mod:`vlselect.train.lora`) is a plain Hugging Face
checkpoint, so lmms-eval's ``llava_hf`` / ``qwen2_vl`` model wrappers load it directly. This module only builds the
command line; running it needs lmms-eval installed.

Example
-------
``vlselect eval lmms --model runs/lora/final --tasks mme,pope --out runs/lora/lmms`` prints::

    python -m lmms_eval --model llava_hf --model_args pretrained=runs/lora/final,device_map=auto
        --tasks mme,pope --batch_size 1 --output_path runs/lora/lmms --log_samples --seed 0

and ``vlselect eval lmms-import runs/lora/lmms/.../results.json --out runs/lora/results.json --reference
llava-1.5-7b-lora`` turns its output into a vlselect ``results.json`` with relative performance.
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


def _pick_metric(task: str, metrics: dict, override: str | None) -> tuple[str, float]:
    nums = {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and "stderr" not in k}
    if override is not None:
        for k, v in nums.items():
            if k == override or k.split(",")[0] == override:
                return k, v
        raise ConfigError(f"lmms-eval task {task!r} has no metric {override!r} (it has: {', '.join(nums) or 'none'})")
    low = task.lower()
    prefs = (["percetion", "perception"] if low.startswith("mme") else ["f1"] if low.startswith("pope") else []) + \
        ["exact_match", "accuracy", "acc", "gpt_eval_score", "score"]
    for pref in prefs:
        for k, v in nums.items():
            if pref in k.split(",")[0]:
                return k, v
    if len(nums) == 1:
        return next(iter(nums.items()))
    raise ConfigError(f"lmms-eval task {task!r}: cannot tell which metric is its score among {', '.join(nums)}; "
                      f"pass --metric {task}=NAME")


def add_relative(res: dict, reference, *, source: str = "") -> dict:
    """Add relative performance to an imported results object against a ``results.json`` or pinned reference.

    lmms-eval split suffixes (``vqav2_val``, ``mmbench_en_dev``, ``textvqa_val``) are mapped onto the reference's
    benchmark names (the longest reference name the task starts with, followed by ``_``); ``task`` keeps the
    original name.
    """
    from vlselect.evaluate.metrics import relative_performance
    from vlselect.evaluate.references import reference_scores

    ref, label = reference_scores(reference)
    renamed: dict = {}
    for task, v in res["sets"].items():
        match = task if task in ref else max((k for k in ref if task.startswith(k + "_")), key=len, default=task)
        if match in renamed:
            raise ConfigError(f"{source}: tasks {renamed[match]['task']!r} and {task!r} both map to the reference "
                              f"benchmark {match!r}; import them separately")
        renamed[match] = {**v, "task": task}
    res["sets"] = renamed
    rel = relative_performance({k: v["score"] for k, v in renamed.items()}, ref, source=label)
    res.update(reference=label, relative=rel["relative"], relative_skipped=rel["skipped"])
    for name, v in rel["per_set"].items():
        res["sets"][name]["relative"] = v
    return res


def import_lmms_results(path, out_path=None, *, metrics: dict[str, str] | None = None, reference=None) -> dict:
    """Turn an lmms-eval results JSON (``{"results": {task: {"metric,filter": value}}}``) into a vlselect
    ``results.json`` (``{"sets": {task: {"metric", "score"}}}``), so that ``vlselect eval summarize`` and pinned
    references (:mod:`vlselect.evaluate.references`) apply to real benchmarks.

    The score of a task is ``metrics[task]`` if given, else the first of: MME perception score, POPE F1,
    ``exact_match`` / ``accuracy`` / ``gpt_eval_score`` / ``score``, or the only numeric metric. Fractions of
    accuracy-like metrics (≤ 1) are turned into percent; MME keeps its scale. With ``reference`` (a results.json
    or a pinned name) relative performance is added (:func:`add_relative`).
    """
    import orjson

    path = Path(path)
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read an lmms-eval results file ({exc}); pass the results_*.json it wrote") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ConfigError(f"{path}: no 'results' object; pass the results JSON written by lmms-eval --output_path")
    sets = {}
    for task, m in data["results"].items():
        if not isinstance(m, dict):
            continue
        key, value = _pick_metric(task, m, (metrics or {}).get(task))
        name = key.split(",")[0]
        if value <= 1.0 and not task.lower().startswith("mme") and any(
                x in name for x in ("exact_match", "acc", "f1", "score")):
            value *= 100.0
        sets[task] = {"metric": f"lmms:{name}", "score": value}
    if not sets:
        raise ConfigError(f"{path}: no task results inside")
    res = {"model": str(data.get("model_name") or data.get("config", {}).get("model_args", "")), "source": str(path),
           "sets": sets, "mean_score": sum(v["score"] for v in sets.values()) / len(sets)}
    if reference is not None:
        add_relative(res, reference, source=str(path))
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        tmp.replace(out_path)
    return res
