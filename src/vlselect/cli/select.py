"""``vlselect select``: run a selection method on feature arrays and write one subset per budget.

Thin over :func:`vlselect.select.run_method` and :mod:`vlselect.select.io` (issue 5, item 6).

Output: with one budget, the files go straight into ``--out DIR``; with a comma list of budgets, into
``DIR/<label>/`` per budget (``frac0.2``, ``n4000``), from a single scoring pass.
"""

from __future__ import annotations

from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vlselect.cli._pool_options import SKIP_INVALID, UNIQUE_IDS, open_cli_pool
from vlselect.errors import ConfigError, PoolError

console = Console()
err_console = Console(stderr=True)

BUDGET_HELP = (
    "A fraction of the selectable rows (0.2, 1.0 = all of them), a count (4000, or n4000) or a comma list "
    "(0.05,0.1,0.2). A number with a decimal point is a fraction, a whole number a count; '1' alone is refused as "
    "ambiguous: write 1.0 for the whole pool or n1 for one row. Rows recorded missing or holding NaN/inf are not "
    "selectable and not counted."
)


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
            arrays = f" (store array: {' or '.join(r.store_arrays)})" if r.store_arrays else ""
            table.add_row(f"--input {r.name}", "required" if r.required else "optional", r.help + arrays)
        if m.needs_tasks:
            table.add_row("--pool/--tasks", "required", "task labels, one per row")
        for p in m.params:
            extra = f" (alias {', '.join(p.aliases)})" if p.aliases else ""
            table.add_row(f"--param {p.name}", repr(p.default), escape(f"{p.help}; {p.describe()}{extra}"), style=None)
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
    unique_ids: bool = UNIQUE_IDS,
    skip_invalid: bool = SKIP_INVALID,
    task_field: Optional[str] = typer.Option(None, "--task-field", help="Take each record's task label from this field of the pool's records."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="JSON list of task labels, one per row; with --pool it replaces the pool's inferred labels."),
    budget: Optional[str] = typer.Option(None, "--budget", "-b", help=BUDGET_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0; --param seed=S works too)."),
    params: List[str] = typer.Option([], "--param", "-p", help="NAME=VALUE, the official scripts' parameter names."),
    strict_official: bool = typer.Option(False, "--strict-official", help="Reproduce the official code exactly, bugs included."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output folder (one budget: files here; several: one sub-folder per budget)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a selection of other inputs in --out (otherwise: exit 2 naming what differs)."),
    list_methods: bool = typer.Option(False, "--list", help="List every method with its roles and parameters."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the k-means memory and FLOP estimate (coincide, semdedup, d2pruning) and the input size, then exit without selecting."),
) -> None:
    """Select a subset: [bold]vlselect select METHOD --input ROLE=PATH ... --budget B --out DIR[/].

    One budget writes DIR/indices.npy, scores.npy, manifest.json (+ subset.json and ids.txt with --pool);
    several budgets (e.g. --budget 0.05,0.1,0.2) write one DIR/<label>/ folder each (frac0.05, n4000).

    Rows a feature store records missing (--skip-bad) and rows holding NaN or inf are never selected and not
    counted by the budget; a warning on stderr and the manifest's extra.excluded_rows say how many.

    Example: vlselect select coincide --input features=feats/acts --pool world/pool.json --budget 0.1,0.2 --param K=20 --out sel/coincide
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
        from vlselect.select import SEED

        pseed = given["seed"]
        pseed_i = SEED.convert(pseed)
        if seed is not None and seed != pseed_i:
            raise ConfigError(f"--seed {seed} and --param seed={pseed} disagree; give one of them")
        seed = pseed_i
        given.pop("seed")
    if seed is not None:
        from vlselect.select import SEED

        SEED.convert(seed)
    info.resolve_params(given)  # unknown names / bad values fail before any file is read
    if budget is None and not dry_run:
        raise ConfigError("--budget is required: a fraction (0.2), a count (4000) or a comma list (0.05,0.1,0.2)")
    if out is None and not dry_run:
        raise ConfigError("--out DIR is required: the folder that receives indices.npy, scores.npy and manifest.json")
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
        pool_obj, _ = open_cli_pool(Path(pool), unique_ids=unique_ids, skip_invalid=skip_invalid, progress=False,
                                    task_field=task_field)
        n_rows = len(pool_obj)
        rows_source = f"the pool {pool}"
        if tasks is not None:  # labels given by the user override the pool's inferred ones
            task_labels = sio.load_tasks(tasks)
            if len(task_labels) != n_rows:
                raise ConfigError(f"--tasks {tasks}: {len(task_labels):,} labels for the {n_rows:,} records of --pool "
                                  f"{pool}; give one label per record, in pool order")
        elif pool_obj.task_layout == "unknown" and info.needs_tasks:  # issue 13: never select on guessed tasks
            from vlselect.pool.stats import unknown_layout_note

            raise ConfigError(f"--pool {pool}: {method} needs task labels, but {unknown_layout_note(pool_obj)}")
        else:
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
        store_arrays={r: info.role_for(r).store_arrays for r in aligned},
    )
    _layout_from_store(info, loaded, given)
    if method == "length" and "lengths" not in loaded and pool_obj is not None:
        loaded["lengths"] = sio.LoadedInput("lengths", sio.pool_lengths(pool_obj), str(pool), "pool", None,
                                            None, {"measure": "words + 128 if image (COINCIDE train.py lengths)"})
    arrays = {r: li.array for r, li in loaded.items()}  # a store's array carries its missing-row mask
    if dry_run:
        _dry_run(info, arrays, given)
        return
    _check_budget_labels(budget, n_rows, arrays, aligned)
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
            )
    for w in caught:
        err_console.print(f"[yellow]warning:[/] {escape(str(w.message))}", highlight=False)
    n = n_rows if n_rows is not None else (sels[0].budget.n if sels else 0)
    dirs = sio.output_dirs(out, sels)
    for sel, d in zip(sels, dirs):
        sio.write_selection(
            sel, d, pool=pool_obj, pool_path=pool, tasks_path=tasks, inputs=loaded, n_rows=n, tasks=task_labels,
            overwrite=overwrite,
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
