"""Loading a script of ``benchmarks/`` as a module in a test (the scripts import their sibling ``_bench_cache``)."""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@contextmanager
def on_path():
    """``benchmarks/`` on ``sys.path`` for the block (what a script's own imports need when it runs)."""
    sys.path.insert(0, str(BENCH))
    try:
        yield
    finally:
        sys.path.remove(str(BENCH))


def load_script(name: str):
    """``benchmarks/<name>.py`` as a module."""
    with on_path():
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return mod
