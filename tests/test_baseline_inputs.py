"""The baselines' real inputs (issue 13 item 6; coincide.md §7.1, §7.3, §7.4): SemDeDup's last-token embedding,
D2-Pruning's mean embedding and probability margin, the training-dynamics AUM, and their wiring into
``vlselect select`` and the bench."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_models import make_samples, tiny_llava, tiny_qwen2vl, write_pool  # noqa: F401

from vlselect.cli import main
from vlselect.features import FeatureStore
from vlselect.models import encode_sample, load_vlm


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    cap = capsys.readouterr()
    return code, " ".join((cap.out + cap.err).split())


@pytest.fixture(scope="module")
def pool6(tmp_path_factory):
    return write_pool(tmp_path_factory.mktemp("pool6"), n=6)


def _by_hand(loaded, sample, images):
    """One sample alone (no padding): the last hidden state from ``output_hidden_states=True``, its last row and
    mean, and the answer-token probability margin worked out from the sorted probabilities in NumPy."""
    enc = encode_sample(loaded, sample, images)
    inputs = {k: (v if k in ("pixel_values", "image_grid_thw") else v.unsqueeze(0)) for k, v in enc.items()
              if k not in ("labels", "image_mask", "text_mask")}
    with torch.no_grad():
        res = loaded.model(**inputs, output_hidden_states=True)
    h = res.hidden_states[-1][0].double().numpy()  # (T, H)
    logits = res.logits[0].double().numpy()
    labels = enc["labels"].numpy()
    margins = []
    for t in range(len(labels) - 1):
        y = labels[t + 1]
        if y == -100:
            continue
        p = np.exp(logits[t] - logits[t].max())
        p /= p.sum()
        top2 = np.sort(p)[-2:]
        best_other = top2[0] if np.argmax(p) == y else top2[1]
        margins.append(p[y] - best_other)
    return h[-1], h.mean(axis=0), float(np.mean(margins))


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_cli_embeddings_equal_the_hidden_state_of_a_lone_forward(family, tiny_llava, tiny_qwen2vl, pool6,  # noqa: F811
                                                                 tmp_path, capsys):
    model = tiny_llava if family == "llava" else tiny_qwen2vl
    pool, images = pool6
    out = tmp_path / "emb"
    code, text = _run(["features", "activations", "--model", str(model), "--pool", str(pool), "--images",
                       str(images), "--out", str(out), "--embeddings", "--batch-size", "3", "--shard-size", "4",
                       "--quiet"], capsys)
    assert code == 0, text
    st = FeatureStore.open(out)
    assert {"activations", "has_image", "embed_last", "embed_mean", "margin"} <= set(st.names())
    assert st.manifest["embeddings"] is True
    loaded = load_vlm(model, device="cpu")
    H = loaded.model.config.get_text_config().hidden_size
    last, mean, margin = st.array("embed_last"), st.array("embed_mean"), st.array("margin")
    assert last.shape == mean.shape == (6, H) and last.dtype == np.float16 and margin.shape == (6,)
    for i, s in enumerate(make_samples(6)):  # batches of 3 rows of different lengths: padding must not leak in
        ref_last, ref_mean, ref_margin = _by_hand(loaded, s, images)
        np.testing.assert_allclose(last[i].astype(np.float64), ref_last, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(mean[i].astype(np.float64), ref_mean, rtol=2e-3, atol=2e-3)
        assert margin[i] == pytest.approx(ref_margin, abs=1e-5)
    assert not np.allclose(last.astype(np.float32), mean.astype(np.float32), atol=1e-2)  # two different poolings
