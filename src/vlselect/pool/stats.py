"""Pool statistics and the image check behind ``vlselect pool stats`` and ``vlselect pool check``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vlselect.pool.core import Pool


def _dist(values: np.ndarray) -> dict[str, float | int]:
    if values.size == 0:
        return {"min": 0, "median": 0.0, "p90": 0.0, "max": 0, "mean": 0.0}
    v = values.astype(np.float64)
    return {
        "min": int(values.min()),
        "median": round(float(np.percentile(v, 50)), 3),
        "p90": round(float(np.percentile(v, 90)), 3),
        "max": int(values.max()),
        "mean": round(float(v.mean()), 3),
    }


def pool_stats(pool: Pool) -> dict[str, Any]:
    """Composition and size of a pool, from its compact index (no record is re-read).

    Returns a JSON-ready dict: ``records``; ``tasks`` (label, count, share; by count, then label); ``text_only``
    (records without an image: count, share); ``turns`` (assistant answers per record), ``chars`` and ``words``
    (text of all turns, ``<image>`` not counted), each as min / median / p90 / max / mean (numpy linear
    percentiles); ``images`` (records with an image, image references); ``skipped`` and ``renamed_ids`` (nothing is
    dropped silently); ``task_source`` (how many labels came from which rule, :mod:`vlselect.pool.tasks`);
    ``task_layout`` (:data:`vlselect.pool.tasks.LAYOUTS`) and, when it is ``"unknown"``, ``task_note`` (what to
    give instead); the pool's ``fingerprint``.

    Examples
    --------
    >>> pool_stats(open_pool("pool.json"))["tasks"][0]  # doctest: +SKIP
    {'task': 'llava', 'count': 157712, 'share': 0.237}
    """
    n = len(pool)
    codes = pool.task_codes
    counts = np.bincount(codes, minlength=len(pool.task_names)) if n else np.zeros(len(pool.task_names), np.int64)
    order = sorted(range(len(pool.task_names)), key=lambda k: (-int(counts[k]), pool.task_names[k]))
    tasks = [{"task": pool.task_names[k], "count": int(counts[k]), "share": round(int(counts[k]) / n, 6) if n else 0.0}
             for k in order]  # fmt: skip
    text_only = int((pool.n_images == 0).sum())
    return {
        "path": str(pool.path),
        "format": pool.format,
        "records": n,
        "fingerprint": pool.fingerprint,
        "tasks": tasks,
        "text_only": {"count": text_only, "share": round(text_only / n, 6) if n else 0.0},
        "images": {"records_with_image": n - text_only, "image_refs": int(pool.n_images.astype(np.int64).sum())},
        "turns": _dist(pool.rounds),
        "chars": _dist(pool.chars),
        "words": _dist(pool.words),
        "skipped": dict(sorted(pool.skipped.items())),
        "skipped_total": int(sum(pool.skipped.values())),
        "renamed_ids": pool.renamed,
        "task_source": dict(sorted(pool.task_source.items())),
        "task_layout": pool.task_layout,
        **({"task_note": unknown_layout_note(pool)} if pool.task_layout == "unknown" else {}),
    }


def unknown_layout_note(pool: Pool) -> str:
    """What to do when a pool's task layout is unknown (shown by ``pool stats``, written into manifests)."""
    k = pool.task_names.index("unknown") if "unknown" in pool.task_names else -1
    n = int(np.count_nonzero(pool.task_codes == k)) if k >= 0 else 0
    return (f"the task of {n:,} of {len(pool):,} records cannot be inferred (the image paths match no known layout: "
            "LLaVA-665K, ScienceQA, Vision-Flan, DataOptim, data_source fields); they are labelled 'unknown'. "
            "Task-aware selection (TIVE, stratified random, COINCIDE's task budgets) needs real labels: give "
            "--task-field FIELD (a field of every record), or write a labels file with 'vlselect pool tasks POOL "
            "--task-field FIELD -o tasks.json' and pass --tasks tasks.json")


def default_image_root(pool: Pool) -> Path:
    """The folder a pool's image paths are taken relative to when no ``--images`` is given: the pool file's
    folder, or its ``images/`` subfolder when the first image path resolves only there (the layout
    ``vlselect world make`` writes). Every command that reads images uses this default."""
    base = pool.files[0].parent
    rows = np.flatnonzero(pool.n_images > 0)
    if rows.size and (base / "images").is_dir():
        first = pool.sample(int(rows[0])).images[0]
        if not (base / first).exists() and (base / "images" / first).exists():
            return base / "images"
    return base


