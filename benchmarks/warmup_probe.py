#!/usr/bin/env python
"""The foundation's lookup warm-up alone, then the reading probe (issue 12): which question kinds does a language
model answer from the world's descriptions after it, before any other stage?

Builds the foundation's initial model (random weights, the shipped recipe's shape and seed), runs
:func:`vlselect.train.foundation.lookup_warmup` with the given kinds and steps (compact lookup rows, then the plain
question, then the question as the bench asks it), and asks the result every question kind of the world about 100
held-out descriptions each (``learnability.py --probe``'s sets). One thread. Minutes: about 8 per 4,000 steps.

    python benchmarks/warmup_probe.py --out /tmp/wp --kinds color_of_shape,exist,count_color,mc_color \
        --lookup 2000 --plain 1500 --chat 1500 --lr 1e-4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kinds", default="color_of_shape", help="comma list of vlselect.world.make.LOOKUP_KINDS")
    ap.add_argument("--lookup", type=int, default=1500, help="steps of compact lookup rows")
    ap.add_argument("--plain", type=int, default=1500, help="steps of the plain question")
    ap.add_argument("--chat", type=int, default=1000, help="steps of the question as the bench asks it")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from learnability import colour_against_random_object, probe_sets
    from vlselect.evaluate import evaluate
    from vlselect.models.foundation import FoundationRecipe
    from vlselect.models.tiny import build_tiny
    from vlselect.train.foundation import lookup_warmup

    rc = FoundationRecipe()
    kinds = tuple(k for k in a.kinds.split(",") if k)
    init = a.out / "init"
    if not (init / "vlselect_tiny.json").exists():
        build_tiny(init, rc.family, seed=rc.seed, size=rc.size, image_size=rc.image_size)
    t0 = time.perf_counter()
    res = lookup_warmup(init, a.out / "warmup", steps=a.lookup, plain_steps=a.plain, chat_steps=a.chat, lr=a.lr,
                        seed=a.seed, batch_size=rc.batch_size, image_size=rc.image_size, avoid=rc.avoid,
                        kinds=kinds, progress=True)
    seconds = time.perf_counter() - t0
    ls = res["losses"]
    k = min(50, len(ls))
    files = probe_sets(a.out / "probe")
    r = evaluate(str(res["dir"]), [str(f) for f in files], str(a.out / "probe"), a.out / "probe" / "eval",
                 progress=False, max_new_tokens=32, batch_size=64, overwrite=True)
    print(f"\nwarm-up of {', '.join(kinds)}: {a.lookup} lookup + {a.plain} plain + {a.chat} chat steps at lr {a.lr}, "
          f"{seconds:.0f} s; loss {sum(ls[:k]) / k:.3f} first {k} steps, {sum(ls[-k:]) / k:.3f} last {k}")
    print("| kind | right % |")
    print("|---|---|")
    scores = {n.removeprefix("probe_"): v["score"] for n, v in r["sets"].items()}
    for k, v in scores.items():
        print(f"| {k}{' (warm-up kind)' if k in kinds else ''} | {v:.0f} |")
    colour_against_random_object(a.out / "probe" / "eval" / "predictions" / "probe_color_of_shape.jsonl")
    (a.out / "probe_scores.json").write_text(json.dumps({"kinds": list(kinds), "lookup": a.lookup, "plain": a.plain,
                                                         "chat": a.chat, "lr": a.lr, "seconds": seconds,
                                                         "scores": scores}, indent=1) + "\n")


if __name__ == "__main__":
    from vlselect.errors import VlselectError

    try:
        main()
    except VlselectError as exc:  # a warm-up of other parameters in --out, a bad kind: the message, no traceback
        raise SystemExit(f"warmup_probe: {exc}") from None
