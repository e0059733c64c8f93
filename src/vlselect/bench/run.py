"""``vlselect bench``: the whole loop on the synthetic world, every method at every budget, with a report.

Stages (each cached by a hash of its inputs, see :mod:`vlselect.bench.stages`):

1. ``world``: the training pool and evaluation sets (:func:`vlselect.world.make_world`); ``valworld``: a small
   world of another seed whose evaluation sets serve as the *validation* (target-task) sets of ICONS and LESS, so
   the test sets are never looked at by a method.
2. the base model: the world's foundation shipped with the package (``base="foundation"``, the default,
   :mod:`vlselect.models.foundation`, checked against its fingerprint), a model directory, or with
   ``base="captions"`` the earlier recipe: a ``captions`` pool and a tiny LLaVA pre-trained on it (``base``).
3. ``activations``: COINCIDE activations plus loss / perplexity / EL2N, and SemDeDup's / D2-Pruning's inputs
   (last-token and mean embeddings, probability margin; :mod:`vlselect.features.embeddings`) from one pass of the
   base model.
4. ``warmup`` and ``gradients``: TIVE's warm-up LoRA on 8% of the pool, then projected per-sample gradients (and
   their norms) of the pool (every LoRA A/B: ICONS, LESS and the composites; and, from the same forward and backward
   pass, the self-attention LoRA only, as TIVE takes them) and of the validation sets (``val_gradients``).
5. ``select``: every method at every budget (one scoring pass per method); ICONS, LESS and the composites after
   the full-pool runs, which decide the sets they target (``val_targets``).
6. ``train`` and ``eval``: fine-tuning of the base model (``adapter``: LoRA on the language model, the projector in
   full, the vision tower frozen, by default) on each subset (and on the full pool, the reference), evaluated on
   the world's evaluation sets; several seeds at the budgets in ``seed_budgets``.
7. ``results.json``, ``results.csv`` and ``report.html``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from vlselect.artifact import atomic_open, atomic_save_npy, atomic_write_json, code_version
from vlselect.bench.stages import StageCache, measure
from vlselect.errors import ConfigError, VlselectError

#: Every method the bench knows (``vlselect bench --methods all``).
ALL_METHODS = (
    "random", "random_stratified", "length", "el2n", "perplexity", "semdedup", "d2pruning", "coincide", "icons",
    "tive", "less", "coincide_icons", "icons_coincide", "less_coincide", "less_tive", "less_support",
    "less_tive_support",
)
#: The bench's default: the methods the targets judge (random, COINCIDE, ICONS, TIVE), LESS and the two
#: composites that won on the 20,000-record pool (benchmarks/RESULTS.md, "Random's band against the pool").
#: Length, EL2N, perplexity, SemDeDup and D2-Pruning scored below random at every budget in both worlds measured
#: (benchmarks/RESULTS.md, "A second world"); ``random_stratified`` scored at or below random at every budget on
#: the mean of two and of four worlds; ``coincide_icons``, ``icons_coincide`` and ``less_support`` (defaults until
#: 2026-12-06) stayed below ``less_tive`` at every budget, and with them the bench on the 20,000-record pool takes
#: an hour instead of 45 minutes. ``--methods all`` runs them all.
DEFAULT_METHODS = ("random", "coincide", "icons", "tive", "less", "less_coincide", "less_tive")
#: vlselect's own composite methods (judged against every single method).
COMPOSITES = ("coincide_icons", "icons_coincide", "less_coincide", "less_tive", "less_support", "less_tive_support")
#: methods that read the validation sets' gradients (their targets)
VAL_METHODS = ("icons", "less", *COMPOSITES)
#: methods that read TIVE's own gradients (self-attention LoRA only, tive.md §3)
TIVE_GRADS = {"tive", "less_tive", "less_tive_support"}
#: The name of the clean-pool reference run (not a method: it reads the world's answer-correctness metadata).
CLEAN = "clean pool"
#: The name of the zero-shot reference: the base model evaluated without any fine-tuning (what needs no data).
ZERO_SHOT = "base model (zero-shot)"


@dataclass
class BenchConfig:
    """The recipe of a benchmark run. :meth:`quick` is what ``vlselect bench --quick`` (and the demo) runs.

    The defaults follow LLaVA-1.5's stage 2 on the world: the base is the world's foundation (``base="foundation"``,
    :mod:`vlselect.models.foundation`: a language model pre-trained on the world's text, a vision tower pre-trained
    on its pictures and an aligned projector, shipped with the package); every fine-tuning run keeps the vision
    tower frozen and trains the projector in full and the language model with LoRA (``adapter="lora"``,
    ``lora_r=16``, alpha ``2 r``; on every linear layer of the language model, or the layers ``lora_targets`` names,
    e.g. ``("gate_proj", "up_proj", "down_proj")``) for one epoch (LLaVA-1.5's count) at lr 3e-4 (the foundation answers most kinds already, and at 1e-3 the
    fine-tune unlearned counting by colour, benchmarks/RESULTS.md, issue 12), the projector at its own rate
    ``projector_lr=2e-5`` (LLaVA-1.5's LoRA script's ``mm_projector_lr``; ``None`` trains it at ``lr``, the bench
    before 2026-12-06: small subsets then lost more of what the foundation answered), batch 8 (LLaVA-1.5's recipe scaled would be 32;
    the foundation leaves some answer formats to the fine-tune, and at batch 32 a small subset does not get the
    optimizer steps to learn them: benchmarks/RESULTS.md, issue 12), its steps grouped by token
    count (``length_group=4``, :func:`vlselect.train.data.global_schedule`: a batch is 14% padding instead of 34%,
    1.3x faster training; measured not to lower the full pool's or random's scores, benchmarks/RESULTS.md;
    ``length_group=0`` is LLaVA's plain shuffle). ``adapter="full"``
    fine-tunes the whole language model instead. ``base="captions"`` is the earlier recipe (a random tiny model
    ``model_size`` pre-trained on ``pretrain_size`` captions with every part trained, then fine-tuned with the
    vision tower named in ``modules_to_save``); ``base`` may also be a model directory. ``clean_reference`` adds
    one run on the pool without its wrong answers (the world's metadata: an oracle that measures the effect of the
    noise, not a method; off by default since 2026-12-06, when the bench's pool doubled: one full-pool-sized run a
    world, 3 minutes of the bench, and no target reads it). ``learned_margin``: an evaluation set counts in the relative performance only when the
    full-pool reference beats its chance level (the share of its most common answer) by at least this many
    points; a set that even the full pool does not learn cannot tell subsets apart. ``d2_score``: D2-Pruning's
    importance score, ``"margin"`` (the one-checkpoint probability margin of COINCIDE's ``score_aum.py``, free from
    the activation pass) or ``"aum"`` (the area under the margin recorded while fine-tuning the base model on the
    whole pool with the run recipe, seed ``seed``: one more full-pool training run). ``zero_shot_reference``
    evaluates the base model itself, with no fine-tuning, beside the runs (one evaluation): a relative score is
    then read against what needs no data at all (benchmarks/RESULTS.md: a strong foundation answers some sets
    zero-shot as well as after the full pool). ``val_targets``: the validation sets whose gradients ICONS, LESS
    and the composites target: ``"counted"`` (default) the sets the relative performance counts, as the papers
    target the benchmarks they report (known once the full pool is trained, so these methods select after the
    full-pool runs), or ``"all"`` every evaluation set, learned or not (the bench before 2026-12-04: ICONS then
    follows sets that no subset can improve, benchmarks/RESULTS.md). ``size``: the pool's records, 20,000 by
    default (at 10,000 the full pool was not saturated and random kept 87.8% of it at 20%, below the real-scale
    band; benchmarks/RESULTS.md, "Random's band against the pool"). ``seed_budgets``: the budgets trained with every
    seed in ``seeds`` (the targets judge 10% and 20% on the mean over seeds); elsewhere the first seed alone.
    """

    size: int = 20000
    seed: int = 0
    eval_size: int = 200
    val_size: int = 40
    pretrain_size: int = 40000
    pretrain_epochs: int = 1
    model_size: str = "b"
    family: str = "llava"
    image_size: int = 24
    init_std: float | None = None
    adapter: str = "lora"
    pretrain_lr: float = 1e-3
    pretrain_modules_to_save: tuple[str, ...] = ("vision_tower",)
    modules_to_save: tuple[str, ...] = ()
    methods: tuple[str, ...] = DEFAULT_METHODS
    budgets: tuple[float, ...] = (0.05, 0.1, 0.2)
    seeds: tuple[int, ...] = (0, 1, 2)
    seed_budgets: tuple[float, ...] = (0.1, 0.2)
    epochs: int = 1
    lr: float = 3e-4
    projector_lr: float | None = 2e-5
    learned_margin: float = 10.0
    lora_r: int = 16
    lora_targets: tuple[str, ...] | None = None
    batch_size: int = 8
    length_group: int = 4
    grad_dim: int = 1024
    warmup_ratio: float = 0.08
    n_clusters: int | None = None
    jobs: int = 2
    max_new_tokens: int = 32
    d2_score: str = "margin"
    base: str = "foundation"
    clean_reference: bool = False
    zero_shot_reference: bool = True
    val_targets: str = "counted"

    @classmethod
    def quick(cls, **overrides: Any) -> "BenchConfig":
        base = dict(size=4000, eval_size=100, val_size=24, pretrain_size=16000, budgets=(0.1, 0.2), seeds=(0,),
                    seed_budgets=(), grad_dim=512, clean_reference=False)
        base.update(overrides)
        return cls(**base)

    def projector_rate(self) -> float:
        """The projector's fine-tuning rate: ``projector_lr``, or ``lr`` when it is not set."""
        return self.lr if self.projector_lr is None else self.projector_lr

    def recipe(self, *fields: str) -> dict[str, Any]:
        d = asdict(self)
        return {f: d[f] for f in fields}


def _projector_recipe(cfg: BenchConfig) -> dict[str, Any]:
    """The projector's own rate and LoRA's target layers in a fine-tuning stage's recipe, only when set: runs with
    the projector at ``lr`` (``projector_lr=None``) and LoRA on every linear layer of the language model keep the
    keys they had before these options existed."""
    return ({} if cfg.projector_lr is None else {"projector_lr": cfg.projector_lr}) | \
        ({} if cfg.lora_targets is None else {"lora_targets": list(cfg.lora_targets)})


def _target_modules(cfg: BenchConfig) -> str | None:
    """LoRA's target layers for ``train_lora``: None (every linear layer of the language model) unless
    ``lora_targets`` names some."""
    from vlselect.train.lora import language_model_targets

    return None if cfg.lora_targets is None else language_model_targets(cfg.lora_targets)


def _log_default(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(msg)


# ------------------------------------------------------------------------------------------------ helpers


def _eval_files(world: Path) -> list[Path]:
    return sorted((world / "eval").glob("*.json"))


def _eval_samples_as_pool(eval_file: Path) -> list:
    from vlselect.evaluate.sets import eval_set_as_samples

    return eval_set_as_samples(eval_file)


def _text_lengths(pool) -> np.ndarray:
    return np.asarray([sum(len(t["value"]) for t in s.conversations) for s in pool], dtype=np.float64)


def _set_threads() -> None:
    import torch

    torch.set_num_threads(1)


def _train_and_eval(job: dict[str, Any]) -> dict[str, Any]:
    """One fine-tuning run and its evaluation (runs in a worker process, one thread)."""
    _set_threads()
    from vlselect.evaluate import evaluate
    from vlselect.train import train_lora

    out = Path(job["out"])
    if job.get("zero_shot"):  # no training: the base model answers the evaluation sets as it is
        with measure() as cost:
            results = evaluate(job["base"], job["eval_files"], job["images"], out / "eval", progress=False,
                               max_new_tokens=job["max_new_tokens"], batch_size=job.get("eval_batch_size", 64))
        return {"scores": dict(_scores(results)), "train_loss": None, "samples": 0, "padding": None,
                "seconds": cost.seconds, "peak_rss_mb": cost.peak_rss_mb}
    with measure() as cost:
        indices = np.load(job["indices"]).tolist() if job.get("indices") else None
        res = train_lora(job["base"], job["pool"], job["images"], out / "train", indices=indices, r=job["r"],
                         adapter=job["adapter"], lora_alpha=2 * job["r"], lr=job["lr"], epochs=job["epochs"],
                         batch_size=job["batch_size"], length_group=job["length_group"],
                         seed=job["seed"], gradient_checkpointing=False, progress=False,
                         modules_to_save=job["modules_to_save"] or None,
                         projector_lr=job["projector_lr"], target_modules=job.get("target_modules"))
        results = evaluate(res.final_dir, job["eval_files"], job["images"], out / "eval", progress=False,
                           max_new_tokens=job["max_new_tokens"], batch_size=job.get("eval_batch_size", 64))
    _drop_weights(out / "train", keep=("train_result.json", "artifact.json"))
    return {"scores": {k: v for k, v in _scores(results).items()}, "train_loss": res.losses[-1] if res.losses else None,
            "samples": res.samples, "padding": res.padding, "seconds": cost.seconds, "peak_rss_mb": cost.peak_rss_mb}


def _drop_weights(folder: Path, keep: Sequence[str] = ()) -> None:
    """Delete a training folder's weights once evaluated (they are large and not needed for the table)."""
    import shutil

    if not folder.exists():
        return
    for p in folder.iterdir():
        if p.name in keep:
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _scores(results: dict) -> dict[str, float]:
    from vlselect.evaluate.sets import scores_of

    return scores_of(results)


# -------------------------------------------------------------------------------------------- the bench


def run_bench(out: str | os.PathLike, config: BenchConfig | None = None, *,
              log: Callable[[str], None] = _log_default, command: str | None = None,
              overwrite: bool = False) -> dict[str, Any]:
    """Run the benchmark into ``out`` and return the results dict (also saved as ``results.json``).

    Parameters
    ----------
    out : path-like
        Output folder: ``cache/`` (stages), ``results.json``, ``results.csv``, ``report.html``.
    config : BenchConfig
        The recipe (default: the full benchmark; :meth:`BenchConfig.quick` for the quick one).
    command : str, optional
        The command line shown in the report (default: ``vlselect bench`` with ``--quick`` for the quick form).
    overwrite : bool
        Recompute every stage instead of reusing the cached ones (a stage is reused only when its recipe and the
        code version match).

    Returns
    -------
    dict
        The results in the format :func:`vlselect.report.render_html` reads.
    """
    from vlselect.pool import open_pool
    from vlselect.report import jaccard_matrix, write_report
    from vlselect.select import get_method, run_method

    cfg = config or BenchConfig()
    for m in cfg.methods:
        get_method(m)  # unknown names fail before any work
    if cfg.d2_score not in ("margin", "aum"):
        raise ConfigError(f"d2_score={cfg.d2_score!r}: choose margin (score_aum.py's) or aum (training dynamics)")
    if cfg.val_targets not in ("counted", "all"):
        raise ConfigError(f"val_targets={cfg.val_targets!r}: choose counted (the sets the table counts, the default) "
                          "or all (every evaluation set)")
    out = Path(out)
    cache = StageCache(out / "cache", log=log, overwrite=overwrite)
    started = time.time()

    pretrained = _pretrained_base(cfg) if cfg.base != "captions" else None  # checked before any work

    # 1. worlds -------------------------------------------------------------------------------------------
    worlds = make_worlds(cache, cfg)
    world, valworld, captions = worlds["world"], worlds["valworld"], worlds["captions"]
    world_recipe, val_recipe, cap_recipe = worlds["recipes"]
    pool_path, images = world / "pool.json", world / "images"
    pool = open_pool(pool_path)
    tasks = np.asarray(pool.tasks)
    n = len(pool)

    # 2. the base model -------------------------------------------------------------------------------------
    if pretrained is not None:
        base, base_recipe, base_info = pretrained
    else:
        base, base_recipe, base_info = _caption_base(cfg, cache, captions, cap_recipe)

    # 3. activations and losses -------------------------------------------------------------------------------
    from vlselect.features import FeatureStore

    act_recipe = {"world": world_recipe, "base": base_recipe}
    acts_stage = {**act_recipe, "embeddings": True}  # the store's key; act_recipe keys the stages after it
    acts_dir, _ = cache.run("activations", acts_stage, lambda d: _extract_activations(base, pool_path, images, d),
                            label="activations and losses")
    acts = FeatureStore.open(acts_dir / "store")

    aum = None  # D2-Pruning's AUM from training dynamics, only when asked for (d2_score="aum")
    if "d2pruning" in cfg.methods and cfg.d2_score == "aum":
        dyn_recipe = {**act_recipe, **cfg.recipe("epochs", "lr", "lora_r", "batch_size", "adapter", "modules_to_save",
                                                 "seed"), **_projector_recipe(cfg)}
        ddir, _ = cache.run("dynamics", dyn_recipe, lambda d: _dynamics(cfg, base, pool_path, images, d),
                            label="training dynamics (AUM) of the pool")
        aum = FeatureStore.open(ddir / "run" / "aum").array("aum")

    # 4. warm-up and gradients (only when a gradient method is asked for) -------------------------------------
    grad_methods = {"icons", "tive", "less", *COMPOSITES} & set(cfg.methods)
    grads = val_grads = tive_grads = None
    if grad_methods:
        warm_recipe = {**act_recipe, **cfg.recipe("warmup_ratio", "seed", "lr", "lora_r")}
        _, warm = cache.run("warmup", warm_recipe, lambda d: _warmup(cfg, base, pool_path, images, d),
                            label="warm-up reference model (TIVE rule)")
        grad_recipe = {**warm_recipe, "dim": cfg.grad_dim}
        # TIVE's own features, gradients of the self-attention LoRA only (tive.md §3), come from the same forward
        # and backward pass as the every-LoRA gradients of ICONS and LESS (features.gradients.run_engines)
        sets = ["lora", "self_attn"] if TIVE_GRADS & set(cfg.methods) else ["lora"]
        gdir, _ = cache.run("gradients", {**grad_recipe, "params": sets},
                            lambda d: _gradients(cfg, base, warm["lora_dir"], pool_path, images,
                                                 {k: d / _GRAD_STORES[k] for k in sets}),
                            label="per-sample gradients of the pool" + (" (every LoRA, and TIVE's self-attention)"
                                                                         if len(sets) > 1 else ""))
        grads = FeatureStore.open(gdir / _GRAD_STORES["lora"])
        if TIVE_GRADS & set(cfg.methods):
            tive_grads = FeatureStore.open(gdir / _GRAD_STORES["self_attn"])
        vdir, _ = cache.run("val_gradients", {**grad_recipe, **val_recipe},
                            lambda d: _val_gradients(cfg, base, warm["lora_dir"], valworld, d),
                            label="gradients of the validation sets")
        val_grads = {p.name: FeatureStore.open(p) for p in sorted(vdir.iterdir()) if p.is_dir()}

    # 5. selection, 6. training and evaluation -------------------------------------------------------------------
    # Methods that read validation gradients (ICONS, LESS and the composites) target the sets the table counts,
    # as the papers target the benchmarks they report (``val_targets="counted"``): those are known once the
    # full pool is trained, so the full-pool runs and every other method go first, then these methods select.
    man = acts.manifest
    layout = {"num_layers": len(man["layers"]), "hidden_size": man["hidden_size"]}
    subsets: dict[tuple[str, float], Path] = {}
    failures: list[dict] = []
    targeted = [m for m in cfg.methods if m in VAL_METHODS]

    def select(methods: Sequence[str], val_sets: Mapping[str, Any] | None, targets: list[str] | None) -> None:
        inputs_for = _method_inputs(acts, grads, val_sets, pool, layout, tive_grads, aum)
        for m in methods:
            sel_recipe = {"method": m, "budgets": list(cfg.budgets), "seed": cfg.seed, "act": acts_stage,
                          "grad": cfg.grad_dim if m in grad_methods else None, "n_clusters": cfg.n_clusters,
                          "grad_params": {"tive": "self_attn", "less_tive": "lora+self_attn",
                                          "less_tive_support": "lora+self_attn"}.get(m),
                          "d2_score": cfg.d2_score if m == "d2pruning" else None}
            if m in VAL_METHODS and cfg.val_targets != "all":
                sel_recipe["targets"] = targets

            def do_select(d: Path, m: str = m) -> dict:
                inputs, params = inputs_for(m, cfg)
                # rows the activation store records missing are never selected, whatever the method reads
                sels = run_method(m, inputs, list(cfg.budgets), tasks=tasks, seed=cfg.seed, params=params,
                                  exclude=acts.missing())
                for b, s in zip(cfg.budgets, sels):
                    atomic_save_npy(d / f"indices_{b}.npy", np.asarray(s.indices))
                return {str(b): s.count for b, s in zip(cfg.budgets, sels)}

            try:
                sdir, _ = cache.run("select", sel_recipe, do_select, label=f"select: {m}", group=f"select {m}")
            except VlselectError as exc:  # a method that refuses this input must not sink the table: recorded
                log(f"[red]✗ select {m} failed:[/] {exc}")
                failures.append({"stage": "select", "method": m, "error": f"{type(exc).__name__}: {exc}"})
                continue
            for b in cfg.budgets:
                subsets[(m, b)] = sdir / f"indices_{b}.npy"

    def subset_jobs(methods: Sequence[str]) -> list[tuple[str, float, int, dict]]:
        return [(m, b, s, {"indices": str(idx)}) for (m, b), idx in subsets.items() if m in methods
                for s in (cfg.seeds if b in cfg.seed_budgets else cfg.seeds[:1])]

    first = [m for m in cfg.methods if m not in targeted or cfg.val_targets == "all"]
    select(first, val_grads, None)
    eval_files = [str(p) for p in _eval_files(world)]
    train_recipe = {**act_recipe, **cfg.recipe("epochs", "lr", "lora_r", "batch_size", "max_new_tokens",
                                               "modules_to_save", "adapter", "length_group"), **_projector_recipe(cfg)}
    jobs: list[tuple[str, float, int, dict]] = []
    for s in cfg.seeds:
        jobs.append(("full pool", 1.0, s, {"indices": None}))
    if cfg.zero_shot_reference:  # the base model as it is: what the table's scores owe to no data at all
        jobs.append((ZERO_SHOT, 0.0, cfg.seeds[0], {"indices": None, "zero_shot": True}))
    if cfg.clean_reference:  # the effect of the world's noise: the pool without its wrong answers (an oracle)
        cdir, clean_n = cache.run("clean", world_recipe, lambda d: _clean_rows(pool, d), label="clean-pool rows")
        jobs.append((CLEAN, round(clean_n / n, 4), cfg.seeds[0], {"indices": str(cdir / "indices.npy")}))
    workers = _Workers(cfg.jobs)  # one pair of worker processes for both rounds: their encode caches stay warm
    try:
        runs = _run_jobs(cache, cfg, jobs + subset_jobs(first), base, pool_path, images, eval_files, train_recipe, log,
                         failures, workers)
        second = [m for m in targeted if m not in first]
        if second:
            targets = counted_sets([r for r in runs if r["method"] == "full pool"], eval_files, cfg.learned_margin)
            if not targets:  # no full-pool run finished, or it scored 0 everywhere: nothing to target, said per method
                for m in second:
                    msg = ("no evaluation set is counted (no full-pool run finished, or it scored 0 on every set), so "
                           "there is no validation target; fix: see the full-pool failures above, or run with "
                           "--val-targets all")
                    log(f"[red]✗ select {m} failed:[/] {msg}")
                    failures.append({"stage": "select", "method": m, "error": f"ConfigError: {msg}"})
            else:
                log(f"validation targets of {', '.join(second)}: the counted sets {', '.join(targets)}")
                select(second, {k: v for k, v in val_grads.items() if k in targets}, targets)
                runs += _run_jobs(cache, cfg, subset_jobs(second), base, pool_path, images, eval_files, train_recipe,
                                  log, failures, workers)
    finally:
        workers.close()
    subsets = {k: subsets[k] for k in sorted(subsets, key=lambda k: (cfg.methods.index(k[0]), k[1]))}

    # 7. results -----------------------------------------------------------------------------------------------
    results = _assemble(cfg, runs, subsets, tasks, n, cache, started, eval_files)
    from vlselect.bench.spread import variance_components

    results["spread"] = variance_components([results])
    results["targets"] = check_targets(results, spread=results["spread"])
    results["failures"] = failures  # every stage that failed, so a missing row in the table is never silent
    results["notes"] = _notes(cfg, base_info, results)
    if command:
        results["command"] = command
    names, mat = jaccard_matrix({m: np.load(p).tolist() for (m, b), p in subsets.items()
                                 if b == _overlap_budget(cfg)})
    results["overlap"] = {"budget": _overlap_budget(cfg), "methods": names, "jaccard": mat}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results, sort_keys=False)
    _write_csv(out / "results.csv", results)
    write_report(results, out / "report.html")
    return results


def _clean_rows(pool, d: Path) -> int:
    """Rows of the pool whose answer is right (``meta.correct`` of the world), saved as ``indices.npy``."""
    keep = [i for i in range(len(pool)) if (pool[i].record.get("meta") or {}).get("correct", True)]
    atomic_save_npy(d / "indices.npy", np.asarray(keep, dtype=np.int64))
    return len(keep)


def _pretrained_base(cfg: "BenchConfig") -> tuple[Path, dict, dict]:
    """The base model when it is pretrained already: the shipped foundation (checked against its fingerprint) or a
    model directory; its recipe key is its weights' hash."""
    from vlselect.models.load import model_hash

    if cfg.base == "foundation":
        from vlselect.models.foundation import foundation_path, verify_foundation

        path = foundation_path()
        info = verify_foundation(path)
        side = info["recipe"]["image_size"]
        if cfg.image_size != side:
            raise ConfigError(f"bench: image_size={cfg.image_size} but the foundation sees {side} px pictures; "
                              f"use image_size={side} (the world is drawn at the model's size) or base='captions'")
        return path, {"base": "foundation", "fingerprint": info["fingerprint"]}, {"foundation": info}
    path = Path(cfg.base)
    return path, {"base": "model", "fingerprint": model_hash(path)}, {"model": str(path)}


def _caption_base(cfg: "BenchConfig", cache: StageCache, captions: Path, cap_recipe: dict) -> tuple[Path, dict, dict]:
    """The base model of ``base="captions"``: a random tiny model pre-trained (``pretrain_*``, every part trained,
    the vision tower too) on the caption pool."""

    def build_base(d: Path) -> dict:
        _set_threads_all()
        from vlselect.models.tiny import build_tiny
        from vlselect.train import train_lora

        build_tiny(d / "init", cfg.family, seed=cfg.seed, size=cfg.model_size, image_size=cfg.image_size,
                   initializer_range=cfg.init_std)
        res = train_lora(d / "init", captions / "pool.json", captions / "images", d / "pretrain", r=cfg.lora_r,
                         adapter="full",
                         lora_alpha=2 * cfg.lora_r, lr=cfg.pretrain_lr, epochs=cfg.pretrain_epochs,
                         batch_size=cfg.batch_size, seed=cfg.seed, gradient_checkpointing=False, progress=True,
                         modules_to_save=list(cfg.pretrain_modules_to_save), warmup_ratio=0.03,
                         projector_lr=cfg.pretrain_lr)
        return {"final": str(res.final_dir), "loss_first": res.losses[0] if res.losses else None,
                "loss_last": res.losses[-1] if res.losses else None}

    base_recipe = {**cap_recipe, **cfg.recipe("model_size", "family", "pretrain_lr", "lora_r", "batch_size",
                                              "pretrain_epochs", "init_std", "pretrain_modules_to_save"), "adapter": "full"}
    _, base_info = cache.run("base", base_recipe, build_base, label="pre-train the base model on captions")
    base = Path(base_info["final"])

    return base, base_recipe, base_info


def make_worlds(cache: StageCache, cfg: BenchConfig) -> dict[str, Any]:
    """The three worlds of a run (cached): ``world`` (pool + test sets), ``valworld`` (validation sets of another
    seed, for ICONS and LESS) and ``captions`` (the pre-training pool); ``recipes`` are their cache recipes."""
    from vlselect.world import make_pretrain_pool, make_world
    from vlselect.world.build import changed_defaults

    # a world built with changed default shares or group sizes (a screen) is another world: its key says so
    world_recipe = cfg.recipe("size", "seed", "eval_size", "image_size") | changed_defaults()
    world, _ = cache.run("world", world_recipe, lambda d: make_world(d / "w", size=cfg.size, seed=cfg.seed,
                                                                     eval_size=cfg.eval_size,
                                                                     image_size=cfg.image_size) and None)
    world = world / "w"
    val_recipe = {"seed": cfg.seed + 7919, "val_size": cfg.val_size, "image_size": cfg.image_size}
    valworld, _ = cache.run("valworld", val_recipe, lambda d: make_world(
        d / "w", size=50, seed=cfg.seed + 7919, eval_size=cfg.val_size, image_size=cfg.image_size) and None)
    valworld = valworld / "w"
    cap_recipe = {"seed": cfg.seed + 104729, "size": cfg.pretrain_size, "image_size": cfg.image_size,
                  "avoid": [cfg.seed, cfg.eval_size]}
    captions = None
    if cfg.base == "captions":  # only the caption-pretrained base needs it
        captions, _ = cache.run("captions", cap_recipe, lambda d: make_pretrain_pool(
            d / "w", size=cfg.pretrain_size, seed=cfg.seed + 104729, image_size=cfg.image_size,
            avoid=((cfg.seed, cfg.eval_size),)) and None)
        captions = captions / "w"
    return {"world": world, "valworld": valworld, "captions": captions,
            "recipes": (world_recipe, val_recipe, cap_recipe)}


def _set_threads_all() -> None:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))


