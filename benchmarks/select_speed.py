"""Selection speed: vlselect against the official code path, on the shapes the official code was timed on
(issue 5, item 8).

    .venv/bin/python benchmarks/select_speed.py                 # COINCIDE, TIVE, ICONS
    .venv/bin/python benchmarks/select_speed.py --methods tive  # one method
    .venv/bin/python benchmarks/select_speed.py --baselines     # also time our baselines on the same features

Shapes (issue 5, item 8): COINCIDE 20,000 x 512 float32 (4 layers x [64 | 64], the spec §10 layout), K=300,
τ=0.1, budget 0.2; TIVE 30,000 x 8192 float32 in 10 tasks, p=0.15, q=0.001; ICONS 30,000 x 1024 training rows,
4 tasks x 200 validation rows, top 20 %. The synthetic inputs are generated once from a seed and saved to a temp
folder; every (method, implementation) then runs in its **own child process** that loads the same input into
RAM, so wall time and peak RSS (``ru_maxrss``) are per run and not polluted by the others. "official" is the
re-creation of the official code path in ``benchmarks/_reference_<method>.py``; "ours strict" is
``run_method(..., strict_official=True)`` (the mode whose output must equal the official one) and "ours" the
default mode. Wall time excludes loading the input and importing; RSS is the child's peak.

Identity: COINCIDE and TIVE compare the index arrays exactly (order included). ICONS compares as the vectors
README says: the rows above the boundary vote as a set, the count, and the number of boundary-vote rows
(NumPy's unstable argsort decides which tied rows the official code takes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# ------------------------------------------------------------------------------------------ synthetic inputs


def make_coincide(path: Path, n: int = 20000, layers: int = 4, half: int = 64, seed: int = 0) -> None:
    """Spec §10 layout: per layer a "vision" then a "text" half, each tanh'd, L2-normalised, / sqrt(2*layers);
    rows from a hierarchical Gaussian mixture with a shared offset."""
    rng = np.random.default_rng(seed)
    d = 2 * layers * half
    offset = rng.normal(size=d)
    supers = offset + 1.5 * rng.normal(size=(30, d))
    topics = supers[rng.integers(0, 30, 400)] + 0.8 * rng.normal(size=(400, d))
    weights = rng.dirichlet(np.full(400, 0.7))
    labels = rng.choice(400, size=n, p=weights)
    spread = rng.uniform(0.3, 1.5, size=400)[labels][:, None]
    x = topics[labels] + spread * rng.normal(size=(n, d))
    x = np.tanh(x).reshape(n, 2 * layers, half)
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    x /= np.sqrt(2 * layers)
    np.save(path / "coincide_features.npy", x.reshape(n, d).astype(np.float32))


def make_tive(path: Path, n: int = 30000, d: int = 8192, n_tasks: int = 10, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    tasks = [f"task{t}" for t in range(n_tasks)]
    sizes = rng.dirichlet(np.full(n_tasks, 2.0))
    labels = rng.choice(n_tasks, size=n, p=sizes)
    x = np.empty((n, d), dtype=np.float32)
    dirs = rng.normal(size=(n_tasks, d)).astype(np.float32)
    for s in range(0, n, 4096):
        e = min(n, s + 4096)
        block = rng.standard_normal((e - s, d), dtype=np.float32)
        block += 0.5 * dirs[labels[s:e]]
        x[s:e] = block
    np.save(path / "tive_features.npy", x)
    np.save(path / "tive_norms.npy", np.exp(rng.normal(size=n) * 0.5 + rng.normal(size=n_tasks)[labels] * 0.3))
    (path / "tive_tasks.json").write_text(json.dumps([tasks[i] for i in labels]))


def make_icons(path: Path, n: int = 30000, d: int = 1024, tasks: int = 4, m: int = 200, seed: int = 2) -> None:
    rng = np.random.default_rng(seed)
    skills = rng.normal(size=(16, d)) / np.sqrt(d)
    logits = rng.normal(size=(n, 16))
    w = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    train = (w @ skills + 4 * rng.normal(size=(n, d)) / np.sqrt(d)) * np.exp(0.7 * rng.normal(size=(n, 1)))
    np.save(path / "icons_train.npy", train.astype(np.float32))
    for t in range(tasks):
        lg = rng.normal(size=(m, 16))
        lg[:, rng.choice(16, 3, replace=False)] += 3.0
        wv = np.exp(lg) / np.exp(lg).sum(axis=1, keepdims=True)
        v = (wv @ skills + 4 * rng.normal(size=(m, d)) / np.sqrt(d)) * np.exp(0.5 * rng.normal(size=(m, 1)))
        np.save(path / f"icons_val_task{t}.npy", v.astype(np.float32))


MAKERS = {"coincide": make_coincide, "tive": make_tive, "icons": make_icons}

# ------------------------------------------------------------------------------------------------ children


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(method: str, impl: str, data: Path, out: Path) -> None:
    """Run one (method, implementation) and write ``out.npy`` (indices) and ``out.json`` (time, RSS)."""
    import torch  # noqa: F401  (imported before timing, as both paths use it)

    from vlselect.select import run_method

    rss0 = _peak_rss_mb()
    extra: dict = {}
    if method == "coincide":
        x = np.load(data / "coincide_features.npy")
        params = dict(n_clusters=300, niter=50, seed=1234, temp=0.1, sigma=1.0, num_layers=4, hidden_size=64)
        t0 = time.perf_counter()
        if impl == "official":
            from _reference_coincide import reference_coincide

            idx, times = reference_coincide(x, n_clusters=300, fraction=0.2, niter=50, seed=1234, temp=0.1,
                                            sigma=1.0, num_layers=4, hidden_size=64)
            extra = {k: round(v, 3) for k, v in times.items()}
        else:
            (sel,) = run_method("coincide", {"features": x}, "0.2", strict_official=(impl == "strict"), params=params)
            idx = sel.indices
    elif method == "tive":
        x = np.load(data / "tive_features.npy")
        norms = np.load(data / "tive_norms.npy")
        labels = json.loads((data / "tive_tasks.json").read_text())
        t0 = time.perf_counter()
        if impl == "official":
            from _reference_tive import official_tive_select

            idx = np.asarray(official_tive_select(x, norms, labels, p=0.15, q=0.001, seed=1234)["selected_idx"],
                             dtype=np.int64)
        else:
            (sel,) = run_method("tive", {"train": x, "norms": norms}, "0.15", tasks=labels,
                                strict_official=(impl == "strict"), params={"q": 0.001, "seed": 1234})
            idx = sel.indices
    elif method == "icons":
        train = np.load(data / "icons_train.npy")
        vals = {p.stem.replace("icons_val_", ""): np.load(p) for p in sorted(data.glob("icons_val_*.npy"))}
        k = int(20 / 100 * train.shape[0])
        t0 = time.perf_counter()
        if impl == "official":
            from _reference_icons import official_icons_select

            res = official_icons_select(train, vals, None, top_percent=20)
            idx = res["selected"]
            np.save(out.with_suffix(".votes.npy"), res["votes"])
        else:
            inputs = {"train": train, **{f"val/{t}": v for t, v in vals.items()}}
            (sel,) = run_method("icons", inputs, str(k), strict_official=(impl == "strict"),
                                params={"top_percent": 20})
            idx = sel.indices
    else:  # our baselines on the COINCIDE features (ours only)
        x = np.load(data / "coincide_features.npy")
        rng = np.random.default_rng(5)
        scores = rng.random(x.shape[0])
        inputs, params = {
            "semdedup": ({"features": x}, {"n_clusters": 300}),
            "d2pruning": ({"features": x, "scores": scores}, {}),
            "less": ({"train": x, "val/a": x[:200] + 0.1, "val/b": x[200:400]}, {}),
            "el2n": ({"el2n": scores}, {}),
            "random": ({"features": x}, {}),
        }[method]
        t0 = time.perf_counter()
        (sel,) = run_method(method, inputs, "0.2", strict_official=(impl == "strict"), params=params)
        idx = sel.indices
    wall = time.perf_counter() - t0
    np.save(out.with_suffix(".npy"), np.asarray(idx, dtype=np.int64))
    out.with_suffix(".json").write_text(json.dumps({"wall_s": wall, "peak_rss_mb": _peak_rss_mb(),
                                                    "rss_before_mb": rss0, "stages": extra}))


def run_child(method: str, impl: str, data: Path, work: Path, timeout: float | None = None) -> dict:
    out = work / f"{method}_{impl}"
    cmd = [sys.executable, __file__, "--child", method, impl, str(data), str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"],
                "elapsed_s": time.perf_counter() - t0}
    res = json.loads(out.with_suffix(".json").read_text())
    res["indices"] = np.load(out.with_suffix(".npy"))
    if out.with_suffix(".votes.npy").exists():
        res["votes"] = np.load(out.with_suffix(".votes.npy"))
    return res


def compare(method: str, ours: dict, official: dict) -> str:
    if "indices" not in ours or "indices" not in official:
        return "n/a"
    a, b = ours["indices"], official["indices"]
    if a.shape == b.shape and np.array_equal(a, b):
        return "identical"
    if method == "icons" and "votes" in official:
        votes = official["votes"]
        k = b.shape[0]
        boundary = int(votes[b].min())
        above_b = set(np.flatnonzero(votes > boundary).tolist())
        if (a.shape[0] == k and above_b <= set(a.tolist())
                and int((votes[a] == boundary).sum()) == int((votes[b] == boundary).sum())):
            return "identical up to tie order"
    if a.shape == b.shape and set(a.tolist()) == set(b.tolist()):
        return "same set, other order"
    return f"DIFFER ({len(set(a.tolist()) ^ set(b.tolist()))} rows)"


def _fmt(r: dict, key: str, spec: str) -> str:
    return "error" if "error" in r else format(r[key], spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="coincide,tive,icons")
    ap.add_argument("--baselines", action="store_true", help="also time our baselines (no official counterpart)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the synthetic inputs in this folder")
    ap.add_argument("--child", nargs=4, metavar=("METHOD", "IMPL", "DATA", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--make", nargs=2, metavar=("METHOD", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.make:
        MAKERS[args.make[0]](Path(args.make[1]))
        return 0
    if args.child:
        m, impl, data, out = args.child
        child(m, impl, Path(data), Path(out))
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 132))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    tmp = tempfile.TemporaryDirectory(prefix="vlselect_speed_")
    data = args.keep or Path(tmp.name)
    data.mkdir(parents=True, exist_ok=True)
    work = Path(tmp.name) / "runs"
    work.mkdir(exist_ok=True)
    targets = {"coincide": 24.0, "tive": 19.0, "icons": 20.0}
    table = Table(title=f"selection speed (one run each, {os.cpu_count()} cores): official approach vs vlselect")
    for col in ("method", "official s", "ours strict s", "speed-up", "ours default s", "official peak RSS MB",
                "ours strict peak RSS MB", "strict output vs official"):
        table.add_column(col, justify="right" if col != "method" else "left")
    rows = []
    for m in methods:
        if m not in MAKERS:
            console.print(f"[red]unknown method {m}[/]")
            return 2
        with console.status(f"generating {m} input"):
            if not any(data.glob(f"{m}_*")):
                # in a child, so this process stays small: Linux keeps ru_maxrss across fork + exec, and a
                # large parent would inflate every child's peak RSS
                subprocess.run([sys.executable, __file__, "--make", m, str(data)], check=True)
        res = {}
        for impl in ("official", "strict", "default"):
            with console.status(f"{m}: {impl}"):
                res[impl] = run_child(m, impl, data, work)
            if "error" in res[impl]:
                console.print(f"[red]{m} {impl} failed:[/] {res[impl]['error']}")
        off, st, de = res["official"], res["strict"], res["default"]
        ratio = (off["wall_s"] / st["wall_s"]) if "error" not in off and "error" not in st else float("nan")
        same = compare(m, st, off)
        table.add_row(m, _fmt(off, "wall_s", ".2f"), _fmt(st, "wall_s", ".2f"), f"{ratio:.1f}x",
                      _fmt(de, "wall_s", ".2f"), _fmt(off, "peak_rss_mb", ".0f"), _fmt(st, "peak_rss_mb", ".0f"), same)
        rows.append({"method": m, "official": {k: v for k, v in off.items() if k not in ("indices", "votes")},
                     "strict": {k: v for k, v in st.items() if k not in ("indices", "votes")},
                     "default": {k: v for k, v in de.items() if k not in ("indices", "votes")},
                     "speedup": ratio, "identical": same, "issue_official_figure_s": targets.get(m)})
    if args.baselines:
        if not any(data.glob("coincide_*")):
            subprocess.run([sys.executable, __file__, "--make", "coincide", str(data)], check=True)
        for m in ("random", "el2n", "less", "semdedup", "d2pruning"):
            with console.status(f"{m}"):
                r = run_child(m, "default", data, work)
            table.add_row(f"{m} (ours)", "-", "-", "-", _fmt(r, "wall_s", ".2f"), "-",
                          _fmt(r, "peak_rss_mb", ".0f") if "error" not in r else "error", "-")
    console.print(table)
    console.print("official = benchmarks/_reference_<method>.py (the official code path re-created in-process); "
                  "ours strict = run_method(..., strict_official=True); times exclude input loading.")
    (Path(tmp.name) / "results.json").write_text(json.dumps(rows, default=float, indent=1))
    print(json.dumps(rows, default=float))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
