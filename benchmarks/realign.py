"""Stage 3 of a foundation again, on another alignment pool: what a recipe with other ``align_lookup_share`` /
``align_lookup_kinds`` would give, without training its stages 0-2 again (issue 12; benchmarks/RESULTS.md).

A foundation's work folder (``build_foundation(..., work_dir=W)``, ``foundation_screen.py``'s
``VARIANT/.foundation-work/<hash>``) holds its vision stage (``vision/final``); this script makes the alignment
pool the recipe would make (:func:`vlselect.world.make_pretrain_pool` with the work folder's recipe seed, size,
avoided worlds and counted captions, and the share and kinds given here) and trains the projector alone on it with
the language model and the vision tower frozen (the recipe's ``align_lr``, batch and one epoch), as
:func:`vlselect.train.foundation.build_foundation` does. The result is a model directory for ``vlselect bench
--base DIR``; it has no foundation marker (it is not built by the recipe command: stages 0-2 are the work folder's,
trained by the code of their day).

    python benchmarks/realign.py --foundation F --work W --share 0.67 \
        --kinds color_of_shape,exist,count_color,mc_color[,ocr] [--word-share 0.4] --out DIR [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--foundation", type=Path, required=True, help="the foundation whose recipe is read "
                    "(vlselect_foundation.json)")
    ap.add_argument("--work", type=Path, required=True, help="its work folder (holds vision/final)")
    ap.add_argument("--share", type=float, required=True, help="share of the pictures asked a question")
    ap.add_argument("--kinds", default="color_of_shape", help="question kinds, comma-separated "
                    "(vlselect.world.make.ALIGN_KINDS)")
    ap.add_argument("--word-share", type=float, default=None, help="share of the pictures with a sign (default: "
                    "make_pretrain_pool's, 0.15); only a picture with a sign can be asked its word (ocr)")
    ap.add_argument("--size", type=int, default=None, help="pictures (default: the recipe's align_size)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from vlselect.artifact import digest
    from vlselect.models.foundation import MARKER, FoundationRecipe
    from vlselect.train import train_lora
    from vlselect.world import make_pretrain_pool

    rc = FoundationRecipe.from_json(json.loads((a.foundation / MARKER).read_text())["recipe"])
    # build_foundation names a recipe's work folder by the recipe's digest: a work folder of another foundation
    # would give a model whose stages 0-2 are not those of the recipe read here
    want = digest(rc.to_json()).split(":", 1)[1][:16]
    if a.work.name != want:
        raise SystemExit(f"{a.work}: not the work folder of {a.foundation}'s recipe (that one is named {want})")
    vision = a.work / "vision" / "final"
    if not (vision / "config.json").exists():
        raise SystemExit(f"{vision}: no vision stage here; give the work folder of that foundation (--work)")
    kinds = tuple(k.strip() for k in a.kinds.split(",") if k.strip())
    size = a.size or rc.align_size
    pool_params = dict(size=size, seed=rc.seed + 17, image_size=rc.image_size, avoid=rc.avoid,
                       counted=rc.counted_captions, lookup_share=a.share, lookup_kinds=kinds)
    if a.word_share is not None:  # set only when given: the pools (and folder names) of before are unchanged
        pool_params["word_share"] = a.word_share
    # the folder is named by every parameter of the pool (a pool of another recipe's seed is never reused) and the
    # vision stage's work folder
    tag = f"align-{size}-{a.share:g}-{'-'.join(kinds)}-{digest([pool_params, want]).split(':', 1)[1][:8]}"
    pool = a.out / tag
    t0 = time.perf_counter()
    if not (pool / "world.json").exists():
        make_pretrain_pool(pool, **pool_params)
    print(json.loads((pool / "world.json").read_text())["task_counts"])
    res = train_lora(vision, pool / "pool.json", pool / "images", a.out / f"train-{tag}", adapter="projector",
                     lr=rc.align_lr, projector_lr=rc.align_lr, epochs=1, batch_size=rc.batch_size, seed=rc.seed,
                     gradient_checkpointing=False, progress=True, warmup_ratio=0.03)
    print(f"{tag}: {res.samples} samples, {time.perf_counter() - t0:.0f} s (pool and training); model in "
          f"{res.final_dir}")


if __name__ == "__main__":
    from vlselect.errors import VlselectError

    try:
        main()
    except VlselectError as exc:
        raise SystemExit(f"realign: {exc}") from None
