"""Training throughput of one bench worker: the encode cache, the PCG64 LoRA dropout and length-grouped steps.

The bench trains dozens of subsets of one world in two long-lived single-thread worker processes. This script
times, in one process and on one thread, what a worker does — LoRA fine-tuning of the shipped foundation (r=16,
batch 32, one epoch) on a world — in five forms, and prints samples/s side by side:

1. the first run of the process (fills the encode cache, and pays the process's warm-up);
2. the encode cache off (every sample tokenised, its picture decoded and processed), torch's dropout;
3. the encode cache on, torch's dropout, LLaVA's order (the bench before 2026-12-03 evening);
4. as 3 with the LoRA dropout's mask from NumPy's PCG64 (:mod:`vlselect.train.dropout`, the default on CPU);
5. as 4 with length-grouped steps (``length_group=4``, the bench's default since then).

Rows 3-5 are run twice, interleaved, and the faster of each is printed (the machine's speed drifts between
runs); the padding share of each order is printed beside it.

    python benchmarks/train_throughput.py --size 2000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2000, help="records trained on per run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="runs of rows 3-5 (interleaved; the fastest is shown)")
    a = ap.parse_args()

    t_start = time.perf_counter()
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    import vlselect.train.data as data
    import vlselect.train.dropout as dropout
    from vlselect.models import load_vlm
    from vlselect.models.foundation import foundation_path
    from vlselect.train import train_lora
    from vlselect.world import make_world

    tmp = Path(tempfile.mkdtemp(prefix="vlselect-throughput-"))
    w = make_world(tmp / "w", size=a.size, seed=0, eval_size=1, image_size=24)
    base = foundation_path()
    pcg = dropout.use_pcg_dropout

    def run(tag: str, *, pcg_dropout: bool = True, length_group: int = 0) -> float:
        dropout.use_pcg_dropout = pcg if pcg_dropout else (lambda model: 0)
        t = time.perf_counter()
        train_lora(base, w.pool_path, w.images_dir, tmp / tag, adapter="lora", r=16, lora_alpha=32, lr=1e-3,
                   projector_lr=1e-3, epochs=1, batch_size=32, seed=0, gradient_checkpointing=False,
                   progress=False, length_group=length_group)
        return time.perf_counter() - t

    data._CACHE = data.EncodeCache()
    fill_s = run("fill")
    cache = data._CACHE
    data._CACHE = data.EncodeCache(0)
    off_s = run("off", pcg_dropout=False)
    data._CACHE = cache
    forms = {"torch dropout, LLaVA order": dict(pcg_dropout=False, length_group=0),
             "PCG64 dropout, LLaVA order": dict(pcg_dropout=True, length_group=0),
             "PCG64 dropout, length_group=4": dict(pcg_dropout=True, length_group=4)}
    best = {k: float("inf") for k in forms}
    for rep in range(a.repeat):
        for i, (k, kw) in enumerate(forms.items()):
            best[k] = min(best[k], run(f"r{rep}-{i}", **kw))

    # padding share of the two orders (token counts from the encodings)
    loaded = load_vlm(base)
    from vlselect.train.data import global_schedule, open_training_pool

    pool = open_training_pool(w.pool_path)
    lens = np.array([int(cache.encode(loaded, pool[i], w.images_dir)["input_ids"].shape[0])
                     for i in range(len(pool))])

    def padding(lg: int) -> float:
        plan = global_schedule(len(pool), epochs=1, batch_size=32, grad_accum=1, world_size=1, seed=0,
                               lengths=lens, length_group=lg)
        return 1 - sum(lens[s].sum() for s in plan) / sum(len(s) * lens[s].max() for s in plan)

    n = len(pool)
    ref = best["torch dropout, LLaVA order"]
    print(f"{n} samples per run, {a.threads} thread(s), LoRA r=16 on the shipped foundation (in-process times)")
    print("| run | seconds | samples/s | padding | vs row 3 |")
    print("|---|---|---|---|---|")
    print(f"| 1. first run of the process (fills the cache) | {fill_s:.1f} | {n / fill_s:.1f} | {padding(0):.0%} | |")
    print(f"| 2. cache off, torch dropout | {off_s:.1f} | {n / off_s:.1f} | {padding(0):.0%} | {ref / off_s:.2f}x |")
    for i, (k, kw) in enumerate(forms.items()):
        print(f"| {i + 3}. cache on, {k} | {best[k]:.1f} | {n / best[k]:.1f} | {padding(kw['length_group']):.0%} | "
              f"{ref / best[k]:.2f}x |")
    print(f"whole command (start-up, imports, world, {2 + a.repeat * 3} runs): {time.perf_counter() - t_start:.1f} s; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
