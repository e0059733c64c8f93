"""Selection at LLaVA-665K scale on synthetic float16 memmaps: wall time and peak RSS (issue 5, item 7).

    .venv/bin/python benchmarks/select_scale.py                      # 665,298 rows (writes ~7.5 GB to a temp dir)
    .venv/bin/python benchmarks/select_scale.py --rows 100000        # a reduced run
    .venv/bin/python benchmarks/select_scale.py --methods tive,icons --dir /big/tmp --strict

Inputs, written block by block (never whole in RAM) to a temporary folder that is deleted afterwards:
ICONS and TIVE read one ``rows x 5120`` float16 memmap of projected gradients (6.8 GB at 665,298 rows), TIVE also
per-row gradient norms and 10 task labels, ICONS four target tasks of 200 validation rows; COINCIDE reads a
``rows x 512`` float16 memmap (4 layers x [64 | 64]) with K=1000. Budget 0.2 (TIVE p=0.15 as in its paper).
Each method runs in its own child process through ``run_method`` (default mode unless ``--strict``): the time
includes the dispatcher's NaN scan and the method, not writing the inputs; peak RSS is the child's
``ru_maxrss`` (file-backed memmap pages the process keeps mapped count too).

Targets (issue 5, item 7): ICONS and TIVE within 10 minutes and 8 GB each; COINCIDE within 15 minutes.

Issue 14, item 4: TIVE and ICONS read the gradient memmap at most twice (counted: the child wraps the memmap in a
row-counting subclass) and should take at most 1.5x the time NumPy needs to read it once. The floor ("read") is
measured in its own child right before the methods: every block copied out of the memmap into one buffer, pages
released, nothing computed. A second floor ("convert") also converts each block to float32 as the methods do
(cache-sized chunks into one reused buffer, one torch thread). Two more rows show the arithmetic alone, no read:
"icons-math" and "tive-math" repeat the methods' per-chunk products on one chunk already in cache, as many times
as the pool has chunks (ICONS: a 4-column product and the row norms; TIVE: norms, scaling and ``index_add_``
of pass 1 plus the 16-column product of pass 2; the torch path's arithmetic). "tive-unfused" and
"icons-unfused" are the methods on the torch convert-then-multiply path (``VLSELECT_FUSED=0``, the code before the
fused float16 kernels), side by side with the fused ones; numba's import and kernel load happen before the clock,
like torch's import, and are printed beside the table. ``--cold`` evicts the file from the page cache
(``posix_fadvise DONTNEED``, this file only) before the floors and before each method, so they read from disk;
otherwise they read what the page cache holds. The machine may be shared: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULL_ROWS = 665_298
TARGETS = {"icons": (600.0, 8192.0), "tive": (600.0, 8192.0), "coincide": (900.0, None)}


def _write_memmap(path: Path, rows: int, width: int, fill, block: int = 16384) -> None:
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, width))
    for s in range(0, rows, block):
        e = min(rows, s + block)
        mm[s:e] = fill(s, e)
        mm.flush()
    del mm


def make_inputs(d: Path, rows: int, width: int, methods: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n_tasks = 10
    labels = rng.integers(0, n_tasks, size=rows)
    if "tive" in methods or "icons" in methods:
        dirs = rng.normal(size=(16, width)).astype(np.float32)
        mix = rng.integers(0, 16, size=rows)

        def grads(s: int, e: int) -> np.ndarray:
            r = np.random.default_rng(seed * 1000003 + s)
            b = r.standard_normal((e - s, width), dtype=np.float32)
            b += 0.5 * dirs[mix[s:e]]
            return b * 0.05

        _write_memmap(d / "grads.npy", rows, width, grads)
        np.save(d / "norms.npy", np.exp(rng.normal(size=rows) * 0.5))
        (d / "tasks.json").write_text(json.dumps([f"task{t}" for t in labels]))
        for t in range(4):
            v = rng.normal(size=(200, width)).astype(np.float32) * 0.05
            v += 0.5 * 0.05 * dirs[rng.integers(0, 16)]
            np.save(d / f"val_task{t}.npy", v.astype(np.float16))
    if "coincide" in methods:
        centers = rng.normal(size=(2000, 512)).astype(np.float32)
        topic = rng.integers(0, 2000, size=rows)

        def feats(s: int, e: int) -> np.ndarray:
            r = np.random.default_rng(seed * 7919 + s)
            x = np.tanh(centers[topic[s:e]] + r.standard_normal((e - s, 512), dtype=np.float32)).reshape(e - s, 8, 64)
            x /= np.linalg.norm(x, axis=2, keepdims=True)
            return (x / np.sqrt(8)).reshape(e - s, 512)

        _write_memmap(d / "feats.npy", rows, 512, feats)


class _CountingMemmap(np.memmap):
    """Adds the rows of every ``self[...]`` read of the original array to ``_counter`` (see tests/test_passes.py)."""

    def __getitem__(self, key):
        counter = self.__dict__.get("_counter")
        if counter is not None:
            k0 = key[0] if isinstance(key, tuple) else key
            if isinstance(k0, slice):
                counter[0] += len(range(*k0.indices(self.shape[0])))
            elif isinstance(k0, (int, np.integer)):
                counter[0] += 1
            else:
                k0 = np.asarray(k0)
                counter[0] += int(k0.sum()) if k0.dtype == bool else int(k0.size)
        out = super().__getitem__(key)
        if isinstance(out, _CountingMemmap):
            out.__dict__["_counter"] = None
        return out


def _grads(d: Path) -> np.memmap:
    x = np.load(d / "grads.npy", mmap_mode="r").view(_CountingMemmap)
    x.__dict__["_counter"] = [0]
    return x


def evict(path: Path) -> None:
    """Drop one file's pages from the page cache (Linux; other files and processes are not touched)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_once(x: np.ndarray, block_rows: int = 4096) -> None:
    """The floor: every row copied out of the memmap once (pages released), nothing computed."""
    from vlselect.select.icons import _release

    buf = np.empty((block_rows,) + x.shape[1:], dtype=x.dtype)
    for a in range(0, x.shape[0], block_rows):
        b = min(x.shape[0], a + block_rows)
        np.copyto(buf[: b - a], np.asarray(x[a:b]))
        _release(x, a, b)


