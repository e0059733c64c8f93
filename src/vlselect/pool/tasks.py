"""Task (source) labels of pool records.

A record's task label is decided in this order (first rule that applies wins):

1. ``task_field``: the field named by the user (``open_pool(..., task_field="dataset")``, CLI ``--task-field``),
   e.g. the ``dataset`` key that TIVE's annotated LLaVA-665K copy carries (``specs/tive.md`` §3). A record without
   that field is an error.
2. a ``task`` field already in the record (a string), e.g. written by ``vlselect world make``.
3. a ``task_name`` field (Vision-Flan's ``annotation_191-task_1k.json`` carries the task name per record).
4. ``data_source`` / ``source`` (Cambrian-7M, LLaVA-OneVision-style mixtures carry the source dataset per record).
5. DataOptim: for a DataOptim directory, the JSON file's stem (the global id index, ``specs/dataoptim.md`` §2.2);
   for a single file in DataOptim form, the longest known DataOptim file stem that prefixes the id followed by
   ``_`` (so ``llava_v1.5_12`` is ``llava_v1.5``, not ``llava`` as the official ``id.split('_')[0]`` rule gives).
6. Inference from the image path (:func:`classify_record`), then per pool (:func:`decide_layout`):

   - LLaVA-665K (``specs/dataoptim.md`` §11.4, ``specs/tive.md`` §3): image path prefix ``gqa/`` → ``gqa``,
     ``ocr_vqa/`` → ``ocrvqa``, ``textvqa/`` → ``textcaps``, ``vg/`` → ``vg``; inside ``coco/``: the option-letter
     prompt → ``aokvqa``, a region prompt → ``refcoco``, the single-word prompt → ``vqav2`` (OKVQA uses the same
     prompt and cannot be told apart from public fields, so it is counted as ``vqav2``), otherwise ``llava``
     (LLaVA-Instruct). The image folders of other public mixtures that name their source (:data:`KNOWN_FOLDERS`:
     ``sam``, ``flickr30k``, ``wikiart``, ...) give that folder. Text-only records are ``sharegpt``.
   - ScienceQA as in LLaVA's ``llava_scienceqa`` files (image paths ``{id}/image.png`` or
     ``train/{id}/image.png``): every record, text-only questions included, is ``scienceqa``.
   - Anything else is **unknown**: the rows get the label ``unknown`` (text-only rows of such a pool too), the
     pool's :attr:`~vlselect.pool.Pool.task_layout` is ``"unknown"``, ``pool stats`` and selection manifests say
     so, and task-aware selection asks for ``--task-field`` / ``--tasks`` instead of guessing from folder names.

   Labels are lower case and the captioning task is spelled ``textcaps`` as TIVE requires.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

#: LLaVA-1.5 response-format prompts (``specs/dataoptim.md`` §11.3, LLaVA-1.5 paper Table 7).
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
OPTION_LETTER_PROMPT = "Answer with the option's letter from the given choices directly."
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
REGION_PROMPTS = (
    "Please provide the bounding box coordinate of the region this sentence describes",
    "Please provide a short description for this region",
)

#: Image-folder prefixes of ``llava_v1_5_mix665k.json`` with a single source (``specs/dataoptim.md`` §11.4).
LLAVA665K_PREFIX_TASKS = {"gqa": "gqa", "ocr_vqa": "ocrvqa", "textvqa": "textcaps", "vg": "vg"}

#: Label of a record without an image (ShareGPT in LLaVA-665K).
TEXT_ONLY_TASK = "sharegpt"

#: DataOptim data-file stems (``specs/dataoptim.md`` §2.1: the 14 competition datasets and the later files).
DATAOPTIM_STEMS = (
    "aokvqa", "coco", "docvqa", "dvqa", "flickr30k", "gqa", "llava", "llava_v1.5", "ocrvqa", "okvqa", "ref3rec",
    "ref3reg", "scienceqa", "sharegpt4v", "shikra", "svit", "textcaps", "textocrgpt4v", "textvqa", "vgqa", "vqav2",
)  # fmt: skip

# longest first, so that 'llava_v1.5_3' resolves to 'llava_v1.5' before 'llava'
_STEMS_LONGEST_FIRST = tuple(sorted(DATAOPTIM_STEMS, key=len, reverse=True))


#: Record fields that name the source dataset in Cambrian / LLaVA-OneVision-style mixtures (rule 4).
SOURCE_FIELDS = ("data_source", "source")

#: First image folders of public mixtures that name the source dataset (ShareGPT4V, LLaVA-NeXT, Cambrian, ...).
KNOWN_FOLDERS = frozenset({
    "sam", "flickr30k", "wikiart", "share_textvqa", "web-celebrity", "web-landmark", "llava", "ai2d", "chartqa",
    "docvqa", "dvqa", "synthdog-en", "geoqa+", "allava", "textcaps", "ocrvqa", "okvqa", "vizwiz", "clevr",
    "iconqa", "tabmwp", "scienceqa", "sharegpt4v", "laion", "cc3m", "sbu",
})  # fmt: skip

#: LLaVA's ScienceQA image paths (``scripts/convert_sqa_to_llava.py``: ``{id}/image.png``, or under a split folder).
SCIENCEQA_IMAGE = re.compile(r"^(?:(?:train|val|test|minival|minitest)/)?\d+/image\.png$")

#: The label of rows whose source cannot be inferred.
UNKNOWN_TASK = "unknown"

#: Kinds returned by :func:`classify_record`.
KIND_665K, KIND_SCIENCEQA, KIND_TEXT, KIND_UNKNOWN = "llava665k", "scienceqa", "text_only", "unknown"

#: Pool task layouts (:attr:`vlselect.pool.Pool.task_layout`).
LAYOUTS = ("task_field", "task", "vision-flan", "data_source", "dataoptim", "llava665k", "scienceqa", "mixed",
           "unknown")


def classify_record(images: Sequence[str], first_human: str) -> tuple[str, str]:
    """``(label, kind)`` of a record without a task field, from its image path and first human turn.

    ``kind`` is ``"llava665k"`` (a 665K or known-mixture image folder), ``"scienceqa"`` (LLaVA's ScienceQA image
    path), ``"text_only"`` (no image; the label waits for the pool's layout) or ``"unknown"`` (label
    :data:`UNKNOWN_TASK`).

    Examples
    --------
    >>> classify_record(["gqa/1.jpg"], ""), classify_record(["12345/image.png"], "")
    (('gqa', 'llava665k'), ('scienceqa', 'scienceqa'))
    >>> classify_record(["0042/photo.jpg"], ""), classify_record([], "hi")
    (('unknown', 'unknown'), ('sharegpt', 'text_only'))
    """
    if not images:
        return TEXT_ONLY_TASK, KIND_TEXT
    p = images[0].replace("\\", "/").lstrip("./")
    if SCIENCEQA_IMAGE.match(p):
        return "scienceqa", KIND_SCIENCEQA
    top = image_folder(images[0]).lower()
    if top in LLAVA665K_PREFIX_TASKS or top == "coco" or top in KNOWN_FOLDERS:
        return infer_llava665k_task(images, first_human), KIND_665K
    return UNKNOWN_TASK, KIND_UNKNOWN


def decide_layout(kinds: Counter) -> str:
    """The layout of the inferred rows: ``"scienceqa"`` when every image row has a ScienceQA path, ``"unknown"``
    when any image row has an unrecognised path, else ``"llava665k"`` (also for a pool of text-only rows)."""
    if kinds.get(KIND_UNKNOWN, 0):
        return "unknown"
    if kinds.get(KIND_SCIENCEQA, 0) and not kinds.get(KIND_665K, 0):
        return "scienceqa"
    if kinds.get(KIND_SCIENCEQA, 0):
        return "unknown"  # ScienceQA paths mixed with 665K folders: not a layout we know
    return "llava665k"


def text_only_label(layout: str) -> str:
    """What the text-only rows of an inferred layout are called: ``sharegpt`` (665K), ``scienceqa``, or
    ``unknown``."""
    return {"llava665k": TEXT_ONLY_TASK, "scienceqa": "scienceqa"}.get(layout, UNKNOWN_TASK)


def dataoptim_task(record_id: str, stems: Sequence[str] | None = None) -> str | None:
    """The DataOptim data file a record id belongs to, or ``None``.

    The longest stem ``s`` with ``record_id.startswith(s + "_")`` wins (``specs/dataoptim.md`` §2.2: the official
    ``id.split('_')[0]`` rule breaks for stems containing ``_``).

    Parameters
    ----------
    record_id:
        The id, e.g. ``"svit_conversation_0"`` or ``"llava_v1.5_7"``.
    stems:
        Candidate stems; default :data:`DATAOPTIM_STEMS`.

    Examples
    --------
    >>> dataoptim_task("llava_v1.5_7"), dataoptim_task("gqa_05145757"), dataoptim_task("000000033471")
    ('llava_v1.5', 'gqa', None)
    """
    cands = _STEMS_LONGEST_FIRST if stems is None else sorted(stems, key=len, reverse=True)
    for stem in cands:
        if record_id.startswith(stem) and record_id[len(stem) : len(stem) + 1] == "_":
            return stem
    return None


def image_folder(path: str) -> str:
    """The first folder of an image path (``"coco/train2017/x.jpg"`` → ``"coco"``); ``""`` for a bare name."""
    p = path.replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    p = p.lstrip("/")
    head, sep, _ = p.partition("/")
    return head if sep else ""


def infer_llava665k_task(images: Sequence[str], first_human: str) -> str:
    """Source of a LLaVA-665K-style record from its image path and first human turn.

    Implements ``specs/dataoptim.md`` §11.4 with the labels proposed in ``specs/tive.md`` §3 (see the module
    docstring for the rules).

    Parameters
    ----------
    images:
        The record's image paths (empty for text-only).
    first_human:
        The text of the first human turn (``""`` if none).

    Returns
    -------
    str
        ``sharegpt``, ``gqa``, ``ocrvqa``, ``textcaps``, ``vg``, ``aokvqa``, ``refcoco``, ``vqav2``, ``llava``, or
        the first image folder for other layouts (``"images"`` for a path without a folder).

    Examples
    --------
    >>> infer_llava665k_task(["coco/train2017/1.jpg"], "<image>\\nQ?\\nAnswer the question using a single word or phrase.")
    'vqav2'
    >>> infer_llava665k_task([], "hi")
    'sharegpt'
    """
    if not images:
        return TEXT_ONLY_TASK
    top = image_folder(images[0])
    if top in LLAVA665K_PREFIX_TASKS:
        return LLAVA665K_PREFIX_TASKS[top]
    if top == "coco":
        if OPTION_LETTER_PROMPT in first_human:
            return "aokvqa"
        if any(p in first_human for p in REGION_PROMPTS):
            return "refcoco"
        if SHORT_ANSWER_PROMPT in first_human:
            return "vqav2"
        return "llava"
    return top.lower() if top else "images"
