"""Cached, measured stages: the benchmark's unit of reuse.

A stage is a function that writes into a folder. Its folder is named by a hash of everything that determines its
output (its recipe, the keys of the stages it reads, and the package's code version:
:func:`vlselect.artifact.code_version`), so a second run with one new method only pays for that method, and a
changed recipe or changed code never reuses a stale result. A stage is done when ``done.json`` exists in its folder
(written last, atomically); an interrupted stage is started again, and resumes where the stage's own code resumes
(feature extraction, training: their artifacts). A stage folder is locked while it runs: a second bench on the same
folder is refused with a clear error instead of writing into it at the same time.

Each stage's wall time and peak resident memory (sampled by a thread; of this process and its children) are
recorded in ``done.json`` and gathered into the report's cost table.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from vlselect.artifact import FolderLock, atomic_write_json, clear_folder, code_version, digest


def recipe_key(recipe: Any) -> str:
    """A short stable hash of a JSON-serialisable recipe."""
    return digest(recipe).split(":", 1)[1][:12]  # the package's one content hash (vlselect.artifact.digest)


@dataclass
class Cost:
    seconds: float = 0.0
    peak_rss_mb: float = 0.0


@contextmanager
def measure(interval: float = 0.05) -> Iterator[Cost]:
    """Wall time and peak RSS (this process plus its children, in MB) of the ``with`` block."""
    import psutil

    proc = psutil.Process()
    cost = Cost()
    stop = threading.Event()

    def rss() -> float:
        total = 0
        try:
            total = proc.memory_info().rss
            for ch in proc.children(recursive=True):
                try:
                    total += ch.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        return total / 2**20

    def sample() -> None:
        while not stop.is_set():
            cost.peak_rss_mb = max(cost.peak_rss_mb, rss())
            stop.wait(interval)

    t = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    t.start()
    try:
        yield cost
    finally:
        stop.set()
        t.join()
        cost.seconds = time.perf_counter() - start
        cost.peak_rss_mb = max(cost.peak_rss_mb, rss())


class StageCache:
    """Runs stages into ``root/<name>-<key>/`` once, and remembers what each cost."""

    def __init__(self, root: str | os.PathLike, log: Callable[[str], None] = print, *, code: str | None = None,
                 overwrite: bool = False) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.costs: list[dict[str, Any]] = []
        self.code = code_version() if code is None else code
        self.overwrite = overwrite  # recompute every stage this cache runs (each folder cleared once)
        self._cleared: set[Path] = set()

    def folder(self, name: str, recipe: Any) -> Path:
        """``root/<name>-<hash of the recipe and the code version>``."""
        return self.root / f"{name}-{recipe_key({'recipe': recipe, 'code': self.code})}"

    def run(self, name: str, recipe: Any, fn: Callable[[Path], Any], *, label: str | None = None,
            group: str | None = None) -> tuple[Path, Any]:
        """Run ``fn(folder)`` unless ``name`` with this ``recipe`` is done; return the folder and ``fn``'s
        JSON-serialisable result (stored in ``done.json``, so a cached run returns the same value).

        ``group`` names the cost row this stage adds to (e.g. all training runs of one method).
        """
        folder = self.folder(name, recipe)
        done = folder / "done.json"
        label = label or name
        with FolderLock(folder, exclusive=True):
            if self.overwrite and folder not in self._cleared:
                clear_folder(folder)
                self._cleared.add(folder)
            if done.exists():
                data = json.loads(done.read_text())
                self.costs.append({**data["cost"], "stage": group or name, "cached": True})
                return folder, data.get("result")
            atomic_write_json(folder / "recipe.json", recipe, default=str)
            self.log(f"[bold]{label}[/] …")
            with measure() as cost:
                result = fn(folder)
            if os.environ.get("VLSELECT_TEST_KILL_AFTER_STAGE") == name:  # fault tests: die before done.json
                os.kill(os.getpid(), signal.SIGKILL)
            row = {"seconds": round(cost.seconds, 3), "peak_rss_mb": round(cost.peak_rss_mb, 1)}
            atomic_write_json(done, {"cost": row, "result": result, "code": self.code}, indent=None, sort_keys=False, default=str)
        self.costs.append({**row, "stage": group or name, "cached": False})
        self.log(f"[green]✓[/] {label} ({cost.seconds:.1f} s, peak {cost.peak_rss_mb:.0f} MB)")
        return folder, result

    def record(self, name: str, recipe: Any, result: Any, seconds: float, peak_rss_mb: float, *,
               group: str | None = None) -> Path:
        """Mark a stage that ran elsewhere (e.g. in a worker process) as done, with the cost it measured there."""
        folder = self.folder(name, recipe)
        atomic_write_json(folder / "recipe.json", recipe, default=str)
        row = {"seconds": round(float(seconds), 3), "peak_rss_mb": round(float(peak_rss_mb), 1)}
        atomic_write_json(folder / "done.json", {"cost": row, "result": result, "code": self.code}, indent=None, sort_keys=False,
                          default=str)
        self.costs.append({**row, "stage": group or name, "cached": False})
        return folder

    def forget(self, name: str, recipe: Any) -> None:
        shutil.rmtree(self.folder(name, recipe), ignore_errors=True)

    def cost_table(self) -> list[dict[str, Any]]:
        """Costs summed per stage group (time added; peak memory is the maximum)."""
        out: dict[str, dict[str, Any]] = {}
        for c in self.costs:
            row = out.setdefault(c["stage"], {"stage": c["stage"], "seconds": 0.0, "peak_rss_mb": 0.0, "runs": 0,
                                              "cached": 0})
            row["seconds"] += c["seconds"]
            row["peak_rss_mb"] = max(row["peak_rss_mb"], c["peak_rss_mb"])
            row["runs"] += 1
            row["cached"] += int(c.get("cached", False))
        return list(out.values())