def _overlap_budget(cfg: BenchConfig) -> float:
    return 0.2 if 0.2 in cfg.budgets else cfg.budgets[0]


def _extract_activations(base: Path, pool_path: Path, images: Path, d: Path) -> None:
    from vlselect.features.activations import extract_activations

    extract_activations(base, pool_path, d / "store", images=images, losses=True, embeddings=True, batch_size=16,
                        progress=True)


def _dynamics(cfg: BenchConfig, base: Path, pool_path: Path, images: Path, d: Path) -> None:
    from vlselect.features.dynamics import train_with_dynamics

    # the fine-tuning recipe of the bench's runs: the same trajectory as the full-pool reference run of this seed
    train_with_dynamics(base, pool_path, images, d / "run", r=cfg.lora_r, adapter=cfg.adapter,
                        lora_alpha=2 * cfg.lora_r, lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size,
                        seed=cfg.seed, gradient_checkpointing=False, progress=True,
                        modules_to_save=list(cfg.modules_to_save) or None, projector_lr=cfg.projector_rate(),
                        target_modules=_target_modules(cfg))


def _warmup(cfg: BenchConfig, base: Path, pool_path: Path, images: Path, d: Path) -> dict:
    from vlselect.train.warmup import train_warmup

    res = train_warmup(base, pool_path, images, d / "warmup", rule="tive", seed=cfg.seed, ratio=cfg.warmup_ratio,
                       r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lr=cfg.lr, batch_size=cfg.batch_size)
    return res.to_json()


