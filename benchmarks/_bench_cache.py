"""Reading a ``vlselect bench`` run's cache from the benchmark scripts (``icons_anatomy.py``, ``subset_profile.py``,
``icons_answers.py``, ``task_mix_probe.py``)."""

from __future__ import annotations

import json
from pathlib import Path


def one_stage(cache: Path, prefix: str) -> Path:
    """The one finished ``<prefix>-*`` stage folder of ``cache``; exits with a clear message otherwise."""
    found = sorted(p for p in cache.glob(f"{prefix}-*") if (p / "done.json").exists())
    if len(found) != 1:
        raise SystemExit(f"{cache}: expected one finished {prefix}-* stage, found {len(found)}: "
                         f"{[p.name for p in found]}; pass the bench folder of one run")
    return found[0]


def method_selection(cache: Path, method: str) -> Path:
    """The one finished ``select-*`` stage folder of ``method`` in ``cache``; exits with a clear message otherwise."""
    found = sorted(p for p in cache.glob("select-*") if (p / "done.json").exists()
                   and json.loads((p / "recipe.json").read_text()).get("method") == method)
    if len(found) != 1:
        raise SystemExit(f"{cache}: expected one finished selection of {method}, found {len(found)}: "
                         f"{[p.name for p in found]}; pass the bench folder of one run that included {method}")
    return found[0]
