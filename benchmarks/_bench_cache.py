"""Reading a ``vlselect bench`` run's cache from the benchmark scripts (``icons_anatomy.py``, ``subset_profile.py``,
``icons_answers.py``, ``task_mix_probe.py``, ``more_seeds.py``, ``count_prior.py``, ``question_noise.py``,
``skill_rows.py``, ``swap_rows.py``, ``answer_skew.py``, ``method_on_bench.py``,
``coincide_reference.py``)."""

from __future__ import annotations

import json
from pathlib import Path


def one_stage(cache: Path, prefix: str) -> Path:
    """The one finished ``<prefix>-*`` stage folder of ``cache``; exits with a clear message otherwise."""
    found = sorted(p for p in cache.glob(f"{prefix}-*") if (p / "done.json").exists())
    if len(found) != 1:
        raise SystemExit(f"{cache}: expected one finished {prefix}-* stage, found {len(found)}: "
                         f"{[p.name for p in found]}; pass the bench folder of one run (of a several-world run: "
                         "its OUT/world-N folder)")
    return found[0]


def world_folders(folders) -> list[Path]:
    """The single-world bench folders among ``folders``: a several-world ``vlselect bench --out`` folder stands
    for its ``world-*`` folders. Exits with a clear message when one is not a finished bench with its cache."""
    out: list[Path] = []
    for f in map(Path, folders):
        subs = sorted(p for p in f.glob("world-*") if (p / "results.json").is_file())
        out += subs or [f]
    for f in out:
        if not (f / "results.json").is_file() or not (f / "cache").is_dir():
            raise SystemExit(f"{f}: not a finished vlselect bench folder with its cache (results.json and cache/ "
                             "expected; the committed results folders hold no cache)")
    return out


def claim_folder(out: Path, probe: dict) -> str | None:
    """Make ``out`` the folder of one probe (a script's run on a bench: its identity and options, ``probe``): a
    folder holding another probe is refused with a clear message (never mixed), one holding this probe finished
    returns its ``summary.json`` text (shown, not rerun), one unfinished starts over; an unrelated non-empty folder
    is refused. On return None, ``out`` is empty but for ``probe.json``."""
    import shutil
    import sys

    if (out / "probe.json").exists():
        had = json.loads((out / "probe.json").read_text())
        if had != probe:
            sys.exit(f"{out} holds the probe {had}, not {probe}; fix: pass another --out, or delete that folder")
        if (out / "summary.json").exists():
            return (out / "summary.json").read_text()
    elif out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty and holds no probe; fix: pass an empty or new --out")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "probe.json").write_text(json.dumps(probe, indent=1))
    return None


def _finished(cache: Path, prefix: str) -> list[tuple[Path, dict]]:
    return [(p, json.loads((p / "recipe.json").read_text())) for p in sorted(cache.glob(f"{prefix}-*"))
            if (p / "done.json").exists()]


def _one_bench(cache: Path, what: str, dups: list) -> None:
    if dups:
        raise SystemExit(f"{cache}: more than one finished {what} for {sorted(set(dups))[:5]}: the cache holds the "
                         "stages of more than one bench (a rerun into the same --out with other options); pass the "
                         "folder of one run")


def bench_runs(cache: Path) -> dict[tuple[str, float, int], Path]:
    """Every finished training run of the cache by (method, budget, seed). Refuses (exits with a clear message) a
    cache holding two runs of one key: runs of two benches would otherwise be mixed silently."""
    out: dict[tuple[str, float, int], Path] = {}
    dups = []
    for p, r in _finished(cache, "run"):
        key = (r["method"], float(r.get("budget", 0.0)), int(r.get("seed", 0)))
        dups += [key] if key in out else []
        out[key] = p
    _one_bench(cache, "training run", dups)
    return out


def bench_selections(cache: Path) -> dict[tuple[str, float], Path]:
    """Every finished selection of the cache by (method, budget): the path of its indices. Refuses a cache holding
    two selections of one method (another bench's, or a variant such as another K) instead of picking one."""
    out: dict[tuple[str, float], Path] = {}
    dups = []
    for p, r in _finished(cache, "select"):
        for b in r["budgets"]:
            key = (r["method"], float(b))
            dups += [key] if key in out else []
            out[key] = p / f"indices_{b}.npy"
    _one_bench(cache, "selection", dups)
    return out


def method_selection(cache: Path, method: str) -> Path:
    """The one finished ``select-*`` stage folder of ``method`` in ``cache``; exits with a clear message otherwise."""
    found = sorted(p for p in cache.glob("select-*") if (p / "done.json").exists()
                   and json.loads((p / "recipe.json").read_text()).get("method") == method)
    if len(found) != 1:
        raise SystemExit(f"{cache}: expected one finished selection of {method}, found {len(found)}: "
                         f"{[p.name for p in found]}; pass the bench folder of one run that included {method}")
    return found[0]


def bench_run(bench: Path) -> tuple[dict, "object", dict]:
    """A finished bench's ``results.json``, its :class:`~vlselect.bench.run.BenchConfig`, and its identity: the
    folder, the md5 of ``results.json`` (a rerun of the bench into that folder changes it) and vlselect's code
    version. A result a script makes from the bench records the identity and is reused only on an exact match."""
    import hashlib

    from vlselect.artifact import code_version
    from vlselect.bench.run import BenchConfig

    raw = (bench / "results.json").read_bytes()
    res = json.loads(raw)
    if "worlds" in res:
        raise SystemExit(f"{bench}: a mean over worlds {res['worlds']}; pass one world's folder "
                         f"({', '.join(str(bench / f) for f in res['world_folders'])})")
    cfg = BenchConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in res["config"].items()})
    ident = {"bench": str(bench.resolve()), "results_md5": hashlib.md5(raw).hexdigest(), "code": code_version()}
    return res, cfg, ident


def train_job(cfg, cache: Path, indices: Path, seed: int, out: Path) -> dict:
    """The bench's own training + evaluation job (``vlselect.bench.run._train_and_eval``) for one subset and seed:
    its world, its warm-up's base model, its evaluation sets and its recipe."""
    world = one_stage(cache, "world") / "w"
    base = json.loads((one_stage(cache, "warmup") / "done.json").read_text())["result"]["base_model"]
    return {"out": str(out), "base": base, "pool": str(world / "pool.json"), "images": str(world / "images"),
            "eval_files": sorted(str(p) for p in (world / "eval").glob("*.json")), "indices": str(indices),
            "r": cfg.lora_r, "lr": cfg.lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "length_group": cfg.length_group, "seed": seed, "max_new_tokens": cfg.max_new_tokens,
            "adapter": cfg.adapter, "modules_to_save": list(cfg.modules_to_save), "zero_shot": False}