#: the gradient stage's store folder per parameter set
_GRAD_STORES = {"lora": "store", "self_attn": "store_self_attn"}


def _gradients(cfg: BenchConfig, base: Path, lora: str, pool, images: Path | None, store) -> None:
    """Per-sample gradients into ``store`` (a folder, or ``{parameter set: folder}`` for one shared pass)."""
    from vlselect.features.gradients import extract_gradients

    extract_gradients(base, lora, pool, store, image_root=images, dim=cfg.grad_dim, seed=cfg.seed, norms=True,
                      batch_size=16, progress=True)


def _val_gradients(cfg: BenchConfig, base: Path, lora: str, valworld: Path, d: Path) -> None:
    for f in _eval_files(valworld):
        _gradients(cfg, base, lora, _eval_samples_as_pool(f), valworld / "images", d / f.stem)


def _method_inputs(acts, grads, val_grads, pool, layout, tive_grads=None, aum=None) -> Callable:
    """Role arrays and parameters for each method, from the stores (``aum``: D2-Pruning's score when given, else
    the store's one-checkpoint ``margin``)."""

    def inputs_for(m: str, cfg: BenchConfig) -> tuple[dict, dict]:
        params: dict[str, Any] = {}
        if m in ("random", "random_stratified"):
            return {}, params
        if m == "length":
            return {"lengths": _text_lengths(pool)}, params
        if m == "el2n":
            return {"el2n": acts.array("el2n")}, params
        if m == "perplexity":
            return {"perplexity": acts.array("perplexity")}, params
        feats = acts.array("activations")
        k = cfg.n_clusters or max(2, int(round(math.sqrt(feats.shape[0] / 2))))
        if m == "coincide":
            params.update(n_clusters=k, num_layers=layout.get("num_layers"), hidden_size=layout.get("hidden_size"))
            return {"features": feats}, params
        if m == "semdedup":  # the official inputs (coincide.md §7.1, §7.3-7.4), not COINCIDE's activations
            params.update(n_clusters=k)
            return {"features": acts.array("embed_last")}, params
        if m == "d2pruning":
            return {"features": acts.array("embed_mean"),
                    "scores": acts.array("margin") if aum is None else aum}, params
        train = {"train": grads.array("gradients")}
        if m == "tive":
            tg = tive_grads or grads
            return {"train": tg.array("gradients"), "norms": tg.array("grad_norms")}, params
        vals = {f"val/{name}": st.array("gradients") for name, st in val_grads.items()}
        if m in ("icons", "less"):
            return {**train, **vals}, params
        if m == "less_tive":  # LESS's mix from every LoRA's gradients, TIVE's instance values from its own
            return {**train, "instance": (tive_grads or grads).array("gradients"), **vals}, params
        if m in ("less_support", "less_tive_support"):  # the world's support tasks (its card's "support" role)
            from vlselect.world import SUPPORT  # keep their pool share

            extra = {"instance": (tive_grads or grads).array("gradients")} if m == "less_tive_support" else {}
            return {**train, **extra, **vals}, {"support": ",".join(SUPPORT)}
        if m in COMPOSITES:
            params.update(n_clusters=k, num_layers=layout.get("num_layers"), hidden_size=layout.get("hidden_size"))
            return {"features": feats, **train, **vals}, params
        # a method added later: give it whatever it names that we have
        return {}, params

    return inputs_for


