#!/usr/bin/env python
"""What the language model is shown of each object: linear probes of a foundation's image tokens (issue 12).

The full pool learns four of the nine evaluation sets; the five others (existence, counting by colour, multiple
choice, OCR, grounding) need an object's shape told apart, or a question matched against the picture. This script
asks the vision side alone: for every object of ``--scenes`` held-out scenes (the evaluation sets' kind: 1-4
objects, no trivially easy one), the image tokens of its grid cell after the projector (what the language model
reads; at 24 px one token per cell, at 48 px the cell's 2 x 2 tokens side by side) are given to a linear classifier
(multinomial logistic regression, trained on 70% of the scenes, scored on the other 30%) of the object's shape,
colour and size. Beside each foundation the same classifier reads the cell's **pixels** at that picture size: what
a picture of that size holds at all. An empty cell is a class of its own ("none"), as "is there a ..." needs it.

    python benchmarks/vision_probe.py                                    # the shipped foundation
    python benchmarks/vision_probe.py --model A --model B --json out.json

One process, the threads torch chooses; a minute or two per foundation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def cells_of(image_size: int) -> list[list[int]]:
    """The patch indices (row-major, 8 px patches) of each of the 3 x 3 grid cells at ``image_size`` px."""
    n = image_size // 8
    if n % 3:
        raise SystemExit(f"{image_size} px: the 3 x 3 grid does not fall on whole 8 px patches (use 24, 48, 72 ...)")
    k = n // 3
    return [[(r * k + i) * n + c * k + j for i in range(k) for j in range(k)] for r in range(3) for c in range(3)]


def scenes(n: int, seed: int):
    from vlselect.world.scene import is_easy, sample_scene

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        sc = sample_scene(rng)
        if not is_easy(sc):
            out.append((sc, int(rng.integers(0, 1 << 30))))
    return out


def labels(scs) -> dict[str, np.ndarray]:
    """Per (scene, cell): shape, colour and size of the object there, or "none"."""
    lab: dict[str, list[str]] = {"shape": [], "colour": [], "size": []}
    for sc, _ in scs:
        for cell in range(9):
            o = sc.at(cell)
            lab["shape"].append(o.shape if o else "none")
            lab["colour"].append(o.color if o else "none")
            lab["size"].append(o.size if o else "none")
    return {k: np.array(v) for k, v in lab.items()}


def pictures(scs, image_size: int) -> np.ndarray:
    from vlselect.world.scene import render

    return np.stack([render(sc, variant, image_size) for sc, variant in scs])


def pixel_features(pics: np.ndarray) -> np.ndarray:
    """(scenes * 9, cell pixels * 3): each cell's raw pixels."""
    n, S = pics.shape[0], pics.shape[1]
    c = S // 3
    cells = [pics[:, r * c:(r + 1) * c, col * c:(col + 1) * c].reshape(n, -1) for r in range(3) for col in range(3)]
    return np.stack(cells, axis=1).reshape(n * 9, -1).astype(np.float32)


