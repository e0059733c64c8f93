"""Reading a ``vlselect bench`` run's cache from the benchmark scripts (``icons_anatomy.py``, ``subset_profile.py``)."""

from __future__ import annotations

from pathlib import Path


def one_stage(cache: Path, prefix: str) -> Path:
    """The one finished ``<prefix>-*`` stage folder of ``cache``; exits with a clear message otherwise."""
    found = sorted(p for p in cache.glob(f"{prefix}-*") if (p / "done.json").exists())
    if len(found) != 1:
        raise SystemExit(f"{cache}: expected one finished {prefix}-* stage, found {len(found)}: "
                         f"{[p.name for p in found]}; pass the bench folder of one run")
    return found[0]