class _Workers:
    """The bench's worker processes (``jobs`` of them, started on first use, spawned): one pool serves both
    rounds of runs of a world (before and after the full-pool runs decide the validation targets), so each
    worker keeps the samples it encoded (:mod:`vlselect.models.encode_cache`) and the pool it read."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self._ex: ProcessPoolExecutor | None = None

    def executor(self) -> ProcessPoolExecutor:
        if self._ex is None:
            import multiprocessing as mp

            self._ex = ProcessPoolExecutor(max_workers=self.jobs, mp_context=mp.get_context("spawn"))
        return self._ex

    def close(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None


def _run_jobs(cache: StageCache, cfg: BenchConfig, jobs, base, pool_path, images, eval_files, train_recipe,
              log, failures: list[dict] | None = None, workers: _Workers | None = None) -> list[dict]:
    """Training + evaluation runs, two single-thread workers side by side (``workers``, or a pool of its own);
    each run is its own cached stage."""
    pending, runs = [], []
    for method, budget, seed, extra in jobs:
        idx = extra["indices"]
        recipe = {**train_recipe, "method": method, "budget": budget, "seed": seed,
                  "indices": _file_hash(idx) if idx else None}
        folder = cache.folder("run", recipe)
        job = {"out": str(folder), "base": str(base), "pool": str(pool_path), "images": str(images),
               "eval_files": eval_files, "indices": idx, "r": cfg.lora_r, "lr": cfg.lr, "epochs": cfg.epochs,
               "projector_lr": cfg.projector_rate(),
               "target_modules": _target_modules(cfg),
               "batch_size": cfg.batch_size, "length_group": cfg.length_group, "seed": seed,
               "max_new_tokens": cfg.max_new_tokens, "adapter": cfg.adapter,
               "modules_to_save": list(cfg.modules_to_save), "zero_shot": bool(extra.get("zero_shot"))}
        pending.append((method, budget, seed, recipe, job))

    def finish(method, budget, seed, recipe, result, cached=False):
        if cached:
            cache.run("run", recipe, lambda d: result, group=f"train+eval {method}")
        else:
            cache.record("run", recipe, result, result["seconds"], result["peak_rss_mb"],
                         group=f"train+eval {method}")
        runs.append({"method": method, "budget": budget, "seed": seed, **result})

    todo = []
    for item in pending:
        method, budget, seed, recipe, job = item
        done = cache.folder("run", recipe) / "done.json"
        if done.exists():
            finish(method, budget, seed, recipe, json.loads(done.read_text())["result"], cached=True)
        else:
            todo.append(item)
    if not todo:
        return runs
    todo.sort(key=lambda item: -item[1])  # longest runs first: the two workers finish together
    log(f"training and evaluating {len(todo)} runs with {cfg.jobs} worker(s)…")
    if cfg.jobs <= 1:
        for method, budget, seed, recipe, job in todo:
            finish(method, budget, seed, recipe, _train_and_eval(job))
        return runs
    own, broken = workers is None, False
    workers = _Workers(cfg.jobs) if own else workers
    try:
        ex = workers.executor()
        futs = [(item, ex.submit(_train_and_eval, item[4])) for item in todo]
        for (method, budget, seed, recipe, job), fut in futs:
            try:
                res = fut.result()
            except Exception as exc:  # a worker's failure, whatever its type: logged and recorded in results.json
                broken = broken or isinstance(exc, BrokenProcessPool)
                log(f"[red]✗ train+eval {method} @ {budget:g} seed {seed} failed:[/] {exc}")
                if failures is not None:
                    failures.append({"stage": "train+eval", "method": method, "budget": budget, "seed": seed,
                                     "error": f"{type(exc).__name__}: {exc}"})
                continue
            finish(method, budget, seed, recipe, res)
            log(f"[green]✓[/] {method} @ {budget:g} seed {seed}: "
                + ", ".join(f"{k} {v:.2f}" for k, v in res["scores"].items()))
    finally:
        if own or broken:  # a worker that died (e.g. out of memory) breaks the pool: the next round starts anew
            workers.close()
    return runs


def _file_hash(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def chance_levels(eval_files: Sequence[str | os.PathLike]) -> dict[str, float]:
    """Per evaluation set, the best score (0-100) of always giving one answer: the share of its most common
    answer; for a ``yes_no`` set (scored by F1 of "yes") the F1 of always answering yes, ``2p / (1 + p)`` with
    ``p`` the share of yes (66.7 on a balanced set: a model that only says yes has learned nothing); an IoU-scored
    set has no such answer and gets 0."""
    from collections import Counter

    out = {}
    for f in eval_files:
        d = json.loads(Path(f).read_text())
        name, samples = d.get("name", Path(f).stem), d.get("samples", [])
        if d.get("metric") == "iou" or not samples:
            out[name] = 0.0
            continue
        answers = [str(x["answers"][0]).strip().lower() for x in samples]
        top = Counter(answers).most_common(1)[0][1]
        out[name] = 100.0 * top / len(samples)
        if d.get("metric") == "yes_no":
            p = sum(a == "yes" for a in answers) / len(answers)
            out[name] = max(out[name], 100.0 * 2 * p / (1 + p))
    return out


def counted_sets(full_runs: Sequence[Mapping[str, Any]], eval_files: Sequence[str | os.PathLike],
                 margin: float) -> list[str]:
    """The sets the relative performance counts: those the full pool learns (:func:`learned_sets`, its score
    averaged over ``full_runs``), or every set with a non-zero full-pool score when it learns none."""
    sets = sorted({s for r in full_runs for s in r["scores"]})
    ref = {s: float(np.mean([r["scores"][s] for r in full_runs])) for s in sets}
    chance = chance_levels(eval_files) if eval_files else {}
    return learned_sets(ref, chance, margin) or [s for s in sets if ref.get(s)]


def learned_sets(reference: dict[str, float], chance: dict[str, float], margin: float) -> list[str]:
    """Sets whose full-pool score beats chance by at least ``margin`` points, in ``reference`` order."""
    return [s for s, v in reference.items() if v >= chance.get(s, 0.0) + margin]


def check_targets(results: dict[str, Any], composites: Sequence[str] = COMPOSITES,
                  named: Sequence[str] = ("coincide", "icons", "tive"),
                  spread: Mapping[str, dict] | None = None) -> list[dict[str, Any]]:
    """The issue's targets (issue 12), judged on a results dict: the full pool learns at least 7 evaluation sets
    (``learned_sets``, or in every world of ``learned_per_world``); random keeps 88-97% of the full pool at 20% and
    at most 85% at 5%; each named method above random at 10% and 20%; the best method at 20% at >= 98% of the
    full pool; each composite at least as good as every single (non-composite) method at every budget. The
    wall-time targets are judged in benchmarks/RESULTS.md (a run's time depends on the machine and on its cache).
    Each item: ``{"target", "met", "detail"}``; a target whose rows are missing is ``met: None`` (e.g. random at 5%
    in the quick form, which has no 5% budget).

    With ``spread`` (:func:`vlselect.bench.spread.variance_components` of the worlds the results are made of),
    each target on the table's numbers also gets ``margin`` (how far the value is on the met side of its threshold,
    negative when missed), ``sd`` (the standard deviation of that value: of a score, or of a gap between two
    methods for the comparisons, for a mean over the spread's worlds x seeds; from one world, the spread between
    training seeds only) and ``resolved``: ``|margin| >= 2 sd``. A verdict that is not resolved is the draw of the
    seeds and worlds, not the methods'."""
    from vlselect.bench.spread import sd_of_mean

    rows = {(r["method"], r["budget"]): r["relative_mean"] for r in results.get("rows", [])}
    budgets = sorted({b for _, b in rows})
    out: list[dict[str, Any]] = []

    def item(target: str, met, detail: str, margin: float | None = None, b: float | None = None,
             kind: str = "score") -> dict[str, Any]:
        x: dict[str, Any] = {"target": target, "met": met, "detail": detail}
        if spread is not None and margin is not None:
            c = spread.get(str(b)) or {}
            c = c.get("vs_random") if kind == "gap" else c
            sd = sd_of_mean(c, c["worlds"], c["seeds"]) if c else None
            x.update(margin=float(margin), sd=sd, resolved=None if not sd else bool(abs(margin) >= 2 * sd))
        return x

    learned = results.get("learned_per_world") or ([results["learned_sets"]] if "learned_sets" in results else None)
    if learned is not None:
        n = min(len(x) for x in learned)
        out.append(item("the full pool learns at least 7 evaluation sets", bool(n >= 7),
                        " / ".join(str(len(x)) for x in learned)
                        + (" per world" if len(learned) > 1 else "") + f" ({', '.join(learned[0])})"))
    for b, lo, hi in ((0.2, 88.0, 97.0), (0.05, None, 85.0)):
        v = rows.get(("random", b))
        margin = None if v is None else (hi - v if lo is None else min(v - lo, hi - v))
        out.append(item(f"random keeps {f'{lo:g}-' if lo else 'at most '}{hi:g}% of the full pool at {b:.0%}",
                        None if v is None else bool((lo is None or v >= lo) and v <= hi),
                        "" if v is None else f"{v:.1f}", margin, b))
    for m in named:
        for b in (0.1, 0.2):
            a, r = rows.get((m, b)), rows.get(("random", b))
            none = a is None or r is None
            out.append(item(f"{m} above random at {b:.0%}", None if none else bool(a > r),
                            "" if none else f"{a:.1f} vs {r:.1f}", None if none else a - r, b, "gap"))
    at20 = {m: v for (m, b), v in rows.items() if b == 0.2}
    if at20:
        best = max(at20, key=at20.get)
        out.append(item("best method at 20% reaches 98% of the full pool", bool(at20[best] >= 98.0),
                        f"{best}: {at20[best]:.1f}", at20[best] - 98.0, 0.2))
    singles = {m for m, _ in rows} - set(composites)
    for composite in composites:
        for b in budgets:
            c = rows.get((composite, b))
            others = {m: rows[(m, b)] for m in singles if (m, b) in rows}
            if c is None or not others:
                continue
            top = max(others, key=others.get)
            out.append(item(f"{composite} at least as good as every single method at {b:.0%}",
                            bool(c >= others[top]), f"{c:.1f} vs {top} {others[top]:.1f}", c - others[top], b,
                            "gap"))
    return out