def token_features(model_dir: str, pics: np.ndarray, batch: int = 256) -> tuple[np.ndarray, int]:
    """(scenes * 9, tokens per cell * hidden): each cell's image tokens after the projector."""
    import torch
    from PIL import Image

    from vlselect.models import load_vlm

    loaded = load_vlm(model_dir, device="cpu")
    model, proc = loaded.model, loaded.processor
    side = int(model.config.vision_config.image_size)
    if side != pics.shape[1]:
        raise SystemExit(f"{model_dir}: the model sees {side} px pictures, not {pics.shape[1]}")
    groups = cells_of(side)
    feats = []
    with torch.no_grad():
        for i in range(0, len(pics), batch):
            pv = proc.image_processor([Image.fromarray(p) for p in pics[i:i + batch]], return_tensors="pt")
            out = model.model.get_image_features(pixel_values=pv["pixel_values"].to(model.dtype),
                                                 vision_feature_layer=model.config.vision_feature_layer,
                                                 vision_feature_select_strategy=model.config.vision_feature_select_strategy)
            tok = out if isinstance(out, torch.Tensor) else getattr(out, "pooler_output", out)
            if isinstance(tok, (list, tuple)):
                tok = torch.stack(list(tok))
            tok = tok.reshape(len(pics[i:i + batch]), -1, tok.shape[-1])  # (b, patches, hidden)
            if tok.shape[1] != (side // 8) ** 2:
                raise SystemExit(f"{model_dir}: {tok.shape[1]} image tokens, expected {(side // 8) ** 2}")
            feats.append(torch.stack([tok[:, g, :].reshape(tok.shape[0], -1) for g in groups], 1).float().numpy())
    f = np.concatenate(feats)
    return f.reshape(f.shape[0] * 9, -1), side


def probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, seed: int = 0, steps: int = 400) -> float:
    """Accuracy on the rows not in ``train`` of a multinomial logistic regression (L2 1e-4, Adam, full batch)."""
    import torch

    classes, yi = np.unique(y, return_inverse=True)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    xs = torch.tensor((x - mu) / sd)
    yt = torch.tensor(yi)
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], len(classes))
    with torch.no_grad():
        lin.weight.normal_(0, 0.01, generator=g)
        lin.bias.zero_()
    opt = torch.optim.Adam(lin.parameters(), lr=0.05, weight_decay=1e-4)
    tr = torch.tensor(train)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xs[tr]), yt[tr])
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = lin(xs[~tr]).argmax(1)
    return float((pred == yt[~tr]).float().mean()) * 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None, help="a foundation (or any LLaVA) directory; repeat")
    ap.add_argument("--scenes", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=20261205)
    ap.add_argument("--json", default=None, help="write the table here as JSON")
    args = ap.parse_args()
    if not args.model:
        from vlselect.models.foundation import foundation_path

        args.model = [str(foundation_path())]
    t0 = time.time()
    scs = scenes(args.scenes, args.seed)
    lab = labels(scs)
    rows_per_scene = 9
    split = np.random.default_rng(args.seed + 1).random(len(scs)) < 0.7
    train = np.repeat(split, rows_per_scene)
    objects = lab["shape"] != "none"
    print(f"{len(scs)} scenes, {int(objects.sum())} objects, {int((~objects).sum())} empty cells; "
          f"train {int(split.sum())} scenes, test {int((~split).sum())}")
    chance = {k: max(np.mean(v[~train] == c) for c in np.unique(v)) * 100 for k, v in lab.items()}
    table = []
    pics_by_side: dict[int, np.ndarray] = {}
    for m in args.model:
        info = json.loads((Path(m) / "config.json").read_text())
        side = int(info["vision_config"]["image_size"])
        if side not in pics_by_side:
            pics_by_side[side] = pictures(scs, side)
            px = pixel_features(pics_by_side[side])
            row = {"features": f"pixels, {side} px", "dims": px.shape[1]}
            for k, y in lab.items():
                row[k] = probe(px, y, train)
                row[f"{k}_objects"] = probe(px[objects], y[objects], train[objects])
            table.append(row)
        feats, _ = token_features(m, pics_by_side[side])
        row = {"features": f"image tokens of {m}", "dims": feats.shape[1]}
        for k, y in lab.items():
            row[k] = probe(feats, y, train)
            row[f"{k}_objects"] = probe(feats[objects], y[objects], train[objects])
        table.append(row)
    print(f"\nheld-out accuracy (%) of a linear probe per grid cell; 'all cells' counts an empty cell as the class "
          f"'none', 'objects' only the cells that hold one")
    print(f"{'features':60s} {'dims':>5s} | {'shape all/objects':>17s} | {'colour all/objects':>18s} | "
          f"{'size all/objects':>16s}")
    objs_test = objects & ~train
    chance_obj = {k: max(np.mean(v[objs_test] == c) for c in np.unique(v[objs_test])) * 100 for k, v in lab.items()}
    print(f"{'majority class':60s} {'':>5s} | {chance['shape']:7.1f} / {chance_obj['shape']:5.1f}   | "
          f"{chance['colour']:7.1f} / {chance_obj['colour']:5.1f}    | {chance['size']:7.1f} / {chance_obj['size']:5.1f}")
    for r in table:
        print(f"{r['features'][-60:]:60s} {r['dims']:5d} | {r['shape']:7.1f} / {r['shape_objects']:5.1f}   | "
              f"{r['colour']:7.1f} / {r['colour_objects']:5.1f}    | {r['size']:7.1f} / {r['size_objects']:5.1f}")
    print(f"\nwhole command {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"scenes": len(scs), "seed": args.seed, "chance": chance,
                                               "chance_objects": chance_obj, "rows": table}, indent=1))


if __name__ == "__main__":
    main()
