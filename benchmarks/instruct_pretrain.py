"""A stage after the foundation's alignment: the language model and the projector trained on the world's questions
over pictures of a separate pool, answered in sentences but for a few kinds (issue 12; benchmarks/RESULTS.md).

The bench's foundations know the world's questions from text (stage 1) and see its pictures (stage 2), and a
projector aligned with the language model frozen (stage 3) makes a few lookups usable over pictures; every other
skill over pictures is left to the bench's fine-tune, which a subset of 2,000 rows does not teach (random keeps
55-81% of the full pool at 20% in the foundations that learn six sets). Real VLMs meet visual instruction tuning
after multi-task pre-training over pictures (Qwen-VL's second stage, ShareGPT4V's, Cambrian's), with answers in
their own style: the fine-tune then teaches the format. This script trains such a stage on a model directory:
:func:`vlselect.world.make_pretrain_pool` with every question kind of the world but grounding (``--kinds``), a share
``--share`` of its pictures asked one of them and the rest captioned, answered in sentences ("The answer is red.")
but for ``--short-kinds`` (the shipped foundation's: one kind of each set in the short format), scenes of the bench's
evaluation sets (``--avoid``) never drawn; then the language model and the projector trained on it for one epoch
(``--adapter full``: every weight, at ``--lr``; ``lora``: merged into the model), the vision tower frozen. The result is
a model directory for ``vlselect bench --base DIR``; it has no foundation marker (no recipe command builds it).

    python benchmarks/instruct_pretrain.py --base MODEL --out DIR [--size 40000] [--share 0.75] [--lr 1e-4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HALF = "color_of_shape,count_all,pos_of,exist,mc_color"


def _avoid(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((int(a), int(b)) for a, b in (p.split(":") for p in text.split(",") if p.strip()))
    except ValueError:
        raise SystemExit(f"--avoid {text!r}: give seed:eval_size pairs, comma-separated (e.g. 0:200,1:200)") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="model directory (a foundation, or realign.py's model)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=40000, help="pictures of the pool")
    ap.add_argument("--share", type=float, default=0.75, help="share of the pictures asked a question")
    ap.add_argument("--kinds", default=None, help="question kinds, comma-separated (default: every one of "
                    "vlselect.world.make.ALIGN_KINDS)")
    ap.add_argument("--answer-style", default="sentence", choices=("short", "sentence"))
    ap.add_argument("--short-kinds", default=HALF, help="kinds answered in the short format (with --answer-style "
                    "sentence; '' for none)")
    ap.add_argument("--avoid", default="0:200,1:200,2:200,3:200,0:100", help="worlds seed:eval_size whose "
                    "evaluation scenes never occur")
    ap.add_argument("--seed", type=int, default=29, help="the pool's seed (not a bench world's)")
    ap.add_argument("--word-share", type=float, default=0.15)
    ap.add_argument("--image-size", type=int, default=24)
    ap.add_argument("--adapter", default="full", choices=("full", "lora"))
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from vlselect.artifact import digest
    from vlselect.models.load import model_hash
    from vlselect.train import train_lora
    from vlselect.world import make_pretrain_pool
    from vlselect.world.make import ALIGN_KINDS

    kinds = tuple(k.strip() for k in a.kinds.split(",") if k.strip()) if a.kinds else ALIGN_KINDS
    short = tuple(k.strip() for k in a.short_kinds.split(",") if k.strip()) if a.answer_style == "sentence" else ()
    pool_params = dict(size=a.size, seed=a.seed, image_size=a.image_size, avoid=_avoid(a.avoid), counted=True,
                       lookup_share=a.share, lookup_kinds=kinds, answer_style=a.answer_style, short_kinds=short,
                       word_share=a.word_share)
    pool = a.out / f"pool-{a.size}-{digest(pool_params).split(':', 1)[1][:10]}"
    t0 = time.perf_counter()
    if not (pool / "world.json").exists():
        make_pretrain_pool(pool, **pool_params)
    print(json.loads((pool / "world.json").read_text())["task_counts"])
    # the training folder is named by the base model's weights and every setting: a resumed run is the same one
    train_key = digest([model_hash(a.base), pool.name, a.adapter, a.lr, a.batch_size]).split(":", 1)[1][:10]
    res = train_lora(a.base, pool / "pool.json", pool / "images", a.out / f"train-{train_key}", adapter=a.adapter,
                     lr=a.lr, projector_lr=a.lr, epochs=1, batch_size=a.batch_size, seed=0, r=16, lora_alpha=32,
                     gradient_checkpointing=False, progress=True, warmup_ratio=0.03)
    print(f"{pool.name}: {res.samples} samples, {time.perf_counter() - t0:.0f} s (pool and training); model in "
          f"{res.final_dir}")


if __name__ == "__main__":
    from vlselect.errors import VlselectError

    try:
        main()
    except VlselectError as exc:
        raise SystemExit(f"instruct_pretrain: {exc}") from None
