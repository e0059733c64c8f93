"""Training throughput with and without the encode cache (issue 12: images decoded and processed once per world).

The bench trains dozens of subsets of one world in two long-lived worker processes; without a cache every run
decodes every picture, runs the image processor and tokenises the chat again, each epoch. With
:class:`vlselect.train.data.EncodeCache` (the default) a worker encodes each sample once. This script times, in
one process and on one thread, what a worker does: the same LoRA fine-tuning of the shipped foundation on a
world, three times — a first run that fills the cache (and warms up everything else), then one with the cache
off (``VLSELECT_ENCODE_CACHE=0`` behaviour), then one with the filled cache — and prints samples/s side by side.

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
    a = ap.parse_args()

    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(a.threads)
    import vlselect.train.data as data
    from vlselect.models.foundation import foundation_path
    from vlselect.train import train_lora
    from vlselect.world import make_world

    tmp = Path(tempfile.mkdtemp(prefix="vlselect-throughput-"))
    w = make_world(tmp / "w", size=a.size, seed=0, eval_size=1, image_size=24)
    base = foundation_path()

    def run(tag: str) -> tuple[float, int]:
        t = time.perf_counter()
        res = train_lora(base, w.pool_path, w.images_dir, tmp / tag, adapter="lora", r=16, lora_alpha=32, lr=1e-3,
                         projector_lr=1e-3, epochs=1, batch_size=32, seed=0, gradient_checkpointing=False,
                         progress=False)
        return time.perf_counter() - t, res.samples

    data._CACHE = data.EncodeCache()
    fill_s, n = run("fill")  # first run of a worker: fills the cache (and warms up everything else)
    cache = data._CACHE
    data._CACHE = data.EncodeCache(0)  # off: every sample encoded in the run
    off_s, _ = run("off")
    data._CACHE = cache
    on_s, _ = run("on")  # every later run of that worker on this world
    c = cache
    print(f"{n} samples per run, {a.threads} thread(s), LoRA r=16 on the shipped foundation")
    print("| run | seconds | samples/s |")
    print("|---|---|---|")
    print(f"| cache off | {off_s:.1f} | {n / off_s:.1f} |")
    print(f"| cache on, first run (fills it) | {fill_s:.1f} | {n / fill_s:.1f} |")
    print(f"| cache on, later runs | {on_s:.1f} | {n / on_s:.1f} |")
    print(f"ratio later runs / cache off: {off_s / on_s:.2f}x faster; cache hits {c.hits}, misses {c.misses}")
    print(f"whole command (start-up, imports, world, 3 runs): {time.perf_counter() - t_start:.1f} s; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
