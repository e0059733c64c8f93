"""Pinned full-data reference scores for relative performance on real benchmarks (``specs/survey.md`` §1.1, §1.6).

Relative performance depends directly on the reference (survey §1.6: the MME reference alone is 1476.9, 1417.6 or
1510.7 depending on the paper), so the references papers use are pinned here under names, with their source.
Benchmark keys follow lmms-eval task names.
"""

from __future__ import annotations

from pathlib import Path

from vlselect.errors import ConfigError

BENCHMARKS = ("vqav2", "gqa", "vizwiz_vqa", "scienceqa_img", "textvqa", "pope", "mme", "mmbench_en", "mmbench_cn",
              "llava_in_the_wild")

PINNED: dict[str, dict] = {
    "llava-1.5-7b-lora": {
        "source": "LLaVA-1.5-7B LoRA on the full 665K, as used by COINCIDE and ICONS (survey §1.1, 'Full' row)",
        "scores": dict(zip(BENCHMARKS, (79.1, 63.0, 47.8, 68.4, 58.2, 86.4, 1476.9, 66.1, 58.9, 67.9))),
    },
    "llava-1.5-13b-lora": {
        "source": "LLaVA-1.5-13B full-data scores reported with ICONS's 7B→13B transfer (survey §1.1)",
        "scores": dict(zip(BENCHMARKS, (80.0, 63.3, 58.9, 71.2, 60.2, 86.7, 1541.7, 68.5, 61.5, 69.5))),
    },
}


def reference_scores(reference) -> tuple[dict[str, float], str]:
    """Set/benchmark name → reference score, and a label, from a ``results.json`` path or a pinned name.

    Raises
    ------
    ConfigError
        Neither an existing file nor a pinned name (the message lists the names).
    """
    from vlselect.evaluate.sets import read_results, scores_of

    if isinstance(reference, (str, Path)) and Path(reference).is_file():
        return scores_of(read_results(reference)), str(reference)
    if str(reference) in PINNED:
        return dict(PINNED[str(reference)]["scores"]), str(reference)
    raise ConfigError(f"reference '{reference}' is neither a results.json file nor a pinned reference; pass the "
                      f"results.json of the full-data run or one of: {', '.join(PINNED)}")
