"""Metrics of generation-based evaluation, relative performance and seed intervals.

Every per-sample scorer takes the model's generated text and the eval-set record and returns a number in [0, 1];
set scores are means × 100. The set's ``metric`` field picks the scorer (:data:`METRICS`).

References
----------
- VQA accuracy: the VQAv2 evaluation script (answer normalisation: punctuation, number words, articles,
  contractions; ``min(1, #humans that said it / 3)`` averaged over the 10 leave-one-out subsets).
- yes/no: POPE's evaluation (first sentence; "no"/"not" → no, otherwise yes; accuracy, precision, recall, F1 with
  "yes" as the positive class). The set score is F1 (as LLaVA-1.5 reports POPE).
- Relative performance: ``specs/survey.md`` §1.2 and §1.6 (mean over benchmarks of score / reference × 100).
- Intervals over seeds: ``specs/survey.md`` §6 item 6 (evaluation noise).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from vlselect.errors import ConfigError

# --------------------------------------------------------------------------------------------------------------
# VQAv2 answer normalisation
# --------------------------------------------------------------------------------------------------------------

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "oclock": "o'clock", "shant": "shan't", "shed": "she'd", "shes": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "thats": "that's", "thered": "there'd",
    "theres": "there's", "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "wasnt": "wasn't", "wed": "we'd", "weve": "we've", "werent": "weren't", "whats": "what's",
    "whatll": "what'll", "whatre": "what're", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_vqa_answer(text: str) -> str:
    """Normalise an answer the way the VQAv2 evaluation script does.

    Newlines/tabs become spaces, punctuation is removed (or replaced by a space), number words ``zero``…``ten``
    become digits, articles ``a``/``an``/``the`` are dropped, contractions get their apostrophe, case is lowered.

    Examples
    --------
    >>> normalize_vqa_answer("Two dogs.")
    '2 dogs'
    >>> normalize_vqa_answer("The Red one!")
    'red 1'
    """
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text)).strip()


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction against the human answers.

    With 10 answers (VQAv2) this is the official leave-one-out average of ``min(1, matches / 3)``; with fewer
    answers (synthetic sets with one or a few canonical answers) a normalised match with any answer scores 1.

    Examples
    --------
    >>> vqa_accuracy("two", ["2"] * 2 + ["3"] * 8)
    0.6
    >>> vqa_accuracy("A cat", ["cat"])
    1.0
    """
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(a) for a in answers]
    if not gts:
        return 0.0
    if len(gts) < 10:
        return 1.0 if pred in gts else 0.0
    accs = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1 :]
        accs.append(min(1.0, sum(1 for g in others if g == pred) / 3.0))
    return sum(accs) / len(accs)


# --------------------------------------------------------------------------------------------------------------
# option letter, yes/no, exact match, IoU
# --------------------------------------------------------------------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def parse_option_letter(prediction: str, options: Sequence[str] | None = None) -> str | None:
    """The option letter a generated answer chooses, or ``None``.

    Tries, in order: a leading letter (``"B"``, ``"B."``, ``"(B) ..."``), ``"answer is B"``, a standalone letter
    anywhere, then the text of an option (case-insensitive) when ``options`` are given. Only letters of existing
    options count when ``options`` are given.
    """
    text = str(prediction).strip()
    valid = _LETTERS[: len(options)] if options else _LETTERS
    for pattern in (r"^\(?([A-Z])\)?(?:[.:)\s]|$)", r"answer is:?\s*\(?([A-Z])\)?\b", r"(?<![A-Za-z])\(?([A-Z])\)?(?![A-Za-z])"):
        for m in re.finditer(pattern, text):
            if m.group(1) in valid:
                return m.group(1)
    if options:
        low = text.lower().rstrip(".")
        for i, opt in enumerate(options):
            if str(opt).strip().lower() == low:
                return valid[i]
        for i, opt in enumerate(options):
            if str(opt).strip() and str(opt).strip().lower() in low:
                return valid[i]
    return None