def _assemble(cfg: BenchConfig, runs: list[dict], subsets, tasks: np.ndarray, n: int, cache: StageCache,
              started: float, eval_files: Sequence[str] = ()) -> dict[str, Any]:
    from vlselect.evaluate.metrics import mean_interval

    full = [r for r in runs if r["method"] == "full pool"]
    clean = [r for r in runs if r["method"] == CLEAN]
    zero = [r for r in runs if r["method"] == ZERO_SHOT]
    sets = sorted({s for r in runs for s in r["scores"]})
    ref = {s: float(np.mean([r["scores"][s] for r in full])) for s in sets} if full else {}
    chance = chance_levels(eval_files) if eval_files else {}
    learned = learned_sets(ref, chance, cfg.learned_margin)
    counted = counted_sets(full, eval_files, cfg.learned_margin)

    def rel(scores: dict) -> float:
        vals = [scores[s] / ref[s] * 100 for s in counted if ref.get(s)]
        return float(np.mean(vals)) if vals else float("nan")

    rows = []
    keys = sorted({(r["method"], r["budget"]) for r in runs if r["method"] not in ("full pool", CLEAN, ZERO_SHOT)},
                  key=lambda k: (cfg.methods.index(k[0]) if k[0] in cfg.methods else 99, k[1]))
    for m, b in keys:
        rs = [r for r in runs if r["method"] == m and r["budget"] == b]
        rels = [rel(r["scores"]) for r in rs]
        iv = mean_interval(rels) if len(rels) > 1 else None
        rows.append({"method": m, "budget": b, "n_seeds": len(rs), "relative_mean": float(np.mean(rels)),
                     "relative_low": iv["low"] if iv else None, "relative_high": iv["high"] if iv else None,
                     "relative_per_seed": rels,
                     "scores": {s: float(np.mean([r["scores"][s] for r in rs])) for s in sets}})
    pool_counts = {str(t): int(c) for t, c in zip(*np.unique(tasks, return_counts=True))}
    comp = {}
    b0 = _overlap_budget(cfg)
    for (m, b), p in subsets.items():
        if b == b0:
            idx = np.load(p)
            comp[f"{m}@{b:g}"] = {str(t): int(c) for t, c in zip(*np.unique(tasks[idx], return_counts=True))}
    return {
        "title": f"vlselect bench: {len(cfg.methods)} methods on the world ({n} records)",
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": shlex.join(sys.argv),  # the real command line of this run
        "config": asdict(cfg),
        "sets": sets,
        "chance": chance,
        "learned_sets": learned,
        "relative_sets": counted,
        "reference": {"label": f"full pool, {len(full)} seed(s)", "scores": ref,
                      "per_seed": [r["scores"] for r in full]},
        "clean_pool": None if not clean else {
            "label": "the pool without its wrong answers (world metadata: an oracle, not a method)",
            "fraction": clean[0]["budget"], "scores": clean[0]["scores"], "relative": rel(clean[0]["scores"])},
        "zero_shot": None if not zero else {
            "label": "the base model without fine-tuning (zero-shot: what needs no data)",
            "scores": zero[0]["scores"], "relative": rel(zero[0]["scores"])},
        "rows": rows,
        "composition": {"pool": pool_counts, "subsets": comp},
        "costs": cache.cost_table(),
        "wall_seconds": round(time.time() - started, 1),
        "code_version": code_version(),  # combining worlds refuses runs of other code (bench.worlds)
    }


