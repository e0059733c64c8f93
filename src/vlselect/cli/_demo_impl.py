"""The demo: the quick benchmark on the built-in world (what the README's first command runs).

It makes the world, shows its pool statistics, then runs :func:`vlselect.bench.run_bench` in its quick form:
features, the bench's selection methods, fine-tuning on each subset, evaluation, the results table and the HTML report.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

console = Console()


def run_demo(out: Path, size: int = 0, seed: int = 0, jobs: int = 2) -> dict:
    from vlselect.bench import BenchConfig, run_bench
    from vlselect.bench.report_console import print_results
    from vlselect.cli.pool import print_stats
    from vlselect.pool import open_pool, pool_stats

    console.print(f"[bold]vlselect demo[/] → {out}  (the quick benchmark: world → features → select → train → eval)")
    cfg = BenchConfig.quick(seed=seed, jobs=jobs, **({"size": size} if size else {}))
    # the world first, so its statistics show before the long stages (the bench reuses it from the cache)
    from vlselect.bench.run import make_worlds
    from vlselect.bench.stages import StageCache

    world = make_worlds(StageCache(out / "cache", log=console.print), cfg)["world"]
    print_stats(pool_stats(open_pool(world / "pool.json")), console)
    results = run_bench(out, cfg, command=f"vlselect demo --out {out}")
    print_results(results, console)
    console.print(f"\nreport: {out / 'report.html'}  ·  table: {out / 'results.csv'}  ·  "
                  f"world card: {world / 'README.md'}")
    return results
