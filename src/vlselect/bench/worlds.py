"""The benchmark over several worlds: one :func:`~vlselect.bench.run.run_bench` per world seed, then one table of
their means, on which the targets are judged.

One world is one draw: one pool, one set of evaluation and validation questions, one warm-up model. Measured on
this project's worlds (benchmarks/RESULTS.md, "A second world"), a method's relative score at 20% moves by up to 16
points from one world to the next, more than the gaps the targets judge, so the full benchmark averages worlds.

Layout of ``out``: ``world-<seed>/`` is a complete single-world bench folder (its ``cache/``, ``results.json``,
``results.csv``, ``report.html``: every script that reads a bench run takes it as is); ``results.json``,
``results.csv`` and ``report.html`` at the top hold the mean over the worlds.
"""

from __future__ import annotations

import os
import time
import csv
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vlselect.artifact import atomic_open, atomic_write_json
from vlselect.bench.run import ZERO_SHOT, BenchConfig, _log_default, check_targets, run_bench
from vlselect.errors import ConfigError

#: The worlds of the full benchmark (``vlselect bench``); the quick form runs world 0 alone.
DEFAULT_WORLDS: tuple[int, ...] = (0, 1)


def world_folder(out: str | os.PathLike, seed: int) -> Path:
    """The folder of one world's bench inside a several-world run."""
    return Path(out) / f"world-{seed}"


def run_worlds(out: str | os.PathLike, config: BenchConfig | None = None, worlds: Sequence[int] = DEFAULT_WORLDS,
               *, log: Callable[[str], None] = _log_default, command: str | None = None,
               overwrite: bool = False) -> dict[str, Any]:
    """Run the benchmark on each world (``config`` with ``seed`` = the world's seed) into ``out/world-<seed>/``,
    then write the mean over the worlds (:func:`combine_worlds`) to ``out/results.json``, ``results.csv`` and
    ``report.html``, and return it.

    Parameters
    ----------
    out : path-like
        Output folder.
    config : BenchConfig
        The recipe of every world (its ``seed`` is replaced by each world's).
    worlds : sequence of int
        World seeds, at least two and all different (one world: call :func:`~vlselect.bench.run.run_bench`).
    command, overwrite
        As :func:`~vlselect.bench.run.run_bench`.
    """
    cfg = config or BenchConfig()
    worlds = [int(w) for w in worlds]
    if len(worlds) < 2 or len(set(worlds)) != len(worlds):
        raise ConfigError(f"worlds={worlds}: give at least two different world seeds, e.g. --worlds 0,1 (one world: "
                          "--worlds 0)")
    out = Path(out)
    started = time.time()
    results = []
    for i, w in enumerate(worlds, 1):
        log(f"[bold]world {w}[/] ({i} of {len(worlds)}) → {world_folder(out, w)}")
        results.append(run_bench(world_folder(out, w), replace(cfg, seed=w), log=log, command=command,
                                 overwrite=overwrite))
    combined = combine_worlds(results, [world_folder(out, w).name for w in worlds])
    combined["wall_seconds"] = round(time.time() - started, 1)
    if command:
        combined["command"] = command
    write_combined(out, combined)
    return combined


def write_combined(out: str | os.PathLike, combined: dict[str, Any]) -> None:
    """``results.json``, ``results.csv`` and ``report.html`` of a several-world table in ``out``."""
    from vlselect.report import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", combined, sort_keys=False)
    sets, seeds = combined["sets"], combined["worlds"]
    with atomic_open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "budget", "relative_mean", *[f"world_{s}" for s in seeds], *sets])
        ref = combined["reference"]["scores"]
        w.writerow(["full pool", 1.0, 100.0, *[100.0] * len(seeds), *[f"{ref.get(s, float('nan')):.4f}" for s in sets]])
        zs = combined.get("zero_shot")
        if zs:
            w.writerow([ZERO_SHOT, 0.0, f"{zs['relative']:.2f}", *[f"{v:.2f}" for v in zs["relative_per_world"]],
                        *[f"{zs['scores'].get(s, float('nan')):.4f}" for s in sets]])
        for r in combined["rows"]:
            w.writerow([r["method"], r["budget"], f"{r['relative_mean']:.2f}",
                        *[f"{v:.2f}" for v in r["relative_per_world"]],
                        *[f"{r['scores'].get(s, float('nan')):.4f}" for s in sets]])
    write_report(combined, out / "report.html")