def _notes(cfg: BenchConfig, base_info: dict, results: dict | None = None) -> list[str]:
    results = results or {}
    learned = results.get("learned_sets")
    notes = [
        "Relative performance = mean over evaluation sets of (score / full-pool score) x 100 (docs/methods.md, "
        "'Relative performance'), over "
        + (f"the sets the full pool learned (>= {cfg.learned_margin:g} points above chance): {', '.join(learned)}."
           if learned else "all sets (the full pool learned none above chance: the table cannot rank methods)."),
        _base_note(cfg, base_info),
        f"Fine-tuning: {cfg.adapter}" + (f" (r={cfg.lora_r})" if cfg.adapter == "lora" else "")
        + f", lr {cfg.lr} (the projector {cfg.projector_rate():g}), {cfg.epochs} epochs, batch {cfg.batch_size}; "
        + (f"seeds {', '.join(map(str, cfg.seeds))} at budgets {', '.join(f'{b:g}' for b in cfg.seed_budgets)}, one "
         "seed elsewhere." if cfg.seed_budgets and len(cfg.seeds) > 1
         else f"one training seed ({cfg.seeds[0]}) at every budget: no interval over seeds."),
        "ICONS, LESS and the composites target "
        + ("the sets the table counts (decided by the full pool)" if cfg.val_targets == "counted"
           else "every evaluation set, learned or not")
        + " through validation sets drawn from a world of another seed; no method sees the test sets. Gradient "
        "features: LoRA (r=%d) gradients of a warm-up model." % cfg.lora_r,
    ]
    for t in results.get("targets", []):
        mark = {True: "met", False: "NOT met", None: "not judged"}[t["met"]]
        notes.append(f"Target: {t['target']}: {mark}" + (f" ({t['detail']})" if t["detail"] else "") + ".")
    return notes


