"""COINCIDE out of core at its real width: a 200,000 x 20,480 float16 memmap, K=200, peak RSS (issue 14, item 1).

    .venv/bin/python benchmarks/coincide_outofcore.py                    # 200,000 x 20,480 (8.2 GB on disk)
    .venv/bin/python benchmarks/coincide_outofcore.py --rows 20000       # a reduced run
    .venv/bin/python benchmarks/coincide_outofcore.py --small-only       # only the in-memory vs out-of-core check

Two parts, each printed as a table:

1. **Same selection, in memory and out of core** (small case, default 20,000 x 2,560 float16, K=20): the
   stages are computed twice from the same memmap, once with the float32 copy (faiss's ``Kmeans.train`` on all
   rows) and once streamed (faiss's own subsample at float16, assignment in 4096-row chunks); the table says
   whether the assignment, centroids, densities and the selected rows are identical, and the wall time of each.
2. **The large case** in a child process (so its peak RSS is its own): the memmap is written block by block from
   a seed (rows drawn around ``--topics`` centres, each of the 2 x 5 layer parts L2-normalised and divided by
   sqrt(10), the official row layout), then ``run_method("coincide", ...)`` runs in the default mode; the child
   reports wall time per stage, peak RSS (``ru_maxrss``) and the selection size. ``vlselect.cluster.kmeans_cost``
   prints the estimate beside it. The memmap is deleted afterwards.

The target (issue 14): at most 3 GB peak RSS at 200,000 x 20,480 with K=200. K x 256 training rows held at
float16 are 2.1 GB at this width; ``--max-points-per-centroid`` lowers that. The machine may be shared with other
work: wall times are indicative, the RSS is what the target is about.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NUM_LAYERS, HIDDEN = 5, 2048


def _layout(x: np.ndarray, num_layers: int, hidden: int) -> np.ndarray:
    """The official row layout: per part (vision/text of each layer) L2-normalised, then / sqrt(2L)."""
    b = x.shape[0]
    x = x.reshape(b, 2 * num_layers, hidden)
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    x /= np.sqrt(2 * num_layers)
    return x.reshape(b, -1)


def write_memmap(path: Path, rows: int, width: int, topics: int, seed: int, block: int = 2048) -> None:
    """Clustered rows, deterministic from ``seed``, written block by block (never whole in RAM)."""
    from vlselect.select.icons import _release

    hidden = width // (2 * NUM_LAYERS)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, width), dtype=np.float32)
    topic = rng.integers(0, topics, size=rows)
    bank = rng.standard_normal((1024, width), dtype=np.float32)  # noise from sums of two signed bank rows
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, width))
    for s in range(0, rows, block):
        e = min(rows, s + block)
        r = np.random.default_rng([seed, s])
        i, j = r.integers(0, 1024, size=(2, e - s))
        sign = r.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(2, e - s, 1))
        x = centres[topic[s:e]] + 0.9 * (sign[0] * bank[i] + sign[1] * bank[j])
        mm[s:e] = _layout(x, NUM_LAYERS, hidden)
        mm.flush()
        _release(mm, s, e)  # the writer's resident set stays one block, not the whole file
    del mm


def small_case(args) -> dict:
    """In-memory vs out-of-core stages and selection on one small memmap (one process, same input)."""
    from vlselect.select.base import resolve_budget
    from vlselect.select.coincide import coincide_select, coincide_stages

    tmp = Path(tempfile.mkdtemp(prefix="vlselect_ooc_small_", dir=args.dir))
    try:
        write_memmap(tmp / "f.npy", args.small_rows, args.small_width, args.small_k * 3, args.seed + 1)
        mm = np.load(tmp / "f.npy", mmap_mode="r")
        hidden = args.small_width // (2 * NUM_LAYERS)
        common = dict(n_clusters=args.small_k, num_layers=NUM_LAYERS, hidden_size=hidden)
        budgets = [resolve_budget(0.1, args.small_rows)]
        out = {}
        for mode in (False, True):
            t0 = time.perf_counter()
            st = coincide_stages(mm, out_of_core=mode, **common)
            sel = coincide_select(mm, st, budgets)[0]
            out[mode] = (st, sel, time.perf_counter() - t0)
        (a, sa, ta), (b, sb, tb) = out[False], out[True]
        same = {
            "assignment": bool(np.array_equal(a.assignment, b.assignment)),
            "centroids": bool(np.array_equal(a.centroids, b.centroids)),
            "density": bool(np.array_equal(a.cluster_density, b.cluster_density)),
            "selected rows": bool(np.array_equal(sa.indices, sb.indices)),
        }
        return {"rows": args.small_rows, "width": args.small_width, "k": args.small_k, "in_memory_s": ta,
                "out_of_core_s": tb, "train_rows": b.kmeans_info["train_rows"], "same": same,
                "selected": int(sb.count)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def child(path: Path, out: Path, k: int, mppc: int, niter: int, budget: float) -> None:
    """The large run, alone in its process: ``run_method`` on the memmap, then ``ru_maxrss``."""
    import torch  # noqa: F401  (library loading before the clock)

    from vlselect.select import run_method

    x = np.load(path, mmap_mode="r")
    hidden = x.shape[1] // (2 * NUM_LAYERS)
    t0 = time.perf_counter()
    (sel,) = run_method("coincide", {"features": x}, budget,
                        params={"n_clusters": k, "num_layers": NUM_LAYERS, "hidden_size": hidden,
                                "max_points_per_centroid": mppc, "niter": niter})
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.write_text(json.dumps({"wall_s": wall, "peak_rss_bytes": rss, "selected": sel.count,
                               "timings_s": {**sel.info["timings_s"], "greedy selection": sel.info["select_s"]}, "kmeans_iterations": sel.info["kmeans_iterations"],
                               "kmeans_train_rows": sel.info["kmeans_train_rows"],
                               "out_of_core": sel.info["kmeans_out_of_core"],
                               "cluster_size_max": sel.info["cluster_size_max"]}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--width", type=int, default=20_480, help="2 x 5 layers x hidden (official 20,480)")
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--topics", type=int, default=200, help="centres the rows are drawn around")
    ap.add_argument("--niter", type=int, default=50, help="k-means iterations (official 50; faiss stops early)")
    ap.add_argument("--max-points-per-centroid", type=int, default=256, help="faiss training rows per cluster")
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the memmap (8.2 GB at full size)")
    ap.add_argument("--small-rows", type=int, default=20_000)
    ap.add_argument("--small-width", type=int, default=2_560, help="a multiple of 10 (5 layers x 2 halves)")
    ap.add_argument("--small-k", type=int, default=20)
    ap.add_argument("--small-only", action="store_true")
    ap.add_argument("--skip-small", action="store_true", help="only the large case")
    ap.add_argument("--child", nargs=2, metavar=("PATH", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--write", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.write is not None:
        write_memmap(args.write, args.rows, args.width, args.topics, args.seed)
        return 0
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.k, args.max_points_per_centroid, args.niter, args.budget)
        return 0

    from rich.console import Console
    from rich.table import Table

    from vlselect.cluster import _gib, kmeans_cost

    console = Console(width=max(Console().width, 120))
    results: dict = {}
    s = None if args.skip_small else small_case(args)
    t = None if s is None else Table(title=f"in memory vs out of core: {s['rows']:,} x {s['width']:,} float16 memmap, K={s['k']}, "
                    f"budget 0.1, one process")
    if s is not None:
        for col in ("what", "in memory", "out of core"):
            t.add_column(col)
        t.add_row("wall s (k-means .. selection)", f"{s['in_memory_s']:.1f}", f"{s['out_of_core_s']:.1f}")
        for key, ok in s["same"].items():
            t.add_row(f"identical {key}", "", "yes" if ok else "NO")
        console.print(t)
        results["small"] = s
    if not args.small_only:
        cost = kmeans_cost(args.rows, args.width, args.k, niter=args.niter,
                           max_points_per_centroid=args.max_points_per_centroid)
        base = Path(tempfile.mkdtemp(prefix="vlselect_ooc_", dir=args.dir))
        try:
            path = base / "features.npy"
            t0 = time.perf_counter()
            with console.status(f"writing {args.rows:,} x {args.width:,} float16 to {path}"):
                subprocess.run([sys.executable, __file__, "--write", str(path), "--rows", str(args.rows),
                                "--width", str(args.width), "--topics", str(args.topics), "--seed", str(args.seed)],
                               check=True)
            console.print(f"memmap written in {time.perf_counter() - t0:.0f} s ({path.stat().st_size / 1e9:.2f} GB)")
            out = base / "result.json"
            with console.status("coincide (child process)"):
                subprocess.run([sys.executable, __file__, "--child", str(path), str(out), "--k", str(args.k),
                                "--max-points-per-centroid", str(args.max_points_per_centroid),
                                "--niter", str(args.niter), "--budget", str(args.budget)], check=True)
            r = json.loads(out.read_text())
        finally:
            shutil.rmtree(base, ignore_errors=True)
        t = Table(title=f"COINCIDE out of core: {args.rows:,} x {args.width:,} float16 memmap, K={args.k}, "
                        f"budget {args.budget}, default mode")
        t.add_column("what")
        t.add_column("value", justify="right")
        t.add_row("wall s", f"{r['wall_s']:.0f}")
        for stage, sec in r["timings_s"].items():
            t.add_row(f"  {stage} s", f"{sec:.0f}")
        t.add_row("peak RSS", _gib(r["peak_rss_bytes"]))
        t.add_row("target", "<= 3 GB peak RSS: " + ("met" if r["peak_rss_bytes"] <= 3 * 2**30 else "NOT met"))
        t.add_row("k-means training rows / iterations", f"{r['kmeans_train_rows']:,} / {r['kmeans_iterations']}")
        t.add_row("largest cluster", f"{r['cluster_size_max']:,} rows")
        t.add_row("estimate: RAM out of core", _gib(cost["ram_out_of_core_bytes"]))
        t.add_row("estimate: RAM in memory / official script",
                  f"{_gib(cost['ram_in_memory_bytes'])} / {_gib(cost['ram_exact_official_bytes'])}")
        t.add_row("estimate: k-means FLOP", f"{cost['flops']:.3g}")
        t.add_row("selected", f"{r['selected']:,}")
        console.print(t)
        results["large"] = {"rows": args.rows, "width": args.width, "k": args.k, **r}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