def combine_worlds(results: Sequence[dict[str, Any]], folders: Sequence[str] | None = None, *,
                   allow_other_code: bool = False, allow_other_methods: bool = False) -> dict[str, Any]:
    """The mean over finished single-world bench results (``results.json`` dicts) that differ only in the world
    seed (``config.seed``): per method and budget the mean of the worlds' relative performance (each world's own
    full pool is its 100), each world's value beside it, the variance components of the worlds' per-seed scores
    (``spread``, :func:`vlselect.bench.spread.variance_components`) and :func:`~vlselect.bench.run.check_targets`
    judged on the means, each target's margin set against the spread.

    Refuses (:class:`~vlselect.errors.ConfigError`) runs whose recipes differ in anything but the seed, two runs
    of one world, and runs of different (or unrecorded) vlselect code versions unless ``allow_other_code``, in
    which case the versions are named in the notes. Runs of different ``--methods`` are refused too unless
    ``allow_other_methods``: then the table holds the methods every world ran and the notes name each world's
    list. A method and budget missing from a world (a failed stage) is left out of the mean and named in
    ``incomplete``; worlds that count different evaluation sets are combined and the difference is named in the
    notes (each world's relative score is over its own counted sets)."""
    if len(results) < 2:
        raise ConfigError(f"{len(results)} world(s): the mean over worlds needs at least two")
    folders = list(folders) if folders is not None else [f"world-{r['config']['seed']}" for r in results]
    apart = {"seed", "methods"} if allow_other_methods else {"seed"}
    first = {k: v for k, v in results[0]["config"].items() if k not in apart}
    for r, name in zip(results[1:], folders[1:]):
        other = {k: v for k, v in r["config"].items() if k not in apart}
        diff = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        if diff:
            raise ConfigError(f"{name}: its recipe differs from {folders[0]}'s in {', '.join(diff)}; only the world "
                              "seed may differ between the worlds of one table"
                              + (" (different methods: combine them knowingly with across_worlds.py "
                                 "--allow-other-methods, which keeps the methods every world ran)"
                                 if diff == ["methods"] else ""))
    method_lists = [list(r["config"]["methods"]) for r in results]
    common = [m for m in method_lists[0] if all(m in x for x in method_lists)]
    first["methods"] = common
    seeds = [r["config"]["seed"] for r in results]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"two runs of the same world (seeds {seeds}); pass runs of different worlds")
    codes = [r.get("code_version") for r in results]
    other_code = len(set(codes)) > 1 or None in codes
    if other_code and not allow_other_code:
        raise ConfigError("the worlds were run by different or unrecorded vlselect code versions ("
                          + "; ".join(f"{n}: {c or 'not recorded'}" for n, c in zip(folders, codes))
                          + "); rerun them with one version, or combine them knowingly (across_worlds.py "
                          "--allow-other-code), which names the versions in the notes")

    per = [{(x["method"], x["budget"]): x for x in r["rows"] if x["method"] in common} for r in results]
    order = list(dict.fromkeys(k for p in per for k in p))
    keys = [k for k in order if all(k in p for p in per)]
    incomplete = [{"method": m, "budget": b, "worlds": [s for s, p in zip(seeds, per) if (m, b) in p]}
                  for m, b in order if (m, b) not in keys]
    sets = sorted({s for r in results for s in r["sets"]})

    def mean_scores(dicts: Sequence[dict]) -> dict[str, float]:
        return {s: float(np.mean([d[s] for d in dicts if s in d])) for s in sets if any(s in d for d in dicts)}

    rows = []
    for m, b in keys:
        xs = [p[(m, b)] for p in per]
        rows.append({"method": m, "budget": b, "n_seeds": [x["n_seeds"] for x in xs],
                     "relative_mean": float(np.mean([x["relative_mean"] for x in xs])),
                     "relative_low": None, "relative_high": None,
                     "relative_per_world": [x["relative_mean"] for x in xs],
                     "scores": mean_scores([x["scores"] for x in xs])})
    counted = [r["relative_sets"] for r in results]
    learned = [r.get("learned_sets", []) for r in results]
    zero = [r.get("zero_shot") for r in results]
    combined: dict[str, Any] = {
        "title": f"vlselect bench: {len(common)} methods, mean of {len(results)} worlds "
                 f"(seeds {', '.join(map(str, seeds))})",
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": results[0].get("command", ""),
        "config": {**first, "worlds": seeds},
        "worlds": seeds,
        "world_folders": folders,
        "sets": sets,
        "chance": mean_scores([r.get("chance") or {} for r in results]),
        "learned_sets": sorted(set.intersection(*map(set, learned))) if all(learned) else [],
        "learned_per_world": learned,
        "relative_sets": sorted(set().union(*map(set, counted))),
        "relative_sets_per_world": counted,
        "reference": {"label": f"full pool, mean of {len(results)} worlds",
                      "scores": mean_scores([r["reference"]["scores"] for r in results]),
                      "per_world": [r["reference"]["scores"] for r in results]},
        "zero_shot": None if not all(zero) else {
            "label": "the base model without fine-tuning (zero-shot), mean of the worlds",
            "scores": mean_scores([z["scores"] for z in zero]),
            "relative": float(np.mean([z["relative"] for z in zero])),
            "relative_per_world": [z["relative"] for z in zero]},
        "rows": rows,
        "incomplete": incomplete,
        "costs": _summed_costs(results),
        "wall_seconds": float(sum(r.get("wall_seconds", 0.0) for r in results)),
        "code_versions": codes,
        "methods_per_world": method_lists,
        "targets_per_world": {str(s): r.get("targets", []) for s, r in zip(seeds, results)},
        "failures": [{**f, "world": s} for s, r in zip(seeds, results) for f in r.get("failures", [])],
    }
    from vlselect.bench.spread import variance_components

    combined["spread"] = variance_components(results)
    combined["targets"] = check_targets(combined, spread=combined["spread"])
    combined["notes"] = _notes(combined)
    return combined