def _base_note(cfg: BenchConfig, base_info: dict) -> str:
    if "foundation" in base_info:
        f = base_info["foundation"]
        st = f.get("stages", {})
        return (f"Base model: the world's foundation ({f.get('fingerprint', '')[:19]}…; vlselect.models.foundation): a "
                f"language model pre-trained on {f['recipe']['text_size']} text records (loss "
                f"{st.get('language', {}).get('last', float('nan')):.2f}), a vision tower pre-trained by captioning "
                f"{f['recipe']['vision_size']} pictures, and a projector aligned on {f['recipe']['align_size']} "
                f"captions with both frozen (loss {st.get('align', {}).get('last', float('nan')):.2f}); the vision "
                "tower stays frozen in every fine-tuning run (LLaVA-1.5 stage 2).")
    if "model" in base_info:
        return f"Base model: {base_info['model']} (given)."
    return (f"Base model: tiny {cfg.family} ({cfg.model_size}), pre-trained (full) on {cfg.pretrain_size} "
            f"caption records (loss {base_info.get('loss_first') or float('nan'):.2f} → "
            f"{base_info.get('loss_last') or float('nan'):.2f}).")


def _write_csv(path: Path, results: dict) -> None:
    sets = results["sets"]
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "budget", "n_seeds", "relative_mean", "relative_low", "relative_high", *sets])
        ref = results["reference"]["scores"]
        w.writerow(["full pool", 1.0, len(results["reference"]["per_seed"]), 100.0, "", "",
                    *[f"{ref.get(s, float('nan')):.4f}" for s in sets]])
        zs = results.get("zero_shot")
        if zs:
            w.writerow([ZERO_SHOT, 0.0, 1, f"{zs['relative']:.2f}", "", "",
                        *[f"{zs['scores'].get(s, float('nan')):.4f}" for s in sets]])
        for r in results["rows"]:
            w.writerow([r["method"], r["budget"], r["n_seeds"], f"{r['relative_mean']:.2f}",
                        "" if r["relative_low"] is None else f"{r['relative_low']:.2f}",
                        "" if r["relative_high"] is None else f"{r['relative_high']:.2f}",
                        *[f"{r['scores'].get(s, float('nan')):.4f}" for s in sets]])