def check_images(pool: Pool, image_root: str | os.PathLike | None = None, *, max_examples: int = 10,
                 progress: bool = False, model: str | os.PathLike | None = None) -> dict[str, Any]:  # fmt: skip
    """Check that every image a record names exists under ``image_root`` and decodes fully (the same loader as
    training and feature extraction, :func:`vlselect.models.load_image`: a truncated file fails here, not later);
    with ``model``, also that the model's image processor accepts it (Qwen2-VL refuses an aspect ratio over 200).

    The scan goes on past problems; each distinct path is checked once.

    Parameters
    ----------
    pool:
        The pool.
    image_root:
        Folder the image paths are relative to (LLaVA's ``--image_folder``); default the pool's ``image_root``,
        else the pool file's folder (or its ``images/`` subfolder if the first image path resolves only there).
    max_examples:
        How many examples of each problem to keep.
    progress:
        Show progress on stderr (:mod:`vlselect.progress`).
    model:
        A model directory: each image is also put through its processor (as ``features``/``train`` would, padded
        to a square for LLaVA); refused images are counted as ``rejected``. Only the processor is loaded.

    Returns
    -------
    dict
        ``image_root``, ``records``, ``records_with_image``, ``image_refs``, ``unique_images``, ``missing``,
        ``unreadable`` and ``rejected`` (image references), ``records_with_problems``, ``ok`` (no problem found),
        ``model`` (or None), ``examples`` (``missing``/``unreadable``/``rejected``: row, id, path, and the error).
    """
    from vlselect.errors import PoolError
    from vlselect.models.encode import ImageRejectedError, check_image_with_processor, image_fill, load_image

    processor = family = None
    if model is not None:
        from vlselect.models.load import load_processor

        processor, family = load_processor(model)
    root = Path(image_root) if image_root is not None else (pool.image_root or default_image_root(pool))
    status: dict[str, str | None] = {}
    missing = unreadable = rejected = refs = bad_records = with_image = 0
    ex_missing: list[dict] = []
    ex_unreadable: list[dict] = []
    ex_rejected: list[dict] = []
    rows = np.flatnonzero(pool.n_images > 0)
    prog = None
    if progress:
        from vlselect.progress import progress_bar

        prog = progress_bar("checking images", unit="images", transient=True).__enter__()
        task = prog.add_task("", total=int(rows.size))
    try:
        for k, i in enumerate(rows):
            i = int(i)
            sample = pool.sample(i)
            with_image += 1
            problem = False
            for rel in sample.images:
                refs += 1
                st = status.get(rel, "?")
                if st == "?":
                    full = root / rel
                    if not full.is_file():
                        st = "missing"
                    else:
                        try:
                            img = load_image(full, pad_to_square=family == "llava",
                                             fill=image_fill(processor) if processor is not None else (0, 0, 0))
                            if processor is not None:
                                check_image_with_processor(processor, img, path=rel)
                            st = None
                        except ImageRejectedError as exc:
                            st = f"rejected: {str(exc.__cause__ or exc)}"
                        except PoolError as exc:  # the loader's decode errors (truncated, not an image, ...)
                            st = f"unreadable: {str(exc.__cause__ or exc)}"
                    status[rel] = st
                if st is None:
                    continue
                problem = True
                if st == "missing":
                    missing += 1
                    if len(ex_missing) < max_examples:
                        ex_missing.append({"row": i, "id": sample.id, "path": rel})
                elif st.startswith("rejected: "):
                    rejected += 1
                    if len(ex_rejected) < max_examples:
                        ex_rejected.append({"row": i, "id": sample.id, "path": rel, "error": st[10:]})
                else:
                    unreadable += 1
                    if len(ex_unreadable) < max_examples:
                        ex_unreadable.append({"row": i, "id": sample.id, "path": rel, "error": st[12:]})
            bad_records += problem
            if prog is not None and (k % 256 == 0 or k == rows.size - 1):
                prog.update(task, completed=k + 1)
    finally:
        if prog is not None:
            prog.stop()
    return {
        "path": str(pool.path),
        "image_root": str(root),
        "records": len(pool),
        "records_with_image": with_image,
        "image_refs": refs,
        "unique_images": len(status),
        "missing": missing,
        "unreadable": unreadable,
        "rejected": rejected,
        "records_with_problems": bad_records,
        "ok": missing == 0 and unreadable == 0 and rejected == 0,
        "model": None if model is None else str(model),
        "examples": {"missing": ex_missing, "unreadable": ex_unreadable, "rejected": ex_rejected},
    }
