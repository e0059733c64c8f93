"""Per-sample gradient features: vlselect's batched hook engine against the official approach and the compute
floor (issue 4 item 6, issue 14 item 2).

    .venv/bin/python benchmarks/gradients.py                       # both settings, 3 repeats, CPU
    .venv/bin/python benchmarks/gradients.py --settings tive --n 128 --repeat 5

Settings (the published ones, on a tiny model): **TIVE** = gradients of the attention LoRA only (``--params
self_attn``), 8,192-d Rademacher, the official loop projects every 16 samples (tive.md §4.1, §4.5); **ICONS** = every
LoRA A/B, 5,120-d Rademacher, projected every 4 samples (icons.md §2.3-2.4).

Implementations, each timed in its **own child process** on the same encoded samples:

* ``official``: one sample per forward/backward (``torch.autograd.grad`` of its mean answer-token loss), the LoRA
  gradients flattened and concatenated, buffered 16 (TIVE) or 4 (ICONS) samples at a time and projected with a dense
  matrix generated in blocks (TRAK's BasicProjector way; fast_jl does not run on CPU). It uses the same seeded
  :class:`vlselect.features.projection.Projection` as ours, so the two outputs must agree to float rounding; the
  script prints the largest difference.
* ``floor``: the work no exact method can avoid: a plain batched forward and backward of the same batches
  (``sum_i L_i``, ordinary parameter gradients) plus **one GEMM** ``G @ R`` that projects the materialised per-sample
  gradients ``G`` (``n x D``) with the dense matrix ``R`` (``D x k``) already in memory (its generation is not timed:
  fast_jl generates it inside its kernel). Both parts are timed and printed.
* ``ours``: :class:`vlselect.features.gradients.GradientEngine`, ``--batch-size`` samples per forward/backward,
  per-layer hooks, exact per-sample gradients, projected once per buffer (the tiles of ``R`` generated on the fly).
* ``ours-factored``: the factored (LoGra-style) projection ``--projection factored``, which never forms a per-sample
  gradient. Its target is the plain forward and backward alone (the floor without the GEMM). It is a different
  sketch: its agreement with the dense one is reported as Spearman rank correlations of influence scores (cosine
  of the first 3/4 of the samples, "train", against the last 1/4, "val", every pair), against the exact gradients too.

Every implementation runs ``--repeat`` times, interleaved (official, floor, ours, factored, official, ...), so the
ratios within one repeat are measured at nearly the same machine load; the table gives the median over repeats of
each time and of each ratio. Times are in-process figures (gradient and projection work only, no model loading or
encoding): ``CPU s`` is the CPU time of the thread that runs torch (one intra-op thread; the CPU autograd engine
runs in the calling thread), which hardly depends on other jobs on a shared machine, and the ratios are taken from
it; ``wall s`` is the wall time of the same run. The whole child process's wall time (imports, model load,
encoding, every run) is printed in the header.
``--threads`` sets torch's thread count in every child (default 1: on a shared machine, multi-threaded BLAS on tiny
matrices mostly spins). Peak RSS is the child's ``ru_maxrss``.
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
    from vlselect.models.peft_wrap import quiet_peft_wrap
    from vlselect.models.tiny import build_tiny

    mdir = Path(args.model) if args.model else build_tiny(work / "model", family=args.family, seed=0, size=args.size)
    pool, images = _write_pool(work, args.n)
    loaded = load_vlm(mdir, device="cpu")
    with quiet_peft_wrap():
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


SETTINGS = {
    "tive": {"params": "self_attn", "dim": 8192, "every": 16},
    "icons": {"params": "lora", "dim": 5120, "every": 4},
}


def _clock() -> dict:
    return {"wall_s": time.perf_counter(), "cpu_s": time.thread_time()}


def _since(t0: dict) -> dict:
    """Wall seconds and CPU seconds of this thread (torch runs its ops in the calling thread with one intra-op
    thread, the autograd engine too on CPU) since ``t0``. CPU seconds hardly depend on what else the shared machine
    runs; the ratios are taken from them."""
    now = _clock()
    return {k: now[k] - t0[k] for k in t0}


class _RssPeak:
    """Peak resident memory above the level at entry, sampled every 5 ms from /proc/self/statm (torch ops
    release the GIL, so the sampler runs during them)."""

    def __enter__(self):
        import ctypes
        import gc
        import threading

        gc.collect()
        try:  # hand freed heap back to the OS so the baseline is the live memory
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self._rss())
        self.extra = self.peak - self.base


def _impls(setting: str, model, loaded, enc, args):
    """``name -> run()``; each run returns ``(seconds, features, norms, extra)``."""
    import torch

    from vlselect.features.gradients import GradientEngine, model_inputs, per_sample_loss
    from vlselect.features.projection import Projection
    from vlselect.models import collate

    cfg = SETTINGS[setting]
    pad = loaded.pad_token_id
    batches = [collate(enc[i : i + args.batch_size], pad) for i in range(0, len(enc), args.batch_size)]
    singles = [collate([e], pad) for e in enc]

    def official():
        every = cfg["every"]
        eng = GradientEngine(model, projection="none", params=cfg["params"])  # marks the parameters trainable
        params = dict(model.named_parameters())
        plist = [params[n] for n in eng.param_names]
        feats, norms, buf = [], [], []
        t0 = _clock()
        for k, single in enumerate(singles):
            out = model(**model_inputs(single))
            loss, _ = per_sample_loss(out.logits, single["labels"])
            gs = torch.autograd.grad(loss[0], plist, allow_unused=True)
            gs = [g if g is not None else torch.zeros_like(p) for g, p in zip(gs, plist)]
            norms.append(float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gs)))))
            buf.append(torch.cat([g.reshape(-1) for g in gs]))
            if len(buf) == every or k == len(singles) - 1:  # a fresh projector per call, as TRAK's BasicProjector
                feats.append(Projection(eng.num_params, cfg["dim"], seed=0).project(torch.stack(buf)))
                buf = []
        secs = _since(t0)
        return secs, torch.cat(feats).numpy(), np.asarray(norms, dtype=np.float32), {}

    def floor():
        eng = GradientEngine(model, projection="none", params=cfg["params"])
        plist = [p for _, p in model.named_parameters() if p.requires_grad]
        R = Projection(eng.num_params, cfg["dim"], seed=0).matrix() / cfg["dim"] ** 0.5  # in memory, not timed
        G = torch.randn(len(enc), eng.num_params, generator=torch.Generator().manual_seed(0))  # materialised grads
        t0 = _clock()
        for batch in batches:
            for p in plist:
                p.grad = None
            out = model(**model_inputs(batch))
            loss, _ = per_sample_loss(out.logits, batch["labels"])
            loss.sum().backward()
        fwd_bwd = _since(t0)
        t1 = _clock()
        f = G @ R
        gemm = _since(t1)
        for p in plist:
            p.grad = None
        total = {k: fwd_bwd[k] + gemm[k] for k in fwd_bwd}
        return total, f.numpy(), np.zeros(len(enc), np.float32), {"fwd_bwd": fwd_bwd, "gemm": gemm}

    def engine(projection):
        def run():
            eng = GradientEngine(model, projection=projection, params=cfg["params"], dim=cfg["dim"], seed=0,
                                 factor_dim=args.factor_dim)
            t0 = _clock()
            rows = list(eng.run(batches))
            secs = _since(t0)
            return (secs, torch.cat([r[1] for r in rows]).numpy(), torch.cat([r[2] for r in rows]).numpy(),
                    {"out_dim": eng.out_dim})

        return run

    return {"official": official, "floor": floor, "ours": engine("rademacher"), "ours-factored": engine("factored"),
            "exact": engine("none")}


def child(setting: str, work: Path, args) -> None:
    """One setting: every implementation ``--repeat`` times, interleaved, in this process."""
    import torch

    torch.set_num_threads(args.threads)
    loaded, model, enc = _load(work)
    impls = _impls(setting, model, loaded, enc, args)
    runs: dict[str, list] = {k: [] for k in IMPLS}
    for rep in range(args.repeat):
        for name in IMPLS:
            with _RssPeak() as mem:
                secs, f, nr, extra = impls[name]()
            runs[name].append({**secs, "extra_rss_bytes": mem.extra, **extra})
            if rep == 0:
                np.save(work / f"{setting}-{name}.npy", f)
                np.save(work / f"{setting}-{name}_norms.npy", nr)
    _, f, nr, _ = impls["exact"]()  # not timed: the unprojected gradients, for the agreement figures
    np.save(work / f"{setting}-exact.npy", f)
    from vlselect.features.gradients import GradientEngine

    eng = GradientEngine(model, projection="none", params=SETTINGS[setting]["params"])
    print(json.dumps({"runs": runs, "n": len(enc), "num_params": eng.num_params, "peak_rss_bytes": _peak_rss_bytes()}))


IMPLS = ("official", "floor", "ours", "ours-factored")


def _spearman_of_influence(a: np.ndarray, b: np.ndarray, n_train: int) -> float:
    """Spearman correlation between the train x val cosine matrices of two featurisations of the same samples."""
    from scipy.stats import spearmanr

    def cos(x):
        x = x.astype(np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return (x[:n_train] @ x[n_train:].T).ravel()

    return float(spearmanr(cos(a), cos(b)).statistic)


def _run_child(setting, work, passthrough):
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, *passthrough, "--child", setting, "--work", str(work)],
                         check=True, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["child_s"] = time.perf_counter() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="samples")
    ap.add_argument("--settings", default="tive,icons", help="comma-separated: tive, icons")
    ap.add_argument("--family", default="llava", choices=["llava", "qwen2-vl"])
    ap.add_argument("--size", default="xs", choices=["xs", "s"])
    ap.add_argument("--model", default=None, help="use this model directory instead of building a tiny one")
    ap.add_argument("--r", type=int, default=8, help="LoRA rank")
    ap.add_argument("--batch-size", type=int, default=32, help="ours and the floor: samples per backward")
    ap.add_argument("--factor-dim", type=int, default=None,
                    help="per-side dimension of the factored sketch (default: the LoRA rank)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of every implementation; medians")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.factor_dim is None:
        args.factor_dim = args.r
    if args.child:
        child(args.child, Path(args.work), args)
        return
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        if s not in SETTINGS:
            ap.error(f"--settings: {s!r} is not one of {', '.join(SETTINGS)}")
    passthrough = list(sys.argv[1:])
    med = lambda xs: float(np.median(xs))  # noqa: E731
    report = {}
    with tempfile.TemporaryDirectory(prefix="vlselect-bench-grad-") as tmp:
        work = Path(tmp)
        _setup(work, args)
        for setting in settings:
            res = _run_child(setting, work, passthrough)
            ours = np.load(work / f"{setting}-ours.npy")
            off = np.load(work / f"{setting}-official.npy")
            fac = np.load(work / f"{setting}-ours-factored.npy")
            exact = np.load(work / f"{setting}-exact.npy")
            n_train = (3 * len(ours)) // 4
            res.update({
                "max_abs_diff_official": float(np.abs(off - ours).max()), "max_abs_official": float(np.abs(off).max()),
                "max_norm_diff": float(np.abs(np.load(work / f"{setting}-official_norms.npy")
                                              - np.load(work / f"{setting}-ours_norms.npy")).max()),
                "factored_norm_rel_diff": float(np.max(np.abs(np.load(work / f"{setting}-ours-factored_norms.npy")
                                                              - np.load(work / f"{setting}-ours_norms.npy"))
                                                       / np.load(work / f"{setting}-ours_norms.npy"))),
                "spearman_dense_exact": _spearman_of_influence(ours, exact, n_train),
                "spearman_factored_exact": _spearman_of_influence(fac, exact, n_train),
                "spearman_factored_dense": _spearman_of_influence(fac, ours, n_train),
                "n_train": n_train,
            })
            report[setting] = res
    for setting in settings:
        r = report[setting]
        runs = r["runs"]
        cfg = SETTINGS[setting]
        print(f"\n{setting.upper()} setting: per-sample LoRA gradients ({cfg['params']}, {r['num_params']:,} parameters) "
              f"-> {cfg['dim']}-d Rademacher; tiny {args.family} ({args.size}), LoRA r={args.r}, {r['n']} samples, "
              f"batch {args.batch_size}, {args.threads} torch thread(s); medians of {args.repeat} interleaved runs in "
              f"one process (whole child process: {r['child_s']:.0f} s, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MB)")
        fb = [x["fwd_bwd"]["cpu_s"] for x in runs["floor"]]
        gm = [x["gemm"]["cpu_s"] for x in runs["floor"]]
        print(f"  floor = plain batched forward+backward {med(fb):.3f} s + one projection GEMM {med(gm):.3f} s "
              f"= {med([x['cpu_s'] for x in runs['floor']]):.3f} s (CPU)")
        fac_dim = runs["ours-factored"][0]["out_dim"]
        labels = {"official": f"official (1 sample/backward, project every {cfg['every']})",
                  "floor": "floor (fwd+bwd + one GEMM, R in memory)",
                  "ours": f"ours dense (batch {args.batch_size}, hooks)",
                  "ours-factored": f"ours factored (f={args.factor_dim}, {fac_dim}-d; other sketch)"}
        print(f"  {'implementation':<48} {'CPU s':>8} {'wall s':>8} {'extra RSS':>10} {'/ floor':>8} {'/ fwd+bwd':>9} "
              f"{'official /':>10}")
        r["medians"] = {}
        for impl in IMPLS:
            cpu = [x["cpu_s"] for x in runs[impl]]
            wall = [x["wall_s"] for x in runs[impl]]
            vs_floor = med([a["cpu_s"] / f["cpu_s"] for a, f in zip(runs[impl], runs["floor"])])
            vs_fb = med([a["cpu_s"] / f["fwd_bwd"]["cpu_s"] for a, f in zip(runs[impl], runs["floor"])])
            speedup = med([f["cpu_s"] / a["cpu_s"] for a, f in zip(runs[impl], runs["official"])])
            extra = max(x["extra_rss_bytes"] for x in runs[impl])
            r["medians"][impl] = {"cpu_s": med(cpu), "wall_s": med(wall), "vs_floor": vs_floor, "vs_fwd_bwd": vs_fb,
                                  "official_over": speedup, "extra_rss_mb": extra / 2**20}
            print(f"  {labels[impl]:<48} {med(cpu):>8.3f} {med(wall):>8.3f} {extra / 2**20:>8.0f}MB {vs_floor:>7.2f}x "
                  f"{vs_fb:>8.2f}x {speedup:>9.1f}x")
        print(f"  ours dense vs official: max |difference| {r['max_abs_diff_official']:.3g} (max |value| "
              f"{r['max_abs_official']:.3g}); max |norm difference| {r['max_norm_diff']:.3g}; factored norms vs "
              f"dense: max relative difference {r['factored_norm_rel_diff']:.2g}")
        print(f"  influence agreement (Spearman of train x val cosines, {r['n_train']} x {r['n'] - r['n_train']} "
              f"pairs): dense sketch vs exact {r['spearman_dense_exact']:.4f}; factored vs exact "
              f"{r['spearman_factored_exact']:.4f}; factored vs dense {r['spearman_factored_dense']:.4f}")
        print("  per-run CPU seconds: " + "; ".join(f"{i} " + ", ".join(f"{x['cpu_s']:.2f}" for x in runs[i])
                                                  for i in IMPLS))
    print(json.dumps({s: {k: v for k, v in report[s].items() if k != "runs"} for s in settings}))


if __name__ == "__main__":
    main()
