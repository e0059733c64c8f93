"""Per-sample gradient features: vlselect's batched hook engine against the official approach (issue 4, item 6).

    .venv/bin/python benchmarks/gradients.py                       # defaults below, CPU
    .venv/bin/python benchmarks/gradients.py --n 128 --r 16 --dim 8192 --batch-size 32

Official approach (icons.md §2.2-2.4, tive.md §4.2-4.5, survey.md §5.2): one sample per forward/backward
(``torch.autograd.grad`` of its mean answer-token loss), the LoRA gradients flattened and concatenated, buffered
``--official-every`` samples at a time (TIVE: 16, ICONS: 4) and projected with a dense matrix generated in blocks
(TRAK's BasicProjector way; fast_jl does not run on CPU). To make the outputs comparable both sides use the same
seeded :class:`vlselect.features.projection.Projection`, so the two projected outputs must be equal up to float
rounding; the script prints the largest difference.

Ours: :class:`vlselect.features.gradients.GradientEngine`, ``--batch-size`` samples per forward/backward, per-layer
hooks, gradients buffered and projected once per buffer. Also timed: the factored (LoGra) sketch, which is a
different sketch (its output is not comparable, so no difference is printed for it).

One invocation builds a tiny model (``vlselect.models.tiny.build_tiny``) with a randomly initialised LoRA adapter
(every linear layer of the language model, rank ``--r``), a pool of ``--n`` samples with images, encodes them once,
then times every implementation in its **own child process** (same inputs), so wall time and peak RSS
(``ru_maxrss``) are per implementation. Wall time covers the gradient + projection work only (not loading the model
or encoding). ``--threads`` sets torch's thread count in every child (default 1: on a shared machine, multi-threaded
BLAS on tiny matrices mostly spins).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LLM_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def _write_pool(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    words = ["red", "blue", "square", "circle", "two", "three", "left", "right", "large", "small", "green", "top"]
    recs = []
    for i in range(n):
        q = " ".join(rng.choice(words, size=int(rng.integers(3, 9))))
        a = " ".join(rng.choice(words, size=int(rng.integers(1, 12)))).capitalize() + "."
        rec = {"id": f"b{i}", "conversations": [{"from": "human", "value": f"<image>\nWhat about {q}?"},
                                                {"from": "gpt", "value": a}]}
        if i % 5 == 4:  # some text-only rows, as in LLaVA-665K
            rec["conversations"][0]["value"] = f"Tell me about {q}."
        else:
            arr = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(images / f"b{i}.png")
            rec["image"] = f"b{i}.png"
        recs.append(rec)
    (root / "pool.json").write_text(json.dumps(recs))
    return root / "pool.json", images


def _setup(work: Path, args) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from vlselect.models import load_vlm
    from vlselect.models.tiny import build_tiny

    mdir = Path(args.model) if args.model else build_tiny(work / "model", family=args.family, seed=0, size=args.size)
    pool, images = _write_pool(work, args.n)
    loaded = load_vlm(mdir, device="cpu")
    pm = get_peft_model(loaded.model, LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.05,
                                                 target_modules=LLM_TARGETS))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    pm.save_pretrained(str(work / "lora"))
    (work / "paths.json").write_text(json.dumps({"model": str(mdir), "pool": str(pool), "images": str(images)}))


def _load(work: Path):
    import inspect

    from peft import PeftModel

    from vlselect.models import encode_sample, load_vlm
    from vlselect.pool import open_pool

    paths = json.loads((work / "paths.json").read_text())
    loaded = load_vlm(paths["model"], device="cpu")
    loaded.extra["mm_token_type_ids"] = "mm_token_type_ids" in inspect.signature(loaded.model.forward).parameters
    enc = [encode_sample(loaded, s, paths["images"]) for s in open_pool(paths["pool"])]
    model = PeftModel.from_pretrained(loaded.model, str(work / "lora")).eval()
    return loaded, model, enc


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(impl: str, work: Path, args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from vlselect.features.gradients import GradientEngine, model_inputs, per_sample_loss
    from vlselect.features.projection import Projection
    from vlselect.models import collate

    loaded, model, enc = _load(work)
    pad = loaded.pad_token_id
    if impl.startswith("official"):
        every = int(impl.split("-")[1])
        eng = GradientEngine(model, projection="none")  # only to mark LoRA params trainable, as set_lora_trainable
        names = eng.param_names
        params = dict(model.named_parameters())
        plist = [params[n] for n in names]
        proj = Projection(eng.num_params, args.dim, seed=0)
        singles = [collate([e], pad) for e in enc]
        feats, norms, buf = [], [], []
        t0 = time.perf_counter()
        for k, single in enumerate(singles):
            out = model(**model_inputs(single))
            loss, _ = per_sample_loss(out.logits, single["labels"])
            gs = torch.autograd.grad(loss[0], plist, allow_unused=True)
            gs = [g if g is not None else torch.zeros_like(p) for g, p in zip(gs, plist)]
            norms.append(float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gs)))))
            buf.append(torch.cat([g.reshape(-1) for g in gs]))
            if len(buf) == every or k == len(singles) - 1:
                feats.append(proj.project(torch.stack(buf)))
                buf = []
        secs = time.perf_counter() - t0
        f = torch.cat(feats).numpy()
        nr = np.asarray(norms, dtype=np.float32)
    else:
        projection = "factored" if impl == "ours-factored" else "rademacher"
        eng = GradientEngine(model, projection=projection, dim=args.dim, seed=0, factor_dim=args.factor_dim)
        batches = [collate(enc[i : i + args.batch_size], pad) for i in range(0, len(enc), args.batch_size)]
        t0 = time.perf_counter()
        rows = list(eng.run(batches))
        secs = time.perf_counter() - t0
        f = torch.cat([r[1] for r in rows]).numpy()
        nr = torch.cat([r[2] for r in rows]).numpy()
    np.save(work / f"{impl}.npy", f)
    np.save(work / f"{impl}_norms.npy", nr)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    print(json.dumps({"impl": impl, "seconds": secs, "samples_per_s": len(enc) / secs, "peak_rss_bytes": _peak_rss_bytes(),
                      "n": len(enc), "num_params": n_params, "out_dim": int(f.shape[1])}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96, help="samples")
    ap.add_argument("--family", default="llava", choices=["llava", "qwen2-vl"])
    ap.add_argument("--size", default="xs", choices=["xs", "s"])
    ap.add_argument("--model", default=None, help="use this model directory instead of building a tiny one")
    ap.add_argument("--r", type=int, default=8, help="LoRA rank")
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=32, help="ours: samples per backward")
    ap.add_argument("--official-every", default="16,4",
                    help="official: samples per projection call, comma-separated runs (TIVE 16, ICONS 4)")
    ap.add_argument("--factor-dim", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.work), args)
        return
    with tempfile.TemporaryDirectory(prefix="vlselect-bench-grad-") as tmp:
        work = Path(tmp)
        _setup(work, args)
        res = {}
        officials = [f"official-{int(e)}" for e in str(args.official_every).split(",") if e.strip()]
        impls = [*officials, "ours", "ours-factored"]
        passthrough = list(sys.argv[1:])
        for impl in impls:
            out = subprocess.run([sys.executable, __file__, *passthrough, "--child", impl, "--work", str(work)],
                                 check=True, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        ours = np.load(work / "ours.npy")
        ours_norms = np.load(work / "ours_norms.npy")
        cmp = {}
        for impl in officials:
            off = np.load(work / f"{impl}.npy")
            cmp[impl] = (float(np.abs(off - ours).max()), float(np.abs(off).max()),
                         float(np.min(np.sum(off * ours, 1) / (np.linalg.norm(off, axis=1) * np.linalg.norm(ours, axis=1)))),
                         float(np.abs(np.load(work / f"{impl}_norms.npy") - ours_norms).max()))
    o = res[officials[0]]
    print(f"per-sample LoRA gradients -> {args.dim}-d Rademacher projection; tiny {args.family} ({args.size}), LoRA "
          f"r={args.r} on every LLM linear ({o['num_params']:,} parameters), {o['n']} samples, "
          f"{args.threads} torch thread(s)")
    print(f"{'implementation':<50} {'samples/s':>10} {'seconds':>9} {'peak RSS':>10} " +
          " ".join(f"{'vs ' + i:>12}" for i in officials))
    labels = {**{i: f"official (1 sample/backward, project every {i.split('-')[1]})" for i in officials},
              "ours": f"ours dense (batch {args.batch_size}, hooks)",
              "ours-factored": f"ours factored (LoGra f={args.factor_dim}; other sketch)"}
    for impl in impls:
        r = res[impl]
        print(f"{labels[impl]:<50} {r['samples_per_s']:>10.1f} {r['seconds']:>9.2f} "
              f"{r['peak_rss_bytes'] / 2**20:>8.0f}MB " +
              " ".join(f"{res[i]['seconds'] / r['seconds']:>11.1f}x" for i in officials))
    for impl, (diff, scale, cos, nd) in cmp.items():
        print(f"dense outputs, {impl} vs ours: max |difference| = {diff:.3g} (max |value| {scale:.3g}, relative "
              f"{diff / scale:.2e}); min cosine {cos:.7f}; max |norm difference| = {nd:.3g}")

if __name__ == "__main__":
    main()