def _summed_costs(results: Sequence[dict]) -> list[dict[str, Any]]:
    """Every stage's time summed over the worlds, its peak memory the largest."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        for c in r.get("costs", []):
            d = out.setdefault(c["stage"], {"stage": c["stage"], "seconds": 0.0, "peak_rss_mb": 0.0, "runs": 0,
                                            "cached": 0})
            d["seconds"] = round(d["seconds"] + float(c.get("seconds") or 0.0), 3)
            d["peak_rss_mb"] = max(d["peak_rss_mb"], float(c.get("peak_rss_mb") or 0.0))
            d["runs"] += int(c.get("runs") or 0)
            d["cached"] += int(c.get("cached") or 0)
    return list(out.values())


def _notes(c: dict[str, Any]) -> list[str]:
    seeds = c["worlds"]
    notes = [f"Mean over {len(seeds)} worlds (seeds {', '.join(map(str, seeds))}), each a full bench with its own pool, "
             "evaluation and validation questions and warm-up; a relative score is each world's score over its own "
             "full pool, then averaged. Each world's table, intervals over seeds and report: "
             + ", ".join(f"{f}/report.html" for f in c["world_folders"]) + "."]
    if len(set(c["code_versions"])) > 1 or None in c["code_versions"]:
        notes.append("The worlds were run by different or unrecorded code versions, combined on request: "
                     + "; ".join(f"world {s}: {v or 'not recorded'}" for s, v in zip(seeds, c["code_versions"])) + ".")
    lists = c.get("methods_per_world") or []
    if any(x != lists[0] for x in lists):
        notes.append("The worlds ran different methods, combined on request; the table holds the methods every world "
                     "ran (" + ", ".join(c["config"]["methods"]) + "); "
                     + "; ".join(f"world {s}: {', '.join(x)}" for s, x in zip(seeds, lists)) + ".")
    counted = c["relative_sets_per_world"]
    if any(set(x) != set(counted[0]) for x in counted):
        notes.append("The worlds count different evaluation sets ("
                     + "; ".join(f"world {s}: {', '.join(x)}" for s, x in zip(seeds, counted))
                     + "): each world's relative score is over its own sets.")
    for x in c["incomplete"]:
        notes.append(f"{x['method']} at {x['budget']:.0%} is missing from some worlds (present in "
                     f"{x['worlds'] or 'none'}): left out of the mean; see the failures.")
    for t in c["targets"]:
        mark = {True: "met", False: "NOT met", None: "not judged"}[t["met"]]
        notes.append(f"Target (on the mean of the worlds): {t['target']}: {mark}"
                     + (f" ({t['detail']})" if t["detail"] else "") + ".")
    return notes


__all__ = ["DEFAULT_WORLDS", "combine_worlds", "run_worlds", "world_folder", "write_combined"]
