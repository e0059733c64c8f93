"""Probe: one method's task mix, filled inside each task by TIVE's weighted sampling (a candidate composite).

    python benchmarks/task_mix_probe.py --bench OUT --mix less [--out DIR]

``OUT`` is a finished ``vlselect bench`` run whose cache holds the ``--mix`` method's selections and the gradient
stage (TIVE's self-attention gradients). For each budget the probe takes how many rows of each pool task the
``--mix`` selection holds, and draws that many rows of the task with TIVE's instance weights
(:func:`vlselect.select.tive.tive_instance_weights`, q = 0.001, ``RandomState(--draw-seed)``, without
replacement), so the subset keeps the mix of the gradient method and the answer shares of TIVE's sampling
(``benchmarks/icons_answers.py``: the gradient top-k methods lose whole answers, TIVE's sampling does not). Each
subset is then trained and evaluated with the bench's own job (its recipe, its seeds) and scored against the
bench's full-pool reference over the counted sets.

This is an exploration, not a method of the package: it was designed after reading the bench's subsets and is
scored on the bench's own evaluation sets, so its figures are a lead for a composite, not a measurement of one.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from _bench_cache import bench_run, claim_folder, method_selection, one_stage, train_job  # a sibling module: the scripts run from benchmarks/


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, type=Path, help="a finished vlselect bench folder")
    ap.add_argument("--mix", default="less", help="the selection whose per-task counts are kept")
    ap.add_argument("--out", type=Path, help="where the subsets and runs go (default BENCH/task_mix_probe-MIX)")
    ap.add_argument("--q", type=float, default=0.001, help="TIVE's instance-weight q")
    ap.add_argument("--draw-seed", type=int, default=0, help="seed of the weighted draws inside each task")
    args = ap.parse_args(argv)

    from vlselect.bench.run import _train_and_eval
    from vlselect.features.store import FeatureStore
    from vlselect.select import run_method
    from vlselect.select.tive import tive_instance_weights

    cache = args.bench / "cache"
    out = args.out or args.bench / (f"task_mix_probe-{args.mix}" + (f"-draw{args.draw_seed}" if args.draw_seed else ""))
    res, cfg, ident = bench_run(args.bench)
    probe = {**ident, "mix": args.mix, "q": args.q, "draw_seed": args.draw_seed}
    done = claim_folder(out, probe)  # this probe's folder alone; a finished one is shown, not rerun
    if done is not None:
        print(done)
        return 0
    ref, counted = res["reference"]["scores"], res["relative_sets"]
    world = one_stage(cache, "world") / "w"
    pool = json.loads((world / "pool.json").read_text())
    tasks = np.array([r["task"] for r in pool])
    st = FeatureStore.open(one_stage(cache, "gradients") / "store_self_attn")
    tive = run_method("tive", {"train": st.array("gradients"), "norms": st.array("grad_norms")}, [cfg.budgets[0]],
                      tasks=tasks, seed=cfg.seed)
    scores = np.asarray(tive[0].scores, dtype=float)  # instance values (NaN for rows that take no part)
    mix_dir = method_selection(cache, args.mix)
    jobs = []
    for b in cfg.budgets:
        mix = np.load(mix_dir / f"indices_{b}.npy")
        rng = np.random.RandomState(args.draw_seed)
        picked: list[int] = []
        for t in sorted(set(tasks.tolist())):
            k = int((tasks[mix] == t).sum())
            rows = np.flatnonzero((tasks == t) & np.isfinite(scores))
            if k == 0 or rows.size == 0:
                continue
            w = tive_instance_weights(scores[rows], args.q)
            picked += rng.choice(rows, size=min(k, rows.size), replace=False, p=w / w.sum()).tolist()
        idx = np.array(sorted(picked))
        path = out / f"indices_{b}.npy"
        np.save(path, idx)
        u, n = np.unique(tasks[idx], return_counts=True)
        print(f"{b:g}: {idx.size} rows; " + ", ".join(f"{a} {c}" for a, c in zip(u.tolist(), n.tolist())), flush=True)
        for seed in (cfg.seeds if b in cfg.seed_budgets else cfg.seeds[:1]):
            jobs.append((b, seed, train_job(cfg, cache, path, seed, out / f"run_{b}_{seed}")))

    def rel(s: dict) -> float:
        return float(np.mean([s[k] / ref[k] * 100 for k in counted]))

    per: dict[float, list[float]] = {}
    with ProcessPoolExecutor(cfg.jobs, mp_context=mp.get_context("spawn")) as ex:
        futs = [(b, seed, ex.submit(_train_and_eval, job)) for b, seed, job in sorted(jobs, key=lambda j: -j[0])]
        for b, seed, fut in futs:
            r = fut.result()
            per.setdefault(b, []).append(rel(r["scores"]))
            print(f"{b:g} seed {seed}: {rel(r['scores']):.1f} "
                  + ", ".join(f"{k} {r['scores'][k]:.1f}" for k in counted), flush=True)
    summary = {f"{b:g}": {"mean": float(np.mean(v)), "per_seed": v} for b, v in sorted(per.items())}
    for b, v in summary.items():
        print(f"{args.mix} mix + TIVE sampling @ {b}: {v['mean']:.1f} (" + ", ".join(f"{x:.1f}" for x in v["per_seed"])
              + ")")
    (out / "summary.json").write_text(json.dumps({"mix": args.mix, "q": args.q, "draw_seed": args.draw_seed,
                                                  "relative": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
