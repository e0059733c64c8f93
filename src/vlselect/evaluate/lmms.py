"""Bridge to lmms-eval for real benchmarks.

A vlselect-trained model directory (merged weights, see :mod:`vlselect.train.lora`) is a plain Hugging Face
checkpoint, so lmms-eval's ``llava_hf`` / ``qwen2_vl`` model wrappers load it directly. This module builds the
lmms-eval command line, runs it (checking that it really wrote results: lmms-eval exits 0 after a traceback) and
imports its results with each metric on a declared scale.

Installing lmms-eval without replacing your torch
-------------------------------------------------
lmms-eval requires ``torchvision``; a plain ``pip install lmms-eval`` picks the newest torchvision, which needs a
newer torch, and pip then replaces a CPU (or other) torch build with a 3 GB CUDA one. Pin the torch you have::

    python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > keep-torch.txt
    pip install 'vlselect[lmms]' -c keep-torch.txt

pip then keeps the installed torch and picks the torchvision release made for it. On a CUDA torch that is all.
With a CPU torch, PyPI's torchvision wheel is linked against CUDA torch and fails on import (``operator
torchvision::nms does not exist``) and breaks transformers too. Install the CPU build of the same torchvision
version from PyTorch's CPU wheel index, or, for LLaVA models only, remove it (``pip uninstall -y torchvision``):
lmms-eval's ``llava_hf`` runs without it, while its ``qwen2_vl`` needs it (the Qwen2-VL processor loads a video
processor that requires torchvision). Checked with lmms-eval 0.7.3 and torch 2.13.0+cpu: the constraint kept
torch, torchvision 0.28.0 came from PyPI, and ``llava_hf`` ran on CPU once it was removed.

Example
-------
``vlselect eval lmms --model runs/lora/final --tasks mme,pope --out runs/lora/lmms`` prints (on a CUDA machine)::

    /path/to/python -m lmms_eval --model llava_hf --model_args pretrained=runs/lora/final,device=cuda,device_map=cuda
        --tasks mme,pope --batch_size 1 --output_path runs/lora/lmms --log_samples --seed 0

``--run`` runs it, and ``vlselect eval lmms-import runs/lora/lmms/.../*_results.json --out runs/lora/results.json
--reference llava-1.5-7b-lora`` turns its output into a vlselect ``results.json`` with relative performance.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from vlselect.errors import ConfigError, VlselectError
from vlselect.evaluate.metrics import percent_mean

# vlselect family → lmms-eval model name
LMMS_MODELS = {"llava": "llava_hf", "qwen2-vl": "qwen2_vl", "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl"}

# Scale of each lmms-eval metric (lmms-eval 0.7.3's task YAMLs and aggregation functions):
# "fraction" = a value in [0, 1], imported × 100 as percent; "percent" = already 0-100, imported as is;
# "points" = a score on its own scale (MME: the sum of per-subtask accuracy + accuracy+, ~1500 of 2000 for
# perception), imported as is and kept out of percent means.
METRIC_SCALES: dict[str, str] = {
    "exact_match": "fraction",  # vqav2, gqa, textvqa, vizwiz_vqa, scienceqa_img, ok_vqa, ai2d
    "pope_accuracy": "fraction", "pope_precision": "fraction", "pope_recall": "fraction",
    "pope_f1_score": "fraction", "pope_yes_ratio": "fraction",
    "mme_perception_score": "points", "mme_percetion_score": "points", "mme_cognition_score": "points",
    "gpt_eval_score": "percent",  # mmbench_*: overall_acc * 100; mmvet: overall score * 100
    "gpt_eval_llava_all": "percent", "gpt_eval_llava_conv": "percent", "gpt_eval_llava_detail": "percent",
    "gpt_eval_llava_complex": "percent",  # llava_in_the_wild: model / GPT-4 score * 100
    "seed_image": "fraction", "seed_video": "fraction", "seed_all": "fraction",
    "mmmu_acc": "fraction",
    "relaxed_overall": "fraction", "relaxed_human_split": "fraction", "relaxed_augmented_split": "fraction",
    "anls": "fraction",
}
SCALES = ("fraction", "percent", "points")
_FACTOR = {"fraction": 100.0, "percent": 1.0, "points": 1.0}


class LmmsEvalError(VlselectError):
    """lmms-eval failed or wrote no results."""


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


def default_device() -> str:
    """``"cuda"`` where torch sees a GPU, else ``"cpu"`` (lmms-eval's wrappers default to CUDA and fail on CPU)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_model_args(text: str | None) -> dict[str, str]:
    """``"k=v,k2=v2"`` → ``{"k": "v", "k2": "v2"}`` (lmms-eval's ``--model_args`` syntax).

    Raises
    ------
    ConfigError
        An item without ``=`` or with an empty key.
    """
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"--model-args item {item!r}: write KEY=VALUE pairs separated by commas, e.g. "
                              "--model-args attn_implementation=sdpa,dtype=float16")
        out[k.strip()] = v.strip()
    return out


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
    device: str | None = None,
    include_path=None,
    python: str | None = None,
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
        Extra ``--model_args`` entries (e.g. ``{"attn_implementation": "sdpa"}``); they override the defaults
        (``device_map=auto`` here gives single-process pipeline parallelism over several GPUs).
    num_processes : int
        > 1 runs ``python -m accelerate.commands.launch --num_processes N -m lmms_eval`` (data parallel, one
        GPU per process; no device is set then).
    device : str, optional
        ``device`` and ``device_map`` for a single process; default :func:`default_device`.
    include_path : path-like or list, optional
        Folder(s) of extra task YAMLs (``--include_path``), e.g. an offline task over local files.
    python : str, optional
        Interpreter; default the one vlselect runs in (``sys.executable``), where lmms-eval must be installed.

    Returns
    -------
    list of str
    """
    model_dir = Path(model_dir)
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not tasks:
        raise ConfigError("no lmms-eval tasks given; pass --tasks, e.g. --tasks mme,pope")
    if num_processes < 1:
        raise ConfigError(f"--num-processes {num_processes}: give 1 or more")
    if lmms_model is None:
        family = _family(model_dir)
        if family not in LMMS_MODELS:
            raise ConfigError(f"{model_dir}: no lmms-eval wrapper known for model family {family!r}; pass --lmms-model")
        lmms_model = LMMS_MODELS[family]
    margs: dict = {"pretrained": str(model_dir)}
    if num_processes == 1:
        dev = device or default_device()
        margs.update(device=dev, device_map=dev)
    margs.update(extra_model_args or {})
    for k, v in margs.items():
        if "," in str(v):
            raise ConfigError(f"model argument {k}={v!r} holds a comma, which lmms-eval's --model_args cannot carry; "
                              "rename the path or value")
    py = python or sys.executable
    head = ([py, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes), "-m", "lmms_eval"]
            if num_processes > 1 else [py, "-m", "lmms_eval"])
    cmd = head + [
        "--model", lmms_model,
        "--model_args", ",".join(f"{k}={v}" for k, v in margs.items()),
        "--tasks", ",".join(tasks),
        "--batch_size", str(batch_size),
        "--output_path", str(out_dir),
        "--log_samples",
        "--seed", str(seed),
    ]
    if include_path:
        paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
        for p in paths:
            if not Path(p).is_dir():
                raise ConfigError(f"--include-path {p}: no such folder; pass the folder that holds your task YAMLs")
        cmd += ["--include_path", ",".join(str(Path(p).resolve()) for p in paths)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    return cmd


def format_command(cmd: list[str]) -> str:
    """Shell-quoted one-line form of a command."""
    return " ".join(shlex.quote(c) for c in cmd)


def find_results(out_dir, since: float = 0.0) -> list[Path]:
    """lmms-eval results files (``*_results.json`` under ``out_dir``) written at or after ``since`` (epoch s),
    oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.rglob("*results*.json") if p.is_file() and p.stat().st_mtime >= since]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def run_lmms_eval(cmd: list[str], out_dir, *, echo=print, env: dict | None = None) -> Path:
    """Run an lmms-eval command, streaming its output (also kept in ``OUT/lmms_eval.log``); return the results
    file it wrote.

    Raises
    ------
    LmmsEvalError
        lmms-eval exited non-zero, or exited 0 without writing a results file (it does so after a traceback, e.g.
        a model that cannot load on this device); the message quotes the end of its output.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "lmms_eval.log"
    start = time.time() - 1.0  # file mtimes can be coarser than the clock
    tail: list[str] = []
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            echo(line.rstrip("\n"))
            tail = (tail + [line.rstrip("\n")])[-15:]
        rc = proc.wait()
    found = find_results(out_dir, start)
    last = "\n  ".join(tail[-8:])
    if rc != 0:
        raise LmmsEvalError(f"lmms-eval exited with code {rc} (full output in {log}); its last lines:\n  {last}")
    if not found:
        raise LmmsEvalError(f"lmms-eval exited 0 but wrote no results file under {out_dir}, so it failed (it exits 0 "
                            f"after a traceback; full output in {log}); its last lines:\n  {last}")
    return found[-1]


def _pick_metric(task: str, metrics: dict, override: str | None) -> tuple[str, float]:
    nums = {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and "stderr" not in k}
    if override is not None:
        for k, v in nums.items():
            if k == override or k.split(",")[0] == override:
                return k, v
        raise ConfigError(f"lmms-eval task {task!r} has no metric {override!r} (it has: {', '.join(nums) or 'none'})")
    low = task.lower()
    prefs = (["perception", "percetion"] if low.startswith("mme") else ["pope_f1", "f1"] if low.startswith("pope") else []) + \
        ["exact_match", "accuracy", "acc", "gpt_eval_score", "gpt_eval_llava_all", "anls", "relaxed_overall", "score"]
    for pref in prefs:
        for k, v in nums.items():
            if pref in k.split(",")[0]:
                return k, v
    if len(nums) == 1:
        return next(iter(nums.items()))
    raise ConfigError(f"lmms-eval task {task!r}: cannot tell which metric is its score among {', '.join(nums)}; "
                      f"pass --metric {task}=NAME")


def metric_scale(task: str, metric: str, scales: dict[str, str] | None = None) -> str:
    """The scale (``fraction`` / ``percent`` / ``points``) of ``metric`` of ``task``: ``scales[task]`` or
    ``scales[metric]`` if given, else :data:`METRIC_SCALES`.

    Raises
    ------
    ConfigError
        The metric is not in the table and not declared (nothing is guessed from the value).
    """
    scales = scales or {}
    for key in (task, metric):
        if key in scales:
            if scales[key] not in SCALES:
                raise ConfigError(f"--scale {key}={scales[key]}: choose one of {', '.join(SCALES)}")
            return scales[key]
    if metric in METRIC_SCALES:
        return METRIC_SCALES[metric]
    raise ConfigError(f"lmms-eval task {task!r}: the scale of its metric {metric!r} is not known to vlselect; declare "
                      f"it with --scale {task}=fraction (a 0-1 value, imported x100), --scale {task}=percent (already "
                      f"0-100) or --scale {task}=points (its own scale, kept out of percent means)")


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


def import_lmms_results(path, out_path=None, *, metrics: dict[str, str] | None = None, reference=None,
                        scales: dict[str, str] | None = None) -> dict:
    """Turn an lmms-eval results JSON (``{"results": {task: {"metric,filter": value}}}``) into a vlselect
    ``results.json`` (``{"sets": {task: {"metric", "score", "scale"}}}``), so that ``vlselect eval summarize`` and
    pinned references (:mod:`vlselect.evaluate.references`) apply to real benchmarks.

    The score of a task is ``metrics[task]`` if given, else the first of: MME perception score, POPE F1,
    ``exact_match`` / ``accuracy`` / ``gpt_eval_score`` / ... , or the only numeric metric. Its scale comes from
    :data:`METRIC_SCALES` or ``scales`` (task or metric name → ``fraction``/``percent``/``points``); an unknown
    metric is refused, never guessed from its value. Fractions become percent; ``mean_score`` is over percent-scale
    sets only (:func:`percent_mean`). With ``reference`` (a results.json or a pinned name) relative performance is
    added (:func:`add_relative`).
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
            raise ConfigError(f"{path}: results[{task!r}] is not an object of metrics; pass an lmms-eval results file")
        key, value = _pick_metric(task, m, (metrics or {}).get(task))
        name = key.split(",")[0]
        scale = metric_scale(task, name, scales)
        if scale == "fraction" and not -1e-9 <= value <= 1.0 + 1e-9:
            raise ConfigError(f"{path}: task {task!r} metric {name!r} = {value} is declared a 0-1 fraction but is not; "
                              f"declare its scale with --scale {task}=percent or --scale {task}=points")
        sets[task] = {"metric": f"lmms:{name}", "score": value * _FACTOR[scale], "scale": "points" if scale == "points" else "percent"}
    if not sets:
        raise ConfigError(f"{path}: no task results inside")
    mean, apart = percent_mean(sets)
    res = {"model": str(data.get("model_name") or data.get("config", {}).get("model_args", "")), "source": str(path),
           "sets": sets, "mean_score": mean, "mean_excludes": apart}
    if reference is not None:
        add_relative(res, reference, source=str(path))
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        tmp.replace(out_path)
    return res
