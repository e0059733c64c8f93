"""Instruction pools: :class:`Sample`, readers and writers (LLaVA JSON/JSONL, Vision-Flan, DataOptim ids), task
inference, subset export and the pool fingerprint.

>>> from vlselect.pool import open_pool, write_llava_subset
>>> pool = open_pool("llava_v1_5_mix665k.json")            # doctest: +SKIP
>>> write_llava_subset(pool, [0, 5, 7], "subset.json")     # doctest: +SKIP
"""

from vlselect.pool.core import FORMATS, ROLE_ALIASES, Pool, open_pool
from vlselect.pool.io import (
    atomic_writer,
    package_versions,
    read_dataoptim_ids,
    read_task_labels,
    write_dataoptim_ids,
    write_llava_subset,
    write_manifest,
    write_task_labels,
)
from vlselect.pool.sample import Sample
from vlselect.pool.stats import check_images, default_image_root, pool_stats
from vlselect.pool.tasks import DATAOPTIM_STEMS, dataoptim_task, infer_llava665k_task

__all__ = [
    "DATAOPTIM_STEMS",
    "FORMATS",
    "ROLE_ALIASES",
    "Pool",
    "Sample",
    "atomic_writer",
    "check_images",
    "default_image_root",
    "dataoptim_task",
    "infer_llava665k_task",
    "open_pool",
    "package_versions",
    "pool_stats",
    "read_dataoptim_ids",
    "read_task_labels",
    "write_dataoptim_ids",
    "write_llava_subset",
    "write_manifest",
    "write_task_labels",
]