def option_letter_accuracy(prediction: str, answers: Sequence[str], options: Sequence[str] | None = None) -> float:
    """1 if the parsed option letter equals the canonical answer letter (``answers[0]``), else 0."""
    letter = parse_option_letter(prediction, options)
    return 1.0 if letter is not None and answers and letter == str(answers[0]).strip().upper() else 0.0


def parse_yes_no(prediction: str) -> str:
    """POPE's parse: keep the first sentence; ``"no"`` if it contains the word no/not, else ``"yes"``.

    Examples
    --------
    >>> parse_yes_no("No, there is not.")
    'no'
    >>> parse_yes_no("Yes. No doubt.")
    'yes'
    """
    text = str(prediction).strip()
    if "." in text:
        text = text.split(".")[0]
    words = re.sub(r"[^\w\s]", " ", text).lower().split()
    return "no" if ("no" in words or "not" in words) else "yes"


def yes_no_scores(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """POPE-style accuracy, precision, recall, F1 and yes-ratio (all × 100), "yes" being the positive class."""
    pred = [parse_yes_no(p) for p in predictions]
    gold = [str(a).strip().lower() for a in answers]
    tp = sum(p == "yes" and g == "yes" for p, g in zip(pred, gold))
    fp = sum(p == "yes" and g != "yes" for p, g in zip(pred, gold))
    tn = sum(p == "no" and g != "yes" for p, g in zip(pred, gold))
    fn = sum(p == "no" and g == "yes" for p, g in zip(pred, gold))
    n = len(pred)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (tp + tn) / n if n else 0.0,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * sum(p == "yes" for p in pred) / n if n else 0.0,
    }


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1 if the prediction equals an answer after stripping whitespace, a trailing period and case, else 0."""

    def norm(s: str) -> str:
        return " ".join(str(s).strip().rstrip(".").lower().split())

    pred = norm(prediction)
    return 1.0 if any(pred == norm(a) for a in answers) else 0.0


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?|-?\.\d+")


def parse_box(prediction: str) -> list[float] | None:
    """The first four numbers of a generated answer as a box ``[x1, y1, x2, y2]``, or ``None``.

    Corners are re-ordered so that x1 ≤ x2 and y1 ≤ y2 (LLaVA-1.5 writes normalised ``[x1, y1, x2, y2]``).

    Examples
    --------
    >>> parse_box("[0.1, 0.2, 0.5, 0.6]")
    [0.1, 0.2, 0.5, 0.6]
    >>> parse_box("no box") is None
    True
    """
    nums = [float(x) for x in _NUMBER.findall(str(prediction))[:4]]
    if len(nums) < 4:
        return None
    x1, y1, x2, y2 = nums
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes (0 for degenerate boxes)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def iou_hit(prediction: str, box: Sequence[float], threshold: float = 0.5) -> float:
    """1 if the box parsed from the prediction has IoU ≥ ``threshold`` with ``box``, else 0."""
    pred = parse_box(prediction)
    return 1.0 if pred is not None and box_iou(pred, box) >= threshold else 0.0


METRICS = ("vqa_accuracy", "option_letter", "yes_no", "iou", "exact_match")


def score_sample(metric: str, prediction: str, sample: dict) -> float:
    """Per-sample score in [0, 1] for an eval-set record (``answers``, ``options``, ``box`` as the set declares).

    For ``yes_no`` this is the per-sample accuracy; the set score is F1 (see :func:`score_set`).
    """
    answers = sample.get("answers") or []
    if metric == "vqa_accuracy":
        return vqa_accuracy(prediction, answers)
    if metric == "option_letter":
        return option_letter_accuracy(prediction, answers, sample.get("options"))
    if metric == "yes_no":
        return 1.0 if answers and parse_yes_no(prediction) == str(answers[0]).strip().lower() else 0.0
    if metric == "iou":
        return iou_hit(prediction, sample["box"])
    if metric == "exact_match":
        return exact_match(prediction, answers)
    raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def score_set(metric: str, predictions: Sequence[str], samples: Sequence[dict]) -> dict[str, float]:
    """Score a whole set: ``{"score": ..., ...}`` with the score in percent.

    ``score`` is the mean per-sample score × 100, except ``yes_no`` where it is the F1 (and ``accuracy``,
    ``precision``, ``recall``, ``yes_ratio`` are added).
    """
    if metric == "yes_no":
        out = yes_no_scores(predictions, [(s.get("answers") or [""])[0] for s in samples])
        return {"score": out["f1"], **out}
    per = [score_sample(metric, p, s) for p, s in zip(predictions, samples)]
    return {"score": 100.0 * sum(per) / len(per) if per else 0.0}


# --------------------------------------------------------------------------------------------------------------
# relative performance and intervals
# --------------------------------------------------------------------------------------------------------------


def relative_performance(scores: dict[str, float], reference: dict[str, float], *, source: str = "reference") -> dict:
    """Relative performance: mean over sets of ``score / reference score × 100`` (survey §1.2, §1.6).

    Sets whose reference score is 0 have no ratio: they are left out of the mean and listed in ``skipped`` (never
    silently: the CLI prints them and ``results.json`` records them).

    Parameters
    ----------
    scores, reference : dict
        Set name → score.
    source : str
        Name of the reference file, for error messages.

    Returns
    -------
    dict
        ``{"relative": float, "per_set": {name: float}, "skipped": [names with a zero reference]}``.

    Raises
    ------
    ConfigError
        If a set has no reference score, or no set has a non-zero reference score.

    Examples
    --------
    >>> relative_performance({"a": 50.0, "b": 90.0}, {"a": 100.0, "b": 90.0})["relative"]
    75.0
    """
    per, skipped = {}, []
    for name, value in scores.items():
        if name not in reference:
            raise ConfigError(
                f"{source}: no reference score for the evaluation set {name!r}; evaluate the reference model on it "
                f"too, or drop the set (reference has: {', '.join(sorted(reference)) or 'nothing'})"
            )
        ref = float(reference[name])
        if ref == 0:
            skipped.append(name)
            continue
        per[name] = 100.0 * float(value) / ref
    if not per:
        what = f" (reference scores 0 on {', '.join(skipped)})" if skipped else ""
        raise ConfigError(f"{source}: no evaluation set with a non-zero reference score{what}; relative performance "
                          "is undefined: use a better-trained reference or other sets")
    return {"relative": sum(per.values()) / len(per), "per_set": per, "skipped": skipped}


def percent_mean(sets: dict) -> tuple[float | None, list[str]]:
    """Mean score over the sets on a percent scale, and the names of the sets left out.

    The rule (documented in ``vlselect eval summarize``): a set counts unless its ``scale`` is ``"points"`` (MME's
    ~1500-of-2000 sum; see :func:`vlselect.evaluate.lmms.import_lmms_results`). Points and percentages are never averaged
    together; relative performance (score / reference) is the cross-benchmark number that includes them.
    """
    keep = [v["score"] for v in sets.values() if v.get("scale", "percent") != "points"]
    apart = [k for k, v in sets.items() if v.get("scale", "percent") == "points"]
    return (sum(keep) / len(keep) if keep else None), apart


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean and two-sided t-distribution confidence interval over runs (e.g. seeds).

    Returns ``{"mean", "low", "high", "half_width", "n", "std"}``; with a single value the interval is ``None``.

    Examples
    --------
    >>> r = mean_interval([1.0, 2.0, 3.0])
    >>> round(r["half_width"], 4)
    2.4841
    """
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        raise ConfigError("no values to average: give at least one result file")
    mean = sum(vals) / n
    if n == 1:
        return {"mean": mean, "low": None, "high": None, "half_width": None, "n": 1, "std": None}
    from scipy import stats

    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "half_width": half, "n": n, "std": std}
