"""Benchmark: ``vlselect pool stats`` on a generated 1 M-record LLaVA-style JSONL (issue 2: within 2 GB of memory).

Generates the file in a temporary folder (a 665K-like mix: LLaVA-Instruct dialogues, VQA with the short-answer
prompt, GQA, OCR-VQA, TextCaps, VG regions, A-OKVQA, RefCOCO, text-only ShareGPT), runs
``vlselect pool stats FILE --json`` in a subprocess, and prints its wall time, CPU time (user + system: the fair
number on a shared machine) and peak RSS.

    .venv/bin/python benchmarks/pool_1m.py [--n 1000000] [--seed 0] [--keep DIR] [--format json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHORT = "Answer the question using a single word or phrase."
MC = "Answer with the option's letter from the given choices directly."
WORDS = ("red blue green cube sphere cone small large left right top bottom person car tree sign book table "
         "window street dog cat bus train plate food shirt player clock").split()  # fmt: skip


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize()


def make_record(i: int, rng: random.Random) -> dict:
    kind = rng.choices(range(9), weights=[158, 40, 83, 72, 80, 22, 86, 66, 48])[0]
    cid = f"{rng.randint(1, 581929):012d}"
    if kind == 0:  # LLaVA-Instruct, multi-turn
        turns = []
        for t in range(rng.randint(1, 5)):
            q = _sentence(rng, 5, 15) + "?"
            turns += [{"from": "human", "value": ("<image>\n" if t == 0 else "") + q},
                      {"from": "gpt", "value": _sentence(rng, 20, 120) + "."}]  # fmt: skip
        return {"id": cid, "image": f"coco/train2017/{cid}.jpg", "conversations": turns}
    if kind == 1:  # ShareGPT, text-only
        turns = []
        for _ in range(rng.randint(1, 6)):
            turns += [{"from": "human", "value": _sentence(rng, 5, 60)},
                      {"from": "gpt", "value": _sentence(rng, 30, 300)}]  # fmt: skip
        return {"id": f"sg{i}_0", "model": "", "conversations": turns}
    if kind in (2, 3, 4):
        folder = {2: f"coco/train2017/{cid}.jpg", 3: f"gqa/images/{i}.jpg", 4: f"ocr_vqa/images/{i}.jpg"}[kind]
        turns = []
        for t in range(rng.randint(1, 4)):
            q = _sentence(rng, 3, 10) + f"?\n{SHORT}"
            turns += [{"from": "human", "value": ("<image>\n" if t == 0 else "") + q},
                      {"from": "gpt", "value": rng.choice(WORDS)}]  # fmt: skip
        return {"id": str(i) if kind != 2 else cid, "image": folder, "conversations": turns}
    if kind == 5:
        return {"id": f"{i:016x}", "image": f"textvqa/train_images/{i:016x}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nProvide a one-sentence caption for the provided image."},
            {"from": "gpt", "value": _sentence(rng, 6, 20) + "."}]}  # fmt: skip
    box = ", ".join(f"{rng.random():.2f}" for _ in range(4))
    if kind == 6:
        return {"id": f"vg{i}", "image": f"vg/VG_100K/{i}.jpg", "conversations": [
            {"from": "human", "value": f"<image>\nPlease provide a short description for this region: [{box}]"},
            {"from": "gpt", "value": _sentence(rng, 2, 8)}]}  # fmt: skip
    if kind == 7:
        opts = "\n".join(f"{c}. {rng.choice(WORDS)}" for c in "ABCD")
        return {"id": cid, "image": f"coco/train2017/{cid}.jpg", "conversations": [
            {"from": "human", "value": f"<image>\n{_sentence(rng, 4, 10)}?\n{opts}\n{MC}"},
            {"from": "gpt", "value": rng.choice("ABCD")}]}  # fmt: skip
    return {"id": cid, "image": f"coco/train2017/{cid}.jpg", "conversations": [
        {"from": "human", "value": "<image>\nPlease provide the bounding box coordinate of the region this sentence "
                                   f"describes: {_sentence(rng, 2, 6)}."},
        {"from": "gpt", "value": f"[{box}]"}]}  # fmt: skip


def generate(path: Path, n: int, seed: int, fmt: str) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as f:
        if fmt == "json":
            f.write("[\n")
        for i in range(n):
            r = make_record(i, rng)
            r["id"] = f"{r['id']}-{i}"  # unique ids
            if fmt == "json":
                f.write(("    " if i == 0 else ",\n    ") + json.dumps(r))
            else:
                f.write(json.dumps(r) + "\n")
        if fmt == "json":
            f.write("\n]\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=["jsonl", "json"], default="jsonl")
    ap.add_argument("--keep", type=Path, default=None, help="write the file here and keep it")
    args = ap.parse_args()
    tmp = None
    if args.keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="vlselect-pool-1m-")
        folder = Path(tmp.name)
    else:
        folder = args.keep
        folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"pool_{args.n}.{args.format}"
    t0 = time.perf_counter()
    if not path.exists():
        generate(path, args.n, args.seed, args.format)
    gen_s = time.perf_counter() - t0
    exe = Path(sys.executable).with_name("vlselect")
    cmd = [str(exe), "pool", "stats", str(path), "--json"] if exe.exists() else [
        sys.executable, "-c", "from vlselect.cli import main; main()", "pool", "stats", str(path), "--json"]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kib, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    if res.returncode != 0:
        sys.exit(f"pool stats failed ({res.returncode}):\n{res.stderr}")
    st = json.loads(res.stdout)
    print(f"file: {path.name}, {os.path.getsize(path) / 2**20:,.0f} MiB, {st['records']:,} records "
          f"(generated in {gen_s:.1f} s)")  # fmt: skip
    print("tasks: " + ", ".join(f"{t['task']} {t['count']:,}" for t in st["tasks"]))
    print(f"vlselect pool stats: wall {wall:.1f} s, CPU {cpu:.1f} s, peak RSS {peak_kib / 1024:,.0f} MiB "
          f"({'within' if peak_kib < 2 * 2**20 else 'OVER'} the 2 GB limit)")  # fmt: skip
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
