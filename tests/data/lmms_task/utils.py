"""Functions of the offline lmms-eval task that tests/test_lmms_bridge.py writes next to this file: each document
is ``{"id", "image": absolute path, "question", "answer"}`` read from a local JSONL file."""

from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]
