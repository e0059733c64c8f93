"""The whole loop on the synthetic world: methods x budgets x seeds → a results table and an HTML report."""

from vlselect.bench.run import DEFAULT_METHODS, BenchConfig, run_bench
from vlselect.bench.stages import StageCache, measure, recipe_key

__all__ = ["DEFAULT_METHODS", "BenchConfig", "StageCache", "measure", "recipe_key", "run_bench"]