def child(method: str, d: Path, out: Path, strict: bool) -> None:
    import torch  # noqa: F401  (library loading is not part of a pass: imported before the clock starts)

    from vlselect.select import run_method

    load = None
    if method in ("tive", "icons"):
        # numba and the fused kernels are library loading too (import + LLVM start-up, about 0.75 s once per
        # process), outside the clock like torch's import; the time is kept and printed beside the table
        t0 = time.perf_counter()
        from vlselect.select import kernels

        kernels.warm()
        load = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = None
    if method == "read":
        x = _grads(d)
        read_once(x)
        sel = None
    elif method == "convert":  # a second floor: one read plus the float16 -> float32 conversion every method pays
        from vlselect.select.icons import chunk_rows_for, iter_row_blocks, torch_threads

        x = _grads(d)
        with torch_threads(1):  # as TIVE and ICONS stream: cache-sized chunks into one reused buffer, one thread
            for _ in iter_row_blocks(x, chunk_rows_for(int(x.shape[1])), np.float32):
                pass
        sel = None
    elif method in ("icons-math", "tive-math"):  # the arithmetic of the streaming passes alone, on a cached chunk
        import torch

        from vlselect.select.icons import chunk_rows_for, torch_threads

        shape = np.load(d / "grads.npy", mmap_mode="r").shape
        rows = chunk_rows_for(shape[1])
        chunk = torch.randn(rows, shape[1])
        reps = -(-shape[0] // rows)
        with torch_threads(1):
            if method == "icons-math":
                means = torch.randn(4, shape[1])
                for _ in range(reps):
                    torch.mm(chunk, means.T)
                    torch.linalg.vector_norm(chunk, 2, dim=1)
            else:
                ct, acc, dest = torch.randn(16, shape[1]), torch.zeros(11, shape[1]), torch.randint(0, 10, (rows,))
                for _ in range(reps):  # pass 1, then pass 2 (twice the chunks in all, as the method)
                    inv = torch.linalg.vector_norm(chunk, 2, dim=1).clamp_min(1e-12).reciprocal()
                    acc.index_add_(0, dest, chunk * inv[:, None])
                for _ in range(reps):
                    torch.mm(chunk, ct.T)
        sel = None
    elif method in ("tive", "tive-unfused"):
        x = _grads(d)
        labels = json.loads((d / "tasks.json").read_text())
        (sel,) = run_method("tive", {"train": x, "norms": np.load(d / "norms.npy")}, "0.15", tasks=labels,
                            strict_official=strict)
    elif method in ("icons", "icons-unfused"):
        x = _grads(d)
        vals = {f"val/{p.stem[4:]}": np.load(p) for p in sorted(d.glob("val_task*.npy"))}
        k = int(0.2 * x.shape[0])
        (sel,) = run_method("icons", {"train": x, **vals}, str(k), strict_official=strict,
                            params={"top_percent": 20})
    elif method == "coincide":
        x = np.load(d / "feats.npy", mmap_mode="r")
        (sel,) = run_method("coincide", {"features": x}, "0.2", strict_official=strict,
                            params={"n_clusters": 1000, "num_layers": 4, "hidden_size": 64})
    else:
        raise SystemExit(f"unknown method {method}")
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    passes = None if x is None else x.__dict__["_counter"][0] / x.shape[0]
    out.write_text(json.dumps({"wall_s": wall, "kernel_load_s": load, "peak_rss_mb": rss,
                               "selected": None if sel is None else sel.count,
                               "shortfall": None if sel is None else sel.shortfall, "passes": passes}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=FULL_ROWS, help=f"pool rows (default {FULL_ROWS})")
    ap.add_argument("--width", type=int, default=5120, help="gradient width for ICONS/TIVE (default 5120)")
    ap.add_argument("--methods", default="tive,icons,coincide")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the temporary memmaps")
    ap.add_argument("--strict", action="store_true", help="run strict_official mode instead of the default")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per-method limit in seconds")
    ap.add_argument("--cold", action="store_true", help="evict the gradient file from the page cache before the "
                    "read floor and before each method (both read from disk)")
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "DIR", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--make", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.make is not None:
        make_inputs(args.make, args.rows, args.width, [m.strip() for m in args.methods.split(",")])
        return 0
    if args.child:
        m, d, out = args.child
        child(m, Path(d), Path(out), args.strict)
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    base = Path(tempfile.mkdtemp(prefix="vlselect_scale_", dir=args.dir))
    try:
        t0 = time.perf_counter()
        with console.status(f"writing {args.rows:,}-row float16 memmaps to {base}"):
            # in a child: Linux keeps ru_maxrss across fork + exec, so the writer's pages must not be ours
            subprocess.run([sys.executable, __file__, "--make", str(base), "--rows", str(args.rows),
                            "--width", str(args.width), "--methods", ",".join(methods)], check=True)
        console.print(f"inputs written in {time.perf_counter() - t0:.0f} s "
                      f"({sum(p.stat().st_size for p in base.iterdir()) / 1e9:.2f} GB)")
        table = Table(title=f"selection at scale: {args.rows:,} rows, float16 memmaps, "
                            f"{'strict' if args.strict else 'default'} mode")
        for col in ("method", "input", "wall s", "peak RSS MB", "passes", "x read", "selected", "target", "met"):
            table.add_column(col, justify="left" if col in ("method", "input", "target") else "right")
        results = []
        floor = None
        streamed = [m for m in methods if m in ("tive", "icons")]
        if streamed:
            methods = (["read", "convert"] + [f"{m}-math" for m in streamed]
                       + [f"{m}-unfused" for m in streamed] + methods)
            # numba compiles the fused float16 kernels once per installation (about 1.5 s, cached on disk after):
            # done here, as an install would, so that every child loads them from the cache like a user's run
            subprocess.run([sys.executable, "-c", "from vlselect.select import kernels; kernels.warm()"], check=True)
        for m in methods:
            if args.cold and m.split("-")[0] in ("read", "convert", "tive", "icons") and not m.endswith("-math"):
                evict(base / "grads.npy")
            out = base / f"{m}.json"
            cmd = [sys.executable, __file__, "--child", m, str(base), str(out)] + (["--strict"] if args.strict else [])
            # "-unfused": the same method on the torch convert-then-multiply path (the code before the fused kernels)
            env = dict(os.environ, VLSELECT_FUSED="0" if m.endswith("-unfused") else "1")
            with console.status(f"{m}"):
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
                    err = None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["failed"])[-1]
                except subprocess.TimeoutExpired:
                    err = f"timed out after {args.timeout:.0f} s"
            side = ("read", "convert", "icons-math", "tive-math", "tive-unfused", "icons-unfused")  # no target
            width = args.width if m in ("tive", "icons") + side else 512
            t_lim, m_lim = TARGETS.get(m, (None, None))
            target = (f"<= {t_lim / 60:.0f} min" + (f", <= {m_lim / 1024:.0f} GB" if m_lim else "")) if t_lim else "-"
            if m in ("tive", "icons"):
                target += ", <= 2 passes, <= 1.5x read"
            if err:
                table.add_row(m, f"{args.rows:,} x {width}", "error", "-", "-", "-", "-", target, err[:60])
                results.append({"method": m, "error": err})
                continue
            r = json.loads(out.read_text())
            if m == "read":
                floor = r["wall_s"]
            ratio = r["wall_s"] / floor if floor and m in ("tive", "icons") + side else None
            met = t_lim is None or (r["wall_s"] <= t_lim and (m_lim is None or r["peak_rss_mb"] <= m_lim))
            if m in ("tive", "icons"):
                met = met and r["passes"] is not None and r["passes"] <= 2 and ratio is not None and ratio <= 1.5
            scale_note = "" if args.rows == FULL_ROWS else " (reduced rows)"
            table.add_row(m, f"{args.rows:,} x {width}", f"{r['wall_s']:.1f}", f"{r['peak_rss_mb']:.0f}",
                          "-" if r["passes"] is None else f"{r['passes']:g}",
                          "-" if ratio is None else f"{ratio:.2f}", str(r["selected"] or "-"), target,
                          ("-" if m in side else ("yes" if met else "NO")) + scale_note)
            results.append({"method": m, "rows": args.rows, "width": width, "x_read_once": ratio,
                            "load_avg_1min": os.getloadavg()[0],
                            "cold": bool(args.cold), **r})
        console.print(table)
        for r in results:
            if r.get("kernel_load_s") is not None and floor:
                console.print(f"{r['method']}: numba import + fused kernel load {r['kernel_load_s']:.2f} s (outside the "
                              f"clock, like torch's import); with it {(r['wall_s'] + r['kernel_load_s']) / floor:.2f}x "
                              "read")
        loads = [r.get("load_avg_1min") for r in results if r.get("load_avg_1min") is not None]
        if loads:
            console.print(f"load average (1 min) after each row: {', '.join(f'{v:.1f}' for v in loads)} "
                          f"on {os.cpu_count()} CPUs")
        print(json.dumps(results))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
