"""COINCIDE with another reference model: activations of an instruction-tuned model instead of the foundation.

    python benchmarks/coincide_reference.py --bench OUT/world-0 --reference warmup [--out DIR]

COINCIDE clusters the pool by the activations of a *small reference VLM*. The official runs use TinyLLaVA-2.0B, a
model already instruction-tuned (on LLaVA-665K's kind of data; for Vision-Flan the scripts load a TinyLLaVA trained
on Vision-Flan, ``vison_flan_tinyllava_v100_2.0b``), so its activations separate the pool's question kinds
("concept-skill compositions"). ``vlselect bench`` gives COINCIDE the foundation's activations, a model that has
not been instruction-tuned, and on them COINCIDE clusters by how many objects a picture holds
(``subset_profile.py``). This probe re-runs COINCIDE on a finished bench with the activations of

* ``warmup``: the bench's warm-up model (the foundation with the LoRA the bench trains on 8% of the pool, the
  reference model of TIVE, ICONS and LESS), merged;
* ``full``: the foundation fine-tuned on the whole pool with the bench's recipe (seed 0), the closest analogue of a
  reference model trained on the target data (one more full-pool training run).

Everything else is the bench's: the same COINCIDE parameters (K, seed, temperature), budgets, training recipe and
seeds, evaluation sets and full-pool reference. It prints COINCIDE's relative performance beside the bench's own
COINCIDE and random rows, and the task mix of each subset.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from _bench_cache import bench_run, claim_folder, one_stage, train_job  # a sibling module: the scripts run from benchmarks/


def reference_model(cfg, cache: Path, which: str, out: Path) -> Path:
    """The merged model directory whose activations COINCIDE reads."""
    if which == "warmup":
        final = one_stage(cache, "warmup") / "warmup" / "run" / "final"
        if not (final / "config.json").is_file():
            sys.exit(f"{final}: the warm-up's merged model is missing; rerun the bench into a new --out")
        return final
    from vlselect.train import train_lora

    base = json.loads((one_stage(cache, "warmup") / "done.json").read_text())["result"]["base_model"]
    world = one_stage(cache, "world") / "w"
    res = train_lora(base, world / "pool.json", world / "images", out / "full_run", indices=None, r=cfg.lora_r,
                     adapter=cfg.adapter, lora_alpha=2 * cfg.lora_r, lr=cfg.lr, epochs=cfg.epochs,
                     batch_size=cfg.batch_size, length_group=cfg.length_group, seed=cfg.seed,
                     gradient_checkpointing=False, progress=True, modules_to_save=list(cfg.modules_to_save) or None,
                     projector_lr=cfg.lr)
    return Path(res.final_dir)


def print_profiles(bench: Path, out: Path, budgets) -> None:
    """Objects per scene of the new subsets beside the bench's COINCIDE and random ones (``subset_profile.py``)."""
    from _bench_cache import bench_selections
    from subset_profile import profile

    pool = json.loads((one_stage(bench / "cache", "world") / "w" / "pool.json").read_text())
    sels = bench_selections(bench / "cache")
    print("\nscenes with 1 / 2 / 3 / 4 objects (% of a subset's image rows):")
    for b in budgets:
        for label, path in (("random", sels[("random", b)]), ("coincide, foundation", sels[("coincide", b)]),
                            ("coincide, this reference", out / f"indices_{b}.npy")):
            o = profile(pool, np.load(path))["objects"]
            print(f"  {b:>4.0%} {label:<26}" + " / ".join(f"{o[k]:.0f}" for k in (1, 2, 3, 4)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, type=Path, help="a finished single-world vlselect bench folder")
    ap.add_argument("--reference", required=True, choices=("warmup", "full"), help="whose activations")
    ap.add_argument("--out", type=Path, help="where the activations, subsets and runs go "
                                             "(default BENCH/coincide_reference-REFERENCE)")
    a = ap.parse_args(argv)

    import torch

    from vlselect.bench.run import _train_and_eval
    from vlselect.features import FeatureStore
    from vlselect.features.activations import extract_activations
    from vlselect.select import run_method

    res, cfg, ident = bench_run(a.bench)
    cache = a.bench / "cache"
    out = a.out or a.bench / f"coincide_reference-{a.reference}"
    probe = {**ident, "reference": a.reference}
    done = claim_folder(out, probe)
    if done is not None:
        print(done)
        print_profiles(a.bench, out, cfg.budgets)
        return 0
    torch.set_num_threads(2)
    world = one_stage(cache, "world") / "w"
    pool = json.loads((world / "pool.json").read_text())
    tasks = np.array([r["task"] for r in pool])
    ref_model = reference_model(cfg, cache, a.reference, out)
    extract_activations(ref_model, world / "pool.json", out / "acts", images=world / "images", batch_size=16,
                        progress=True)
    acts = FeatureStore.open(out / "acts")
    feats = acts.array("activations")
    man = acts.manifest
    k = cfg.n_clusters or max(2, int(round(math.sqrt(feats.shape[0] / 2))))
    params = {"n_clusters": k, "num_layers": len(man["layers"]), "hidden_size": man["hidden_size"]}
    sels = run_method("coincide", {"features": feats}, list(cfg.budgets), tasks=tasks, seed=cfg.seed, params=params,
                      exclude=acts.missing())
    paths = {}
    for b, s in zip(cfg.budgets, sels):
        paths[b] = out / f"indices_{b}.npy"
        np.save(paths[b], np.asarray(s.indices))
    torch.set_num_threads(1)

    ref, counted = res["reference"]["scores"], res["relative_sets"]

    def rel(scores: dict) -> float:
        return float(np.mean([100.0 * scores[s] / ref[s] for s in counted]))

    runs: dict[float, list[float]] = {b: [] for b in cfg.budgets}
    with ProcessPoolExecutor(cfg.jobs, mp_context=mp.get_context("spawn")) as ex:
        futs = []
        for b in cfg.budgets:
            seeds = cfg.seeds if b in cfg.seed_budgets else cfg.seeds[:1]
            futs += [(b, s, ex.submit(_train_and_eval, train_job(cfg, cache, paths[b], s, out / f"run_{b}_{s}")))
                     for s in seeds]
        for b, s, fut in futs:
            runs[b].append(rel(fut.result()["scores"]))
            print(f"{b:.0%} seed {s}: {runs[b][-1]:.1f}", flush=True)

    own = {(r["method"], r["budget"]): r["relative_mean"] for r in res["rows"]}
    mix = {}
    kinds = sorted(set(tasks))
    for b in cfg.budgets:
        idx = np.load(paths[b])
        mix[str(b)] = {t: int((tasks[idx] == t).sum()) for t in kinds}
    print(f"\nrelative performance (% of the full pool over {', '.join(counted)}; mean over seeds)")
    print(f"{'':<32}" + "".join(f"{b:>8.0%}" for b in cfg.budgets))
    for label, vals in (("random (the bench)", [own.get(("random", b)) for b in cfg.budgets]),
                        ("coincide, foundation (the bench)", [own.get(("coincide", b)) for b in cfg.budgets]),
                        (f"coincide, {a.reference} reference", [float(np.mean(runs[b])) for b in cfg.budgets])):
        print(f"{label:<32}" + "".join(f"{v:>8.1f}" if v is not None else f"{'-':>8}" for v in vals))
    print("\ntask mix of the subsets (rows):")
    for b in cfg.budgets:
        print(f"  {b:.0%}: " + ", ".join(f"{t} {c}" for t, c in mix[str(b)].items()))
    print_profiles(a.bench, out, cfg.budgets)
    (out / "summary.json").write_text(json.dumps({**probe, "k": k, "per_seed": {str(b): v for b, v in runs.items()},
                                                  "mean": {str(b): float(np.mean(v)) for b, v in runs.items()},
                                                  "bench_coincide": {str(b): own.get(("coincide", b))
                                                                     for b in cfg.budgets},
                                                  "bench_random": {str(b): own.get(("random", b))
                                                                   for b in cfg.budgets},
                                                  "task_mix": mix}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
