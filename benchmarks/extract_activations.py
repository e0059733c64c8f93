"""Benchmark: COINCIDE activation extraction, vlselect vs the official approach, same model, same pool, one run.

The official approach (coincide.md §1.3-1.4, as the issue describes it): the pool permuted with seed 42 (§1.3)
and cut into batches of 8, a normal
forward pass of the whole model (with the output head) and a forward hook on each probed ``o_proj``, then
fixed-window pooling done per sample in Python (vision window [prompt_len, prompt_len + n_image_tokens), text window
after it for the sample's language length), tanh / normalise / scale per part.

vlselect (:func:`vlselect.features.activations.compute_shard`): samples sorted by length inside a shard, the
forward stops after the last probed layer (no later layers, no output head), mask-based pooling as one batched
matmul per layer.

Both sides use the same encoding (:func:`vlselect.models.encode_sample`, timed separately and included in both
throughputs) and run in separate child processes so peak memory (max RSS) is measured per approach. The model is
``build_tiny(size="m")``: LLaVA, 24 decoder layers (the paper's depth, so the paper's layers 3, 7, 11, 15, 19 are
probed), hidden 128, 64 image tokens. The pool is the synthetic world (``vlselect.world.make_world``).

The **floor** (issue 14 item 3): the forward pass through the probed layers only, i.e. the model (vision tower,
projector, embeddings, decoder layers) stopped right after the last probed ``o_proj``, with no other hook, no
pooling and no copy to the host, on pre-collated batches (collation not timed). It runs in one child against
vlselect's per-batch compute (:func:`vlselect.features.activations.forward_features` on the same samples and the same
length-sorted batches, collation included), interleaved ``--repeat`` times on samples encoded once, so the ratio is
measured at nearly the same machine load. The padding waste (padded tokens / all tokens in the batches) is printed
for vlselect's length-sorted batches and for the official pool-order batches.

Usage::

    .venv/bin/python benchmarks/extract_activations.py [--n 240] [--threads 1] [--batch-size 8] [--repeat 3]

Each approach runs ``--repeat`` times, alternating, and the median of each is reported. Throughputs and ratios use
the CPU time of the thread that runs torch (one intra-op thread), which hardly depends on the other jobs of a shared
machine (wall time under load varies by 2x or more and is printed beside it). The official and vlselect children
time the whole extraction in the child (encoding included, model loading excluded); the floor figures are
in-process (encoding excluded on both sides).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def _setup(work: Path, n: int):
    from vlselect.models.tiny import build_tiny
    from vlselect.world import make_world

    model = build_tiny(work / "model", family="llava", size="m", seed=0)
    make_world(work / "world", size=n, eval_size=10, seed=0)
    return model, work / "world" / "pool.json", work / "world" / "images"


def _official(loaded, encoded, layers, batch_size=8):
    """Batches in pool order, full forward with hooks, fixed windows pooled per sample in Python."""
    import torch
    import torch.nn.functional as F

    from vlselect.models import collate

    # the official constants, derived once for this model: tokens before the image, image tokens per image
    first_img = next(e for e in encoded if e["image_mask"].any())
    pos = torch.nonzero(first_img["image_mask"])[:, 0]
    prompt_len, n_img = int(pos[0]), int(pos.numel())
    dec = loaded.decoder_layers
    out = []
    for b in range(0, len(encoded), batch_size):
        chunk = encoded[b:b + batch_size]
        batch = collate(chunk, loaded.pad_token_id)
        captured = {}
        hooks = [dec[i].self_attn.o_proj.register_forward_hook(
            lambda m, a, o, i=i: captured.__setitem__(i, o)) for i in layers]
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "image_mask", "text_mask")}
        with torch.no_grad():
            loaded.model(**inputs)
        for h in hooks:
            h.remove()
        T = batch["input_ids"].shape[1]
        for r, e in enumerate(chunk):
            has_img = bool(e["image_mask"].any())
            n_tok = int(e["input_ids"].shape[0])
            lang = n_tok - prompt_len - (n_img if has_img else 0)
            parts = []
            for i in layers:
                a = captured[i][r]
                v = a[prompt_len:min(prompt_len + n_img, T)].mean(0)
                u = a[prompt_len + n_img:prompt_len + n_img + lang].mean(0) if lang else torch.zeros(a.shape[1])
                v = F.normalize(torch.tanh(v), dim=0) / math.sqrt(2 * len(layers))
                u = F.normalize(torch.tanh(u), dim=0) / math.sqrt(2 * len(layers))
                parts += [v, u]
            out.append(torch.nan_to_num(torch.cat(parts)).to(torch.float16))
    return torch.stack(out)


def _child(which, model_dir, pool_path, images, threads, batch_size, queue):
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from vlselect.features.activations import _open_pool, compute_shard, default_layers
    from vlselect.models import encode_sample, load_vlm

    loaded = load_vlm(model_dir, device="cpu")
    pool = _open_pool(pool_path, images)
    layers = default_layers(loaded.num_layers)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    c0 = time.thread_time()
    if which == "official":
        # the official order: the whole list permuted with np.random.seed(42) (spec §1.3), batches of 8
        rng = np.random.RandomState(42)
        order = rng.permutation(len(pool))
        encoded = [encode_sample(loaded, pool[int(i)], images) for i in order]
        t_enc = time.perf_counter() - t0
        feats = np.empty((len(pool), 2 * len(layers) * loaded.model.config.get_text_config().hidden_size), np.float16)
        feats[order] = _official(loaded, encoded, layers).numpy()  # back to pool order
    else:
        hidden = loaded.model.config.get_text_config().hidden_size
        arrays, _ = compute_shard(loaded, pool, range(len(pool)), image_root=images, layers=layers,
                                  batch_size=batch_size, losses=False, skip_bad=False, hidden_size=hidden)
        feats = arrays["activations"]
        t_enc = float("nan")
    wall = time.perf_counter() - t0
    cpu = time.thread_time() - c0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"which": which, "n": len(pool), "wall_s": wall, "cpu_s": cpu, "encode_s": t_enc,
               "samples_per_s": len(pool) / cpu,
               "peak_rss_mb": rss1 / 1024, "extra_rss_mb": (rss1 - rss0) / 1024, "layers": layers,
               "feats": np.asarray(feats, dtype=np.float16).tolist()})


def _padding_waste(lengths, batch_size: int) -> float:
    """Padded tokens / all tokens when ``lengths`` are cut into consecutive batches, each padded to its longest."""
    total = padded = 0
    for b in range(0, len(lengths), batch_size):
        chunk = lengths[b:b + batch_size]
        total += max(chunk) * len(chunk)
        padded += max(chunk) * len(chunk) - sum(chunk)
    return padded / total if total else 0.0


def _floor_child(model_dir, pool_path, images, threads, batch_size, repeat, queue):
    """The floor against vlselect's per-batch compute, interleaved, on samples encoded once."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from vlselect.features.activations import _StopForward, _base_model, _open_pool, default_layers, forward_features
    from vlselect.models import collate, encode_sample, load_vlm

    loaded = load_vlm(model_dir, device="cpu")
    pool = _open_pool(pool_path, images)
    layers = default_layers(loaded.num_layers)
    t0 = time.perf_counter()
    encoded = [encode_sample(loaded, pool[i], images) for i in range(len(pool))]
    t_enc = time.perf_counter() - t0
    lengths = [int(e["input_ids"].shape[0]) for e in encoded]
    order = sorted(range(len(encoded)), key=lambda j: (lengths[j], j))  # as compute_shard (one shard)
    chunks = [[encoded[j] for j in order[b:b + batch_size]] for b in range(0, len(order), batch_size)]
    batches = [collate(c, loaded.pad_token_id) for c in chunks]
    base = _base_model(loaded.model)
    stop_at = loaded.decoder_layers[max(layers)].self_attn.o_proj

    def stop(_m, _i, _o):
        raise _StopForward

    def floor():
        h = stop_at.register_forward_hook(stop)
        try:
            with torch.inference_mode():
                for batch in batches:
                    inputs = {k: v for k, v in batch.items() if k not in ("labels", "image_mask", "text_mask")}
                    try:
                        base(**inputs, use_cache=False)
                    except _StopForward:
                        pass
        finally:
            h.remove()

    def ours():
        for c in chunks:
            forward_features(loaded, collate(c, loaded.pad_token_id), layers)

    times = {"floor": [], "ours": []}  # CPU seconds of this thread (torch runs here with one intra-op thread)
    walls = {"floor": [], "ours": []}
    for _ in range(repeat):
        for name, fn in (("floor", floor), ("ours", ours)):
            t0, c0 = time.perf_counter(), time.thread_time()
            fn()
            times[name].append(time.thread_time() - c0)
            walls[name].append(time.perf_counter() - t0)
    rng = np.random.RandomState(42)
    official_order = rng.permutation(len(encoded))
    queue.put({"times": times, "walls": walls, "encode_s": t_enc, "n": len(encoded), "layers": layers,
               "stop_layer": max(layers), "num_layers": loaded.num_layers,
               "waste_sorted": _padding_waste([lengths[j] for j in order], batch_size),
               "waste_official": _padding_waste([lengths[int(j)] for j in official_order], 8),
               "waste_pool_order": _padding_waste(lengths, batch_size),
               "tokens": sum(lengths)})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=240, help="pool size (world records)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    ap.add_argument("--batch-size", type=int, default=8, help="vlselect batch size (the official one is 8)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each approach, alternated; medians reported")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        model, pool, images = _setup(work, args.n)
        ctx = mp.get_context("spawn")
        results: dict[str, list] = {"official": [], "vlselect": []}
        for _ in range(args.repeat):  # alternate, keep the best run of each: robust to load from other jobs
            for which in ("official", "vlselect"):
                q = ctx.Queue()
                p = ctx.Process(target=_child, args=(which, str(model), str(pool), str(images), args.threads,
                                                     args.batch_size, q))
                p.start()
                results[which].append(q.get())
                p.join()
        q = ctx.Queue()
        p = ctx.Process(target=_floor_child, args=(str(model), str(pool), str(images), args.threads,
                                                   args.batch_size, args.repeat, q))
        p.start()
        fl = q.get()
        p.join()
    for which, runs in results.items():
        print(f"{which:>9} runs (samples per CPU second): " + ", ".join(f"{r['samples_per_s']:.1f}" for r in runs))
    def median_run(runs):  # the run with the median throughput (its features are kept for the comparison)
        return sorted(runs, key=lambda r: r["samples_per_s"])[len(runs) // 2]

    off = median_run(results["official"])
    ours = median_run(results["vlselect"])
    a = np.array(off.pop("feats"), dtype=np.float32)
    b = np.array(ours.pop("feats"), dtype=np.float32)
    has_img = np.linalg.norm(b, axis=1) > 0.9  # image rows: both definitions coincide there (spec §1.4)
    diff = float(np.abs(a[has_img] - b[has_img]).max())
    print(f"pool: {off['n']} world samples ({int((~has_img).sum())} text-only); model: tiny LLaVA size m "
          f"(24 layers, hidden 128); layers {ours['layers']}; torch threads {args.threads}")
    for r in (off, ours):
        print(f"{r['which']:>9}: {r['samples_per_s']:8.1f} samples/CPU s  CPU {r['cpu_s']:6.2f} s  wall {r['wall_s']:6.2f} s  "
              f"peak RSS {r['peak_rss_mb']:7.1f} MB (+{r['extra_rss_mb']:.1f} MB during extraction)")
    print(f"max |official - vlselect| on image rows: {diff:.2e} (float16)")
    print(f"speed-up vlselect (batch {args.batch_size}) / official (batch 8), median runs: "
          f"{ours['samples_per_s'] / off['samples_per_s']:.2f}x")
    med = lambda xs: float(np.median(xs))  # noqa: E731
    ratios = [o / f for o, f in zip(fl["times"]["ours"], fl["times"]["floor"])]
    print(f"floor (forward stopped after the last probed o_proj, layer {fl['stop_layer']} of {fl['num_layers']}; "
          f"no hooks/pooling/collation) vs vlselect per-batch compute (collate + forward_features), same "
          f"length-sorted batches of {args.batch_size}, {fl['n']} samples encoded once ({fl['encode_s']:.2f} s), "
          f"medians of {args.repeat} interleaved runs:")
    print(f"    CPU: floor {med(fl['times']['floor']):.3f} s   vlselect {med(fl['times']['ours']):.3f} s   "
          f"ratio {med(ratios):.3f}x (runs: " + ", ".join(f"{r:.3f}" for r in ratios) + ");  wall: floor "
          f"{med(fl['walls']['floor']):.3f} s, vlselect {med(fl['walls']['ours']):.3f} s")
    print(f"    padding waste (padded / all tokens): vlselect length-sorted {fl['waste_sorted']:.1%}; pool order "
          f"{fl['waste_pool_order']:.1%}; official seed-42 order, batches of 8 {fl['waste_official']:.1%}")
    print(json.dumps({"official": off, "vlselect": ours, "ratio": ours["samples_per_s"] / off["samples_per_s"],
                      "floor": {**fl, "ratio_median": med(ratios)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
