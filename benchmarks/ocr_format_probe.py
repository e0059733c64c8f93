"""Does a foundation read the sign, or only miss the answer format? (issue 12, tenth stop)

Asks a world's OCR questions twice: as the evaluation set asks them (with the short-answer format line, scored by
exact match as the bench scores them) and without the format line, counting an answer as read when it contains the
sign's word ("The answer is gym." reads "gym"). A foundation that scores 0 the first way and near 100% the second
way reads the word and misses only the format, which the fine-tune then has to teach.

    python benchmarks/ocr_format_probe.py --world /tmp/bench-rec/world-0/cache/world-*/w --n 60 MODEL [MODEL ...]

``--world``: a world folder (``eval/ocr.json`` and ``images/``; a bench cache's ``world-*/w`` or
``vlselect world make``'s output). ``MODEL``: model directories (the shipped foundation: ``vlselect models
foundation --path``). One thread; about 10 s a model for 60 questions on this machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--world", required=True, help="world folder holding eval/ocr.json and images/")
    ap.add_argument("--n", type=int, default=60, help="questions asked (the first N of the set)")
    args = ap.parse_args()

    import torch

    from vlselect.evaluate import evaluate

    torch.set_num_threads(1)
    world = Path(args.world)
    src = json.loads((world / "eval" / "ocr.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        for name, strip in (("ocr_as_asked", False), ("ocr_plain", True)):
            d = {**src, "name": name, "samples": [dict(s) for s in src["samples"][: args.n]]}
            if strip:
                for s in d["samples"]:
                    s["question"] = s["question"].split("\n")[0]
            p = Path(tmp) / f"{name}.json"
            p.write_text(json.dumps(d))
            sets[name] = p
        print(f"{'model':50s} {'as asked (exact)':>17s} {'plain (word read)':>18s}  first plain answers")
        for m in args.models:
            out = Path(tmp) / f"out-{abs(hash(m))}"
            evaluate(m, [str(p) for p in sets.values()], str(world / "images"), out, progress=False,
                     max_new_tokens=12)
            rows = {n: [json.loads(line) for line in (out / "predictions" / f"{n}.jsonl").read_text().splitlines()]
                    for n in sets}
            exact = sum(r["score"] for r in rows["ocr_as_asked"]) / len(rows["ocr_as_asked"])
            read = sum(any(a in r["prediction"] for a in r["answers"]) for r in rows["ocr_plain"])
            first = [r["prediction"] for r in rows["ocr_plain"][:3]]
            print(f"{m:50s} {100 * exact:16.1f}% {read:>10d} / {len(rows['ocr_plain'])}  {first}")


if __name__ == "__main__":
    main()
