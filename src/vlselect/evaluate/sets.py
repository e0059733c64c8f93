"""Reading evaluation-set files (the world engineer's contract).

Format: ``{"name": str, "metric": "vqa_accuracy" | "option_letter" | "yes_no" | "iou" | "exact_match",
"description": str, "samples": [{"id", "image", "question", "answers", "options"?, "box"?}]}``; ``image`` is
relative to the images folder, ``answers[0]`` is canonical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlselect.errors import ConfigError, VlselectError
from vlselect.evaluate.metrics import METRICS


class EvalSetError(VlselectError):
    """An evaluation-set file is missing or malformed."""


@dataclass
class EvalSet:
    """One evaluation set: ``name``, ``metric``, ``samples`` (dicts as in the file) and the ``path`` read."""

    name: str
    metric: str
    samples: list[dict]
    description: str = ""
    path: Path | None = field(default=None, repr=False)


def read_eval_set(path) -> EvalSet:
    """Read and validate an evaluation-set JSON file.

    Raises
    ------
    EvalSetError
        Naming the file, the record and what to fix.
    """
    import orjson

    path = Path(path)
    if not path.is_file():
        raise EvalSetError(f"{path}: evaluation set not found; pass an existing file to --eval (e.g. from `vlselect world`)")
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise EvalSetError(f"{path}: not valid JSON ({exc}); fix or regenerate the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("samples"), list):
        raise EvalSetError(f"{path}: expected an object with a 'samples' list (and 'name', 'metric')")
    metric = data.get("metric")
    if metric not in METRICS:
        raise EvalSetError(f"{path}: unknown metric {metric!r}; set 'metric' to one of {', '.join(METRICS)}")
    name = str(data.get("name") or path.stem)
    for i, s in enumerate(data["samples"]):
        where = f"{path}: sample {i} (id {s.get('id')!r})" if isinstance(s, dict) else f"{path}: sample {i}"
        if not isinstance(s, dict):
            raise EvalSetError(f"{where} is not an object")
        for key in ("id", "question"):
            if key not in s:
                raise EvalSetError(f"{where} has no '{key}'; add it")
        if metric == "iou":
            box = s.get("box")
            if not (isinstance(box, list) and len(box) == 4):
                raise EvalSetError(f"{where} has no 4-number 'box' [x1, y1, x2, y2]; the 'iou' metric needs one")
        elif not s.get("answers"):
            raise EvalSetError(f"{where} has no 'answers'; add a list whose first item is the canonical answer")
        if metric == "option_letter" and not s.get("options"):
            raise EvalSetError(f"{where} has no 'options'; the 'option_letter' metric needs the choices")
    return EvalSet(name=name, metric=metric, samples=data["samples"], description=str(data.get("description", "")), path=path)


def read_results(path) -> dict:
    """Read a ``results.json`` written by :func:`vlselect.evaluate.evaluate` (``{"sets": {name: {"score": ..}}}``)."""
    import orjson

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: results file not found; pass the results.json written by `vlselect eval`")
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("sets"), dict):
        raise ConfigError(f"{path}: not a vlselect results file (no 'sets' object); pass a results.json from `vlselect eval`")
    return data


def scores_of(results: dict) -> dict[str, float]:
    """Set name → score of a results object."""
    return {name: float(v["score"]) for name, v in results["sets"].items()}


def looks_like_eval_set(path) -> bool:
    """True when ``path`` is a JSON object file (an evaluation set), not a pool (a JSON array or JSONL)."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() != ".json":
        return False
    with open(p, "rb") as f:
        head = f.read(1 << 20)  # a JSONL pool also starts with "{": look for the set's key, never read it all
    return head.lstrip().startswith(b"{") and b'"samples"' in head and b'"metric"' in head


def eval_set_as_samples(eval_set) -> list:
    """An evaluation set as training-style samples (question → canonical answer), task = the set's name.

    This is how a validation set becomes a target task for ICONS / LESS: its gradients are taken on the canonical
    answer, as on a training record.
    """
    from vlselect.pool import Sample

    es = eval_set if isinstance(eval_set, EvalSet) else read_eval_set(eval_set)
    out = []
    for s in es.samples:
        human = ("<image>\n" if s.get("image") else "") + str(s["question"])
        answer = s["answers"][0] if s.get("answers") else s.get("box")
        conv = [{"from": "human", "value": human}, {"from": "gpt", "value": str(answer)}]
        out.append(Sample(id=str(s["id"]), images=[s["image"]] if s.get("image") else [], conversations=conv,
                          task=es.name))
    return out
