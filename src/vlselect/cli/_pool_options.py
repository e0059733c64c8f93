"""The options every pool-reading command shares, defined once, and the one way the CLI opens a pool.

A bad record's error message suggests ``--skip-invalid`` and a repeated id ``--unique-ids``
(:mod:`vlselect.pool.core`); every command that reads a pool therefore accepts both, with the same meaning, and
finds a ``world make`` layout's ``images/`` folder the same way (:func:`vlselect.pool.default_image_root`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

UNIQUE_IDS_HELP = "Rename repeated (or missing) ids to '<id>#<row>' instead of failing; counted in the output."
SKIP_INVALID_HELP = "Skip malformed or invalid records instead of failing; every skipped record is counted in the output."
IMAGES_HELP = ("Image folder the pool's paths are relative to (LLaVA's --image_folder). Default: the pool file's "
               "folder, or its images/ subfolder when the paths resolve only there (the 'world make' layout).")

# typer reads these OptionInfo objects as defaults; sharing one instance between commands is fine.
UNIQUE_IDS = typer.Option(False, "--unique-ids", help=UNIQUE_IDS_HELP)
SKIP_INVALID = typer.Option(False, "--skip-invalid", help=SKIP_INVALID_HELP)
IMAGES = typer.Option(None, "--images", help=IMAGES_HELP)


def open_cli_pool(path: Path, *, unique_ids: bool = False, skip_invalid: bool = False, fmt: Optional[str] = None,
                  task_field: Optional[str] = None, images: Optional[Path] = None, progress: bool = True):
    """Open ``path`` as every pool-reading command does; return ``(pool, image_root)``.

    ``image_root`` is ``images`` when given (it must be a folder), else :func:`vlselect.pool.default_image_root`.
    Skipped records and renamed ids are announced on stderr, so that nothing is dropped without a word.
    """
    from vlselect.errors import PoolError
    from vlselect.pool import default_image_root, open_pool

    if images is not None and not Path(images).is_dir():
        raise PoolError(f"image folder not found: {images} (give the folder the pool's image paths are relative "
                        "to, LLaVA's --image_folder)")  # fmt: skip
    pool = open_pool(path, fmt=fmt, task_field=task_field, unique_ids=unique_ids, skip_invalid=skip_invalid,
                     image_root=images, progress=progress)  # fmt: skip
    root = Path(images) if images is not None else default_image_root(pool)
    pool.image_root = root
    notes = []
    if pool.skipped:
        notes.append(f"skipped {sum(pool.skipped.values()):,} invalid records {dict(sorted(pool.skipped.items()))}")
    if pool.renamed:
        notes.append(f"renamed {pool.renamed:,} repeated or missing ids")
    if notes:
        typer.echo(f"{path}: {len(pool):,} records read; " + "; ".join(notes), err=True)
    return pool, root
