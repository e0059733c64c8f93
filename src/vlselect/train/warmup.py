"""The warm-up reference model whose per-sample gradients ICONS, TIVE and LESS score data with.

Two rules, both LoRA fine-tunes of the base VLM with LLaVA-1.5's LoRA recipe (r 128, alpha 256, dropout 0.05, every
linear layer of the language model, projector trained in full, AdamW, cosine schedule with 3 % warm-up, 1 epoch,
per-device batch 16):

* **TIVE** (tive.md §1-2): draw ``m = floor(N * 0.08 / T)`` records **per task** (T tasks, equal count, not
  proportional), tasks in order of first appearance, records drawn uniformly without replacement, and train one full
  epoch on them with lr **2e-5**. The official script uses Python's unseeded ``random.sample``; here the draw is
  seeded. A task with fewer than ``m`` records makes the official script raise; by default all of that task is taken
  and the shortfall is shared equally by the other tasks (``strict_official=True`` raises, as the original).
* **ICONS** (icons.md §1): train on the **whole pool** with lr **2e-4**, the cosine schedule laid out for the whole
  epoch, and keep the checkpoint at a given step (``checkpoint-500`` in the official run: 500 steps x 128 samples,
  9.6 % of LLaVA-665K's epoch, learning rate still near its peak). By default the step is that same fraction of this
  pool's epoch (rounded, at least 1); ``step=500`` gives the literal step.

Output folder (``--out``)::

    warmup.json            the rule, its parameters, the step, the indices file, the paths below
    warmup_indices.json    pool rows trained on (TIVE: in the order drawn; ICONS: null = all)
    warmup_subset.json     TIVE: the warm-up records as a LLaVA JSON (the official stage-1 output)
    run/                   the training run (checkpoints; see vlselect.train.lora)
    lora/                  the PEFT adapter at the chosen step (LoRA A/B + the projector as modules_to_save):
                           pass it as ``--lora`` to ``vlselect features gradients``
    adam_state.pt          ``{param_name: {"exp_avg", "exp_avg_sq"}}`` of the LoRA weights at that step (LESS)

References
----------
tive.md §1 (``select_warm_up_data.py``), §2 (``finetune_lora.sh``); icons.md §1 (``7b_finetune_lora.sh``,
``checkpoint-500``).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vlselect.errors import ConfigError, PoolError

#: TIVE's ``--sample_ratio`` default (tive.md §1).
TIVE_RATIO = 0.08
#: ICONS's checkpoint (icons.md §1) and the run it comes from: 8 GPUs x 16 per device, LLaVA-665K.
ICONS_STEP = 500
ICONS_GLOBAL_BATCH = 128
LLAVA_665K = 665_298
#: The fraction of the epoch that ICONS's checkpoint-500 has seen (500 x 128 / 665,298 = 0.0962).
ICONS_EPOCH_FRACTION = ICONS_STEP * ICONS_GLOBAL_BATCH / LLAVA_665K

#: LoRA / optimiser defaults per rule (tive.md §2, icons.md §1).
RULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "tive": {"lr": 2e-5, "r": 128, "lora_alpha": 256, "lora_dropout": 0.05, "batch_size": 16, "epochs": 1,
             "warmup_ratio": 0.03, "schedule": "cosine", "weight_decay": 0.0},
    "icons": {"lr": 2e-4, "r": 128, "lora_alpha": 256, "lora_dropout": 0.05, "batch_size": 16, "epochs": 1,
              "warmup_ratio": 0.03, "schedule": "cosine", "weight_decay": 0.0},
}
RULES = tuple(RULE_DEFAULTS)


def tive_warmup_indices(tasks: Sequence[str | None], ratio: float = TIVE_RATIO, *, seed: int = 0,
                        strict_official: bool = False) -> np.ndarray:
    """TIVE's warm-up sample: an equal count per task, drawn without replacement (tive.md §1).

    Parameters
    ----------
    tasks:
        Task label of every pool row (TIVE's ``record["dataset"]``).
    ratio:
        Fraction of the pool (``--sample_ratio``, 0.08).
    seed:
        Seeds the draw (the official script is unseeded).
    strict_official:
        Raise, as the official script does, when a task has fewer records than the per-task count; by default that
        task is taken whole and its shortfall is shared equally among the other tasks (in task order).

    Returns
    -------
    numpy.ndarray
        int64 row indices: tasks in order of first appearance, within a task in the order drawn. Its length is
        ``T * floor(N * ratio / T)`` (less only if the whole pool is smaller).

    Examples
    --------
    >>> tive_warmup_indices(["a"] * 50 + ["b"] * 50, 0.1, seed=0).shape
    (10,)
    """
    if not 0 < ratio <= 1:
        raise ConfigError(f"warm-up ratio {ratio} must be in (0, 1] (TIVE uses 0.08)")
    labels = list(tasks)
    n = len(labels)
    if n == 0:
        raise PoolError("the pool is empty: nothing to draw a warm-up set from")
    none_rows = [i for i, t in enumerate(labels) if t is None or t == ""]
    if none_rows:
        raise PoolError(f"row {none_rows[0]} has no task label ({len(none_rows)} rows in all); TIVE draws an equal "
                        "count per task; fix: give every record a task (e.g. a 'dataset' field and --task-field "
                        "dataset)")
    order: list[str] = []
    rows: dict[str, list[int]] = {}
    for i, t in enumerate(labels):
        if t not in rows:
            rows[t] = []
            order.append(t)
        rows[t].append(i)
    T = len(order)
    m = int(n * ratio / T)
    quota = {t: m for t in order}
    short = [t for t in order if len(rows[t]) < m]
    if short and strict_official:
        t = short[0]
        raise PoolError(f"task '{t}' has {len(rows[t])} records, fewer than the {m} per task that the warm-up draw "
                        f"needs (ValueError in the official script); fix: lower --ratio, or drop --strict-official")
    if short:
        total = m * T
        fixed = {t: len(rows[t]) for t in short}
        free = [t for t in order if t not in fixed]
        # water-filling: give every remaining task an equal share of what is left, capped at its size
        while free:
            left = total - sum(fixed.values())
            share = left // len(free)
            capped = [t for t in free if len(rows[t]) < share]
            if not capped:
                extra = left - share * len(free)
                for k, t in enumerate(free):
                    fixed[t] = share + (1 if k < extra else 0)
                break
            for t in capped:
                fixed[t] = len(rows[t])
            free = [t for t in free if t not in capped]
        quota = fixed
    rng = np.random.default_rng(int(seed))
    out: list[int] = []
    for t in order:
        idx = np.asarray(rows[t], dtype=np.int64)
        take = min(quota[t], idx.size)
        if take:
            out.extend(idx[rng.choice(idx.size, size=take, replace=False)].tolist())
    return np.asarray(out, dtype=np.int64)


def icons_warmup_step(n_pool: int, *, batch_size: int = 16, grad_accum: int = 1, world_size: int = 1,
                      step: int | None = None, epochs: int = 1) -> tuple[int, int]:
    """ICONS's checkpoint step for a run over the whole pool (icons.md §1).

    Returns
    -------
    (step, total_steps)
        ``total_steps`` of the whole run (the cosine schedule is laid out over it); ``step`` is the given one, or
        ``max(1, round(ICONS_EPOCH_FRACTION * steps_per_epoch))``: the share of the epoch ICONS's checkpoint-500
        has seen.

    Examples
    --------
    >>> icons_warmup_step(665_298, batch_size=16, world_size=8)
    (500, 5198)
    """
    per_step = batch_size * grad_accum * world_size
    if n_pool < 1 or per_step < 1:
        raise ConfigError(f"cannot lay out a warm-up run over {n_pool} records with {per_step} samples per step")
    per_epoch = math.ceil(n_pool / per_step)
    total = per_epoch * epochs
    if step is None:
        step = max(1, round(ICONS_EPOCH_FRACTION * per_epoch))
    if not 1 <= int(step) <= total:
        raise ConfigError(f"warm-up step {step} is outside the run's 1..{total} optimiser steps ({n_pool} records, "
                          f"{per_step} per step); fix: pass a smaller --step or leave it out")
    return int(step), total


@dataclass
class WarmupResult:
    """What :func:`train_warmup` produced (see the module docstring for the folder)."""

    rule: str
    out_dir: Path
    base_model: Path
    lora_dir: Path
    adam_state: Path | None
    step: int
    total_steps: int
    n_train: int
    indices_file: Path

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _atomic_json(path: Path, obj) -> None:
    from vlselect.artifact import atomic_write_json

    atomic_write_json(path, obj, indent=1, sort_keys=False)


def export_checkpoint(model_dir, checkpoint: Path, out_dir: Path, *, r: int, lora_alpha: int, lora_dropout: float,
                      target_modules=None, train_projector: bool = True, device=None) -> tuple[Path, Path | None]:
    """Turn a ``vlselect.train.lora`` checkpoint (``trainable.pt``, ``optimizer.pt``) into a PEFT adapter folder
    (``out_dir/lora``) and a LESS Adam state (``out_dir/adam_state.pt``, LoRA weights only).

    The adapter is rebuilt with the same LoRA configuration the run used, then the checkpoint's trainable tensors
    are copied in. Intermediate checkpoints of LLaVA runs lack the adapter files too (icons.md §1, "What the
    checkpoint folder must contain"); this is the documented version of that manual step.
    """
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model

    from vlselect.models import load_vlm
    from vlselect.train.lora import PROJECTOR_NAMES, _lora_target_regex, load_trainable

    loaded = load_vlm(model_dir, dtype=torch.float32, device=device or "cpu")
    model = loaded.model
    modules_to_save = None
    if train_projector:
        names = {n for n, _ in model.named_modules()}
        modules_to_save = [p.split(".")[-1] for p in PROJECTOR_NAMES if any(n.endswith(p) for n in names)] or None
    cfg = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none",
                     target_modules=_lora_target_regex(target_modules), modules_to_save=modules_to_save)
    from vlselect.models.peft_wrap import quiet_peft_wrap

    with quiet_peft_wrap():
        pm = get_peft_model(model, cfg)
    trainable = load_trainable(pm, checkpoint, f"fix: pass the same LoRA options as the warm-up run (this model "
                                               f"has r={r})")
    params = dict(pm.named_parameters())
    from vlselect.artifact import atomic_torch_save, replace_dir

    lora_dir = out_dir / "lora"
    tmp = out_dir / ".tmp-lora"
    shutil.rmtree(tmp, ignore_errors=True)
    pm.save_pretrained(str(tmp))
    replace_dir(tmp, lora_dir)
    adam_path = None
    opt_file = checkpoint / "optimizer.pt"
    if opt_file.exists():
        opt = torch.load(opt_file, map_location="cpu")
        # train_lora's groups: every trainable parameter except the projector, then the projector (named order)
        names = [n for n, p in pm.named_parameters() if n in trainable]
        proj = [n for n in names if any(x in n for x in PROJECTOR_NAMES) and "lora_" not in n]
        rest = [n for n in names if n not in proj]
        ordered = rest + proj
        flat = [i for g in opt["param_groups"] for i in g["params"]]
        if len(flat) == len(ordered):
            state = {}
            for n, i in zip(ordered, flat):
                st = opt["state"].get(i)
                if st is not None and "lora_" in n and "exp_avg" in st:
                    if st["exp_avg"].shape != params[n].shape:
                        state = {}
                        break
                    state[n] = {"exp_avg": st["exp_avg"].float(), "exp_avg_sq": st["exp_avg_sq"].float()}
            if state:
                adam_path = out_dir / "adam_state.pt"
                atomic_torch_save(adam_path, state)
    return lora_dir, adam_path


def train_warmup(
    model_dir,
    pool,
    image_root,
    out_dir,
    *,
    rule: str = "tive",
    seed: int = 0,
    ratio: float = TIVE_RATIO,
    step: int | None = None,
    strict_official: bool = False,
    r: int | None = None,
    lora_alpha: int | None = None,
    lora_dropout: float | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    grad_accum: int = 1,
    max_length: int | None = None,
    progress: bool = True,
    device=None,
    train_fn: Callable[..., Any] | None = None,
    overwrite: bool = False,
) -> WarmupResult:
    """Train the warm-up reference model with TIVE's or ICONS's rule and export its adapter and Adam state.

    Parameters
    ----------
    model_dir:
        Base model directory.
    pool:
        The pool (file or :class:`vlselect.pool.Pool`).
    image_root:
        Folder the image paths are relative to.
    out_dir:
        Output folder (module docstring). Running again resumes (the training run resumes from its checkpoints).
    rule:
        ``"tive"`` or ``"icons"``.
    seed:
        Seeds the TIVE draw and the training run.
    ratio:
        TIVE's warm-up fraction (0.08).
    step:
        ICONS: the checkpoint step (default: the 9.6 % of the epoch that checkpoint-500 is in the official run).
    strict_official:
        TIVE: raise when a task is too small, as the official script does.
    r, lora_alpha, lora_dropout, lr, batch_size:
        Override the rule's defaults (:data:`RULE_DEFAULTS`); tiny CPU runs use a small ``r``.
    train_fn:
        The trainer (default :func:`vlselect.train.lora.train_lora`); injectable for tests.
    overwrite:
        Recompute even if ``out_dir`` holds a warm-up of other inputs (otherwise an
        :class:`~vlselect.artifact.ArtifactMismatchError` naming what differs). A warm-up of the same inputs is
        resumed, or returned as is when finished.

    Returns
    -------
    WarmupResult

    Examples
    --------
    >>> res = train_warmup("tiny", "pool.json", "images", "warm", rule="tive", r=8)  # doctest: +SKIP
    >>> res.lora_dir  # doctest: +SKIP
    PosixPath('warm/lora')
    """
    if rule not in RULE_DEFAULTS:
        raise ConfigError(f"warm-up rule {rule!r} is unknown; use --rule tive or --rule icons")
    d = dict(RULE_DEFAULTS[rule])
    for k, v in (("r", r), ("lora_alpha", lora_alpha), ("lora_dropout", lora_dropout), ("lr", lr),
                 ("batch_size", batch_size)):
        if v is not None:
            d[k] = v
    if r is not None and lora_alpha is None:
        d["lora_alpha"] = 2 * d["r"]  # keep the recipe's alpha / r = 2
    if isinstance(pool, (str, Path)):
        from vlselect.pool import open_pool

        pool = open_pool(pool, image_root=image_root)
    from vlselect.executor import current

    ex = current()
    world = ex.world_size
    out = Path(out_dir)
    art = _warmup_artifact(out, model_dir, pool, rule=rule, params=d, seed=seed, ratio=ratio, step=step,
                           strict_official=strict_official, grad_accum=grad_accum, max_length=max_length, world=world)
    with contextlib.ExitStack() as held:
        if ex.is_main:  # one writer (rank 0): the folder is locked and checked against the key, or cleared
            held.enter_context(art.writing(overwrite=overwrite))
        ex.barrier()
        if art.done:
            return _result_from(out / "warmup.json")
        return _run_warmup(ex, art, model_dir, pool, image_root, out, rule=rule, d=d, seed=seed, ratio=ratio,
                           step=step, strict_official=strict_official, grad_accum=grad_accum,
                           max_length=max_length, progress=progress, device=device, train_fn=train_fn)


def _warmup_artifact(out: Path, model_dir, pool, *, rule, params, seed, ratio, step, strict_official, grad_accum,
                     max_length, world):
    """The warm-up folder's :class:`~vlselect.artifact.Artifact`: the key covers the base model's hash, the pool's
    fingerprint, the rule and every option, and the code version."""
    from vlselect.artifact import Artifact, code_version
    from vlselect.models.load import model_hash
    from vlselect.train.lora import CODE_MODULES

    fp = getattr(pool, "fingerprint", None)
    if not fp:
        from dataclasses import is_dataclass

        from vlselect.artifact import digest

        fp = digest([asdict(x) if is_dataclass(x) else repr(x) for x in pool])
    model = model_hash(model_dir) if Path(model_dir).is_dir() else str(model_dir)  # a missing model fails in training
    config = {"rule": rule, "params": params, "seed": seed, "ratio": ratio if rule == "tive" else None,
              "step": step, "strict_official": strict_official, "grad_accum": grad_accum, "max_length": max_length,
              "world_size": world}
    return Artifact(out, stage="warmup", config=config, inputs={"model": model, "pool": fp},
                    code=code_version(*CODE_MODULES), done_marker="warmup.json")


def _result_from(path: Path) -> WarmupResult:
    data = json.loads(path.read_text())
    fields = {f: data[f] for f in WarmupResult.__dataclass_fields__}
    for f in ("out_dir", "base_model", "lora_dir", "adam_state", "indices_file"):
        fields[f] = None if fields[f] is None else Path(fields[f])
    return WarmupResult(**fields)


def _run_warmup(ex, art, model_dir, pool, image_root, out: Path, *, rule, d, seed, ratio, step, strict_official,
                grad_accum, max_length, progress, device, train_fn) -> WarmupResult:
    world = ex.world_size
    n = len(pool)
    if rule == "tive":
        tasks = [pool.task(i) for i in range(n)] if hasattr(pool, "task") else [s.task for s in pool]
        indices = tive_warmup_indices(tasks, ratio, seed=seed, strict_official=strict_official)
        if indices.size == 0:
            raise ConfigError(f"the TIVE warm-up set is empty ({n} records x {ratio} over the tasks); fix: raise "
                              "--ratio or use a larger pool")
        idx_list: list[int] | None = indices.tolist()
        n_train = len(idx_list)
        per_step = d["batch_size"] * grad_accum * world
        total = math.ceil(n_train / per_step) * d["epochs"]
        at = total
        if hasattr(pool, "fingerprint") and ex.is_main:
            from vlselect.pool import write_llava_subset

            write_llava_subset(pool, indices, out / "warmup_subset.json")
    else:
        idx_list = None
        n_train = n
        at, total = icons_warmup_step(n, batch_size=d["batch_size"], grad_accum=grad_accum, world_size=world,
                                      step=step, epochs=d["epochs"])
    if ex.is_main:
        _atomic_json(out / "warmup_indices.json", idx_list)
    if train_fn is None:
        from vlselect.train.lora import train_lora as train_fn
    run_dir = out / "run"
    cp = run_dir / f"checkpoint-{at}"
    if not (cp / "trainable.pt").exists():
        from vlselect.train.lora import _checkpoints

        done = [int(p.name.split("-")[-1]) for p in _checkpoints(run_dir)] if run_dir.exists() else []
        start = max(done) if done else 0
        if start > at:
            raise ConfigError(f"the warm-up run in '{run_dir}' is past step {at} but has no checkpoint-{at}; fix: use "
                              "a new --out")
        train_fn(model_dir, pool, image_root, run_dir, indices=idx_list, r=d["r"], lora_alpha=d["lora_alpha"],
                 lora_dropout=d["lora_dropout"], lr=d["lr"], epochs=d["epochs"], batch_size=d["batch_size"],
                 grad_accum=grad_accum, warmup_ratio=d["warmup_ratio"], schedule=d["schedule"],
                 weight_decay=d["weight_decay"], save_steps=[at], seed=seed, stop_after_steps=at - start,
                 max_length=max_length, progress=progress, device=device)
    ex.barrier()
    if not (cp / "trainable.pt").exists():
        raise ConfigError(f"the warm-up run did not write '{cp}'; fix: check the training log, or use a new --out")
    if not ex.is_main:  # under torchrun every rank trains; rank 0 alone exports (one writer per folder)
        ex.barrier()
        return _result_from(out / "warmup.json")
    lora_dir, adam = export_checkpoint(model_dir, cp, out, r=d["r"], lora_alpha=d["lora_alpha"],
                                       lora_dropout=d["lora_dropout"], device=device)
    res = WarmupResult(rule=rule, out_dir=out, base_model=Path(model_dir), lora_dir=lora_dir, adam_state=adam,
                       step=at, total_steps=total, n_train=n_train, indices_file=out / "warmup_indices.json")
    _atomic_json(out / "warmup.json", {**res.to_json(), "params": d, "seed": seed, "ratio": ratio if rule == "tive"
                                       else None, "pool_fingerprint": getattr(pool, "fingerprint", None),
                                       "key": art.key})  # the done marker, written last
    ex.barrier()
    return res
