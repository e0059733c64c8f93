"""The whole loop on the synthetic world: methods x budgets x seeds → a results table and an HTML report; over
several worlds, the table of their means."""

from vlselect.bench.run import ALL_METHODS, DEFAULT_METHODS, BenchConfig, run_bench
from vlselect.bench.stages import StageCache, measure, recipe_key
from vlselect.bench.worlds import DEFAULT_WORLDS, combine_worlds, run_worlds

__all__ = ["ALL_METHODS", "DEFAULT_METHODS", "DEFAULT_WORLDS", "BenchConfig", "StageCache", "combine_worlds",
           "measure", "recipe_key", "run_bench", "run_worlds"]
