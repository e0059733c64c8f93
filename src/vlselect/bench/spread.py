"""How far a bench's table can be trusted: variance components of the relative performance.

A method's relative performance at a budget varies between training seeds (within a world) and between worlds
(the draw of the pool, the evaluation and validation questions and the warm-up model). From finished
single-world results (each row's ``relative_per_seed``) :func:`variance_components` estimates both, per budget,
pooled over the methods, for a method's score and for its gap to random (training seed i against random's seed
i), with the one-way random-effects estimate (between-world variance = variance of the world means less the
seeds' share of it, floored at 0). :func:`sd_of_mean` turns them into the standard deviation of a mean over W
worlds x S seeds, which :func:`vlselect.bench.run.check_targets` sets beside each target's margin.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _components(arrays: list[np.ndarray]) -> dict[str, Any] | None:
    """Pooled components of several worlds x seeds arrays (one per method)."""
    if not arrays:
        return None
    seed_v = [float(a.var(axis=1, ddof=1).mean()) for a in arrays]
    n_worlds = arrays[0].shape[0]
    world_v = ([max(float(a.mean(axis=1).var(ddof=1)) - v / a.shape[1], 0.0) for a, v in zip(arrays, seed_v)]
               if n_worlds > 1 else None)
    seeds = sorted({a.shape[1] for a in arrays})
    vs = float(np.mean(seed_v))
    out: dict[str, Any] = {"methods": len(arrays), "worlds": n_worlds, "seeds": seeds[len(seeds) // 2],
                           "seed_var": vs, "seed_sd": vs ** 0.5, "world_var": None, "world_sd": None}
    if world_v is not None:
        vw = float(np.mean(world_v))
        out.update(world_var=vw, world_sd=vw ** 0.5)
        out["mean_sd"] = {f"{w}x{s}": sd_of_mean(out, w, s) for w, s in ((1, 3), (2, 3), (3, 2), (3, 3))}
    return out


def sd_of_mean(components: dict[str, Any] | None, worlds: int, seeds: int) -> float | None:
    """The standard deviation of a mean over ``worlds`` x ``seeds`` runs, ``sqrt(var_world / W + var_seed / (W
    S))``; the world part is left out when the components come from one world (``world_var`` None). None without
    components."""
    if not components:
        return None
    vw = components.get("world_var") or 0.0
    return float((vw / worlds + components["seed_var"] / (worlds * seeds)) ** 0.5)


def variance_components(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per budget (key ``str(budget)``), the components of a method's relative performance over the methods that
    every world has with the same number (>= 2) of training seeds, and under ``vs_random`` those of each method's
    gap to random. ``results``: one results dict per world (:func:`vlselect.bench.run.run_bench`'s)."""
    rows = [{(x["method"], x["budget"]): x.get("relative_per_seed") or [] for x in r["rows"]} for r in results]

    def per_seed(k: tuple) -> np.ndarray | None:  # worlds x seeds, or None when the seeds do not line up
        if not all(k in r for r in rows):
            return None
        x = [r[k] for r in rows]
        n = {len(v) for v in x}
        return None if len(n) != 1 or n == {1} or n == {0} else np.array(x, dtype=float)

    out: dict[str, dict[str, Any]] = {}
    for b in sorted({k[1] for k in rows[0]}) if rows else []:
        keys = [k for k in rows[0] if k[1] == b and per_seed(k) is not None]
        c = _components([per_seed(k) for k in keys])
        if c is None:
            continue
        ref = per_seed(("random", b))  # a method's gap to random, seed i against random's seed i
        if ref is not None:
            gap = _components([per_seed(k) - ref for k in keys if k[0] != "random" and per_seed(k).shape == ref.shape])
            if gap is not None:
                c["vs_random"] = gap
        out[str(b)] = c
    return out
