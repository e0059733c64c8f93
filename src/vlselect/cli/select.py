"""``vlselect select``: run a selection method on feature arrays and write one subset per budget.

Thin over :func:`vlselect.select.run_method` and :mod:`vlselect.select.io` (issue 5, item 6).

Output: with one budget, the files go straight into ``--out DIR``; with a comma list of budgets, into
``DIR/<label>/`` per budget (``frac0.2``, ``n4000``), from a single scoring pass.
"""

from __future__ import annotations

from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from vlselect.errors import ConfigError, PoolError

console = Console()


def _list_methods() -> None:
    from vlselect.select import REGISTRY

    console.print("[bold]selection methods[/]: vlselect select METHOD --input ROLE=PATH --param NAME=VALUE ...")
    for name in sorted(REGISTRY):
        m = REGISTRY[name]
        table = Table(title=f"[bold]{name}[/]: {m.summary}", title_justify="left", box=None, padding=(0, 1))
        table.add_column("input role / param", no_wrap=True, style="cyan")
        table.add_column("default", max_width=16, overflow="fold")
        table.add_column("meaning", min_width=20)
        for r in m.roles:
            table.add_row(f"--input {r.name}", "required" if r.required else "optional", r.help)
        if m.needs_tasks:
            table.add_row("--pool/--tasks", "required", "task labels, one per row")
        for p in m.params:
            extra = f" (alias {', '.join(p.aliases)})" if p.aliases else ""
            choices = f" [{'|'.join(map(str, p.choices))}]" if p.choices else ""
            table.add_row(f"--param {p.name}", repr(p.default), f"{p.help}{choices}{extra}", style=None)
        console.print(table)
        console.print()


def _task_table(rows: list[tuple[str, int, int]], title: str) -> Table:
    t = Table(title=title)
    t.add_column("task")
    t.add_column("pool", justify="right")
    t.add_column("subset", justify="right")
    t.add_column("share of task", justify="right")
    tp = ts = 0
    for name, p, s in rows:
        t.add_row(name, str(p), str(s), f"{(s / p if p else 0):.1%}")
        tp += p
        ts += s
    t.add_row("[bold]all[/]", str(tp), str(ts), f"{(ts / tp if tp else 0):.1%}")
    return t


def _layout_from_store(info: Any, loaded: dict, given: dict) -> None:
    """COINCIDE's ``num_layers`` / ``hidden_size`` default to the layout recorded by the activation extractor in the
    feature store's manifest (the user gives them only for a plain ``.npy``)."""
    wanted = [p.name for p in info.params if p.name in ("num_layers", "hidden_size")]
    li = loaded.get("features")
    if not wanted or li is None or li.kind != "feature_store":
        return
    names = {n for p in info.params if p.name in wanted for n in (p.name, *p.aliases)}
    if names & set(given):
        return
    from pathlib import Path

    from vlselect.select.io import _open_store

    man = _open_store(Path(li.path)).manifest or {}
    layers, hidden = man.get("layers"), man.get("hidden_size")
    if layers and hidden:
        given.setdefault("num_layers", str(len(layers)))
        given.setdefault("hidden_size", str(hidden))
        li.meta["layout_from_manifest"] = {"num_layers": len(layers), "hidden_size": int(hidden)}


