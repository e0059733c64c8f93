"""COINCIDE activations and per-sample losses against a slow by-hand reference; OOM halving; text-only rows
(issue 3; coincide.md §1.4-1.5, §7.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fixtures_models import make_samples, tiny_llava, tiny_pool, tiny_qwen2vl  # noqa: F401

from vlselect.features import activations as act_mod
from vlselect.features.activations import compute_shard, default_layers, forward_with_retry, parse_layers
from vlselect.features.losses import losses_from_logits
from vlselect.models import encode_sample, load_vlm

def _reference(loaded, sample, images, layers):
    """One sample at a time: a plain forward with hooks, windows found by hand, pooling written out."""
    enc = encode_sample(loaded, sample, images)
    ids = enc["input_ids"].tolist()
    tok = loaded.processor.tokenizer
    img_pos = [t for t, i in enumerate(ids) if i == loaded.image_token_id]
    if img_pos:  # after the image; Qwen2-VL's <|vision_end|> marker is not text
        end_marker = tok.convert_tokens_to_ids("<|vision_end|>") if loaded.family == "qwen2-vl" else None
        text_pos = [t for t in range(img_pos[-1] + 1, len(ids)) if ids[t] != end_marker]
    else:
        k = tok.decode(ids).index(sample.conversations[0]["value"])  # where the question's characters start
        start = next(p for p in range(len(ids)) if len(tok.decode(ids[: p + 1])) > k)
        text_pos = list(range(start, len(ids)))
    captured = {}
    dec = loaded.decoder_layers
    hooks = [dec[i].self_attn.o_proj.register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, o[0]))
             for i in layers]
    inputs = {k: (v if k in ("pixel_values", "image_grid_thw") else v.unsqueeze(0)) for k, v in enc.items()
              if k not in ("labels", "image_mask", "text_mask")}
    with torch.no_grad():
        logits = loaded.model(**inputs).logits
    for h in hooks:
        h.remove()
    parts = []
    for i in layers:
        a = captured[i].float()
        for pos in (img_pos, text_pos):
            if not pos:
                parts.append(torch.zeros(a.shape[1]))
                continue
            mean = sum(a[t] for t in pos) / len(pos)
            v = torch.tanh(mean)
            parts.append(v / max(float(torch.sqrt((v * v).sum())), 1e-12) / math.sqrt(2 * len(layers)))
    losses = losses_from_logits(logits.float(), enc["labels"].unsqueeze(0))
    return torch.cat(parts).numpy(), {k: float(v[0]) for k, v in losses.items()}


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_batched_features_match_slow_reference(family, tiny_llava, tiny_qwen2vl, tiny_pool):  # noqa: F811
    loaded = load_vlm(tiny_llava if family == "llava" else tiny_qwen2vl, device="cpu")
    _, images = tiny_pool
    samples = make_samples(3)  # two image rows of different lengths (one multi-turn), one text-only
    layers = default_layers(loaded.num_layers)
    assert layers == [0, 1, 2]
    res = forward_with_retry(loaded, [encode_sample(loaded, s, images) for s in samples], layers, losses=True)
    H = loaded.model.config.get_text_config().hidden_size
    assert res["activations"].shape == (3, 2 * len(layers) * H)
    assert res["has_image"].tolist() == [1, 1, 0]
    for b, s in enumerate(samples):
        ref, ref_losses = _reference(loaded, s, images, layers)
        np.testing.assert_allclose(res["activations"][b], ref, atol=2e-5, rtol=0)
        for k in ("loss", "perplexity", "el2n"):
            assert res[k][b] == pytest.approx(ref_losses[k], rel=1e-4)
    norms = np.linalg.norm(res["activations"], axis=1)
    np.testing.assert_allclose(norms, [1, 1, math.sqrt(0.5)], atol=1e-5)  # text-only: vision half is zeros
    # vision half of the text-only row is exactly zero
    assert not res["activations"][2, :H].any()


def test_layer_mapping():
    assert default_layers(24) == [3, 7, 11, 15, 19]
    assert default_layers(32) == [4, 10, 15, 20, 26]
    assert default_layers(4) == [0, 1, 2]
    assert parse_layers("1,-1", 4) == [1, 3]
    with pytest.raises(Exception, match="layer 7 does not exist"):
        parse_layers("7", 4)


def test_oom_halving_and_batch_size_give_same_features(tiny_llava, tiny_pool, monkeypatch):  # noqa: F811
    import json

    from vlselect.pool import Sample

    loaded = load_vlm(tiny_llava, device="cpu")
    pool_file, images = tiny_pool
    recs = json.loads(pool_file.read_text())
    pool = [Sample(r["id"], [r["image"]] if "image" in r else [], r["conversations"]) for r in recs]
    kw = dict(image_root=images, layers=[0, 2], losses=True, skip_bad=False, hidden_size=32)
    ref, _ = compute_shard(loaded, pool, range(6), batch_size=1, **kw)
    big, _ = compute_shard(loaded, pool, range(6), batch_size=6, **kw)
    monkeypatch.setattr(act_mod, "_TEST_OOM_ABOVE", 1)
    halved, _ = compute_shard(loaded, pool, range(6), batch_size=6, **kw)
    for name in ref:
        np.testing.assert_array_equal(halved[name], ref[name])
        # padding changes only float rounding: equal after the float16 store up to 1 ulp
        np.testing.assert_allclose(big[name].astype(np.float32), ref[name].astype(np.float32), rtol=2e-3, atol=1e-3)
    assert ref["activations"].dtype == np.float16


def test_encoding_workers_give_identical_arrays(tiny_llava, tiny_pool):  # noqa: F811
    import json

    from vlselect.pool import Sample

    loaded = load_vlm(tiny_llava, device="cpu")
    pool_file, images = tiny_pool
    recs = json.loads(pool_file.read_text())
    pool = [Sample(r["id"], [r["image"]] if "image" in r else [], r["conversations"]) for r in recs]
    kw = dict(image_root=images, layers=[1], losses=False, skip_bad=False, hidden_size=32, batch_size=3)
    a, _ = compute_shard(loaded, pool, range(1, 6), **kw)
    b, _ = compute_shard(loaded, pool, range(1, 6), workers=2, **kw)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