def select_command(
    method: Optional[str] = typer.Argument(None, help="Method name (see --list)."),
    inputs: List[str] = typer.Option([], "--input", "-i", help="ROLE=PATH: a FeatureStore dir (DIR:array picks an array), .npy or .json list."),
    pool: Optional[str] = typer.Option(None, "--pool", help="Pool file; rows of every input align with it."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="JSON list of task labels, one per row (runs without a pool)."),
    budget: Optional[str] = typer.Option(None, "--budget", "-b", help="Fraction (0.2), count (4000) or a comma list."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0; --param seed=S works too)."),
    params: List[str] = typer.Option([], "--param", "-p", help="NAME=VALUE, the official scripts' parameter names."),
    strict_official: bool = typer.Option(False, "--strict-official", help="Reproduce the official code exactly, bugs included."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output folder (one budget: files here; several: one sub-folder per budget)."),
    list_methods: bool = typer.Option(False, "--list", help="List every method with its roles and parameters."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the k-means memory and FLOP estimate (coincide, semdedup, d2pruning) and the input size, then exit without selecting."),
) -> None:
    """Select a subset: [bold]vlselect select METHOD --input ROLE=PATH ... --budget B --out DIR[/].

    One budget writes DIR/indices.npy, scores.npy, manifest.json (+ subset.json and ids.txt with --pool);
    several budgets (e.g. --budget 0.05,0.1,0.2) write one DIR/<label>/ folder each (frac0.05, n4000).

    Example: vlselect select coincide --input features=feats/acts --pool world/pool.json --budget 0.1,0.2 --out sel/coincide
    """
    if list_methods:
        _list_methods()
        return
    import warnings

    import numpy as np

    from vlselect.select import get_method, run_method
    from vlselect.select import io as sio

    if not method:
        raise ConfigError("no method given; run 'vlselect select --list' to see them, e.g. vlselect select random ...")
    info = get_method(method)
    given = sio.parse_param_specs(params)
    if "seed" in given and not any(p.name == "seed" or "seed" in p.aliases for p in info.params):
        pseed = given["seed"]
        try:
            pseed_i = int(pseed)
        except ValueError:
            raise ConfigError(f"--param seed={pseed!r}: expected an integer") from None
        if seed is not None and seed != pseed_i:
            raise ConfigError(f"--seed {seed} and --param seed={pseed} disagree; give one of them")
        seed = pseed_i
        given.pop("seed")
    info.resolve_params(given)  # unknown names / bad values fail before any file is read
    if budget is None and not dry_run:
        raise ConfigError("--budget is required: a fraction (0.2), a count (4000) or a comma list (0.05,0.1,0.2)")
    if out is None and not dry_run:
        raise ConfigError("--out DIR is required: the folder that receives indices.npy, scores.npy and manifest.json")
    if pool is not None and tasks is not None:
        raise ConfigError("give --pool FILE or --tasks TASKS.json, not both (the pool already carries the task labels)")
    for spec in inputs:
        role, _, _ = sio.parse_input_spec(spec)
        info.role_for(role)

    pool_obj = None
    task_labels = None
    n_rows = None
    rows_source = None
    if pool is not None:
        from pathlib import Path

        if not Path(pool).exists():
            raise PoolError(f"--pool {pool}: no such file; give the pool JSON/JSONL the features were extracted from")
        from vlselect.pool import open_pool

        pool_obj = open_pool(pool)
        n_rows = len(pool_obj)
        rows_source = f"the pool {pool}"
        task_labels = list(pool_obj.tasks)
    elif tasks is not None:
        task_labels = sio.load_tasks(tasks)
        n_rows = len(task_labels)
        rows_source = f"the task list {tasks}"

    aligned = {sio.parse_input_spec(s)[0]: info.role_for(sio.parse_input_spec(s)[0]).aligned for s in inputs}
    loaded = sio.load_inputs(
        inputs,
        aligned_roles=aligned,
        n_rows=n_rows,
        rows_source=rows_source,
        pool_fingerprint=getattr(pool_obj, "fingerprint", None),
        pool_path=pool,
    )
    _layout_from_store(info, loaded, given)
    if method == "length" and "lengths" not in loaded and pool_obj is not None:
        loaded["lengths"] = sio.LoadedInput("lengths", sio.pool_lengths(pool_obj), str(pool), "pool", None,
                                            None, {"measure": "words + 128 if image (COINCIDE train.py lengths)"})
    arrays = {r: li.array for r, li in loaded.items()}
    if dry_run:
        _dry_run(info, arrays, given)
        return
    _check_budget_labels(budget, n_rows, arrays, aligned)
    exclude = None
    for li in loaded.values():
        if li.missing is not None and aligned.get(li.role, True):
            exclude = li.missing if exclude is None else (exclude | li.missing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with console.status(f"running {method}…"):
            sels = run_method(
                method,
                arrays,
                budget,
                tasks=task_labels,
                seed=0 if seed is None else seed,
                strict_official=strict_official,
                params=given,
                exclude=exclude,
            )
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    n = n_rows if n_rows is not None else (sels[0].budget.n if sels else 0)
    dirs = sio.output_dirs(out, sels)
    for sel, d in zip(sels, dirs):
        sio.write_selection(
            sel, d, pool=pool_obj, pool_path=pool, tasks_path=tasks, inputs=loaded, n_rows=n, tasks=task_labels
        )
        short = f", [yellow]shortfall {sel.shortfall}[/]" if sel.shortfall else ""
        console.print(
            f"[green]{method}[/] budget {sel.budget.given} → {sel.count} of {n} rows{short} → {d}", highlight=False
        )
        if task_labels is not None:
            console.print(_task_table(sio.task_counts(task_labels, np.asarray(sel.indices)), f"per-task counts, budget {sel.budget.given}"))


def _check_budget_labels(budget: str, n_rows: Optional[int], arrays: dict, aligned: dict) -> None:
    """Repeated budgets (each writes DIR/<label>/) fail before any work, not after the method ran."""
    from vlselect.errors import SelectionError
    from vlselect.select import parse_budgets

    n = n_rows if n_rows is not None else next((int(a.shape[0]) for r, a in arrays.items() if aligned.get(r, True)), None)
    if n is None:
        return
    labels = [b.label for b in parse_budgets(budget, n)]
    if len(set(labels)) != len(labels):
        raise SelectionError(f"--budget {budget}: the budgets {', '.join(labels)} repeat; give each budget once")


def _dry_run(info: Any, arrays: dict, given: dict) -> None:
    """``--dry-run``: the input size and, for a clustering method, :func:`vlselect.cluster.kmeans_cost`."""
    from vlselect.cluster import _gib, available_memory_bytes, kmeans_cost

    rows = [(f"input {role}", " x ".join(f"{int(s):,}" for s in a.shape) + f" {a.dtype} ({_gib(a.nbytes)})")
            for role, a in arrays.items()]
    params = info.resolve_params(given)
    feats = next((a for r, a in arrays.items() if r in ("features", "embeddings")), None)
    if feats is None:
        feats = next(iter(arrays.values()), None)
    hint = f"{info.name} reads its inputs in row blocks; no clustering step to estimate."
    if "n_clusters" in params and feats is not None and getattr(feats, "ndim", 0) == 2:
        k = int(params["n_clusters"])
        c = kmeans_cost(int(feats.shape[0]), int(feats.shape[1]), k, niter=int(params.get("niter") or 50),
                        max_points_per_centroid=params.get("max_points_per_centroid"),
                        dtype_bytes=feats.dtype.itemsize)
        rows += [
            ("k-means", f"K={k}, {c['niter']} iterations, trains on {c['train_rows']:,} rows"
                        + (" (a faiss subsample)" if c["subsampled"] else "")),
            ("k-means FLOP", f"{c['flops']:.3g}"),
            ("RAM out of core (large inputs)", _gib(c["ram_out_of_core_bytes"])),
            ("RAM in memory (float32 copy)", _gib(c["ram_in_memory_bytes"])),
            ("RAM of the official script", _gib(c["ram_exact_official_bytes"])),
            ("input on disk", _gib(c["disk_bytes"])),
            ("available RAM now", _gib(available_memory_bytes())),
        ]
        hint = c["gpu_hint"]
    console.print(f"[bold]{info.name}[/]: estimate only, nothing is run")
    for what, value in rows:
        console.print(f"  {what + ':':<34} {value}", highlight=False, soft_wrap=True)
    console.print(hint, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``vlselect select`` to the main app."""
    app.command("select", no_args_is_help=True)(select_command)
