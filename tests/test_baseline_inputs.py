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


def _by_hand(loaded, sample, images, logits_margin=False):
    """One sample alone (no padding): the last hidden state from ``output_hidden_states=True``, its last row and
    mean, and the answer-token probability margin worked out from the sorted probabilities in NumPy (with
    ``logits=True`` the logit margin instead)."""
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
        p = logits[t].copy() if logits_margin else np.exp(logits[t] - logits[t].max())
        p /= 1.0 if logits_margin else p.sum()
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


# ------------------------------------------------------------------------------------ margins and AUM by hand

# two rows, three positions, a vocabulary of three; labels after the causal shift: row 0 supervises positions
# 0 (target 2) and 1 (target 0), row 1 only position 1 (target 1); the 9s must be ignored
_LOGITS = torch.tensor([[[1.0, 3.0, 2.0], [4.0, 0.5, 1.0], [9.0, 9.0, 9.0]],
                        [[9.0, 0.0, 0.0], [0.0, 2.5, 2.0], [0.0, 9.0, 0.0]]])
_LABELS = torch.tensor([[-100, 2, 0], [-100, -100, 1]])


def test_margins_on_hand_made_logits():
    from vlselect.features.embeddings import margins_per_sample

    logit = margins_per_sample(_LOGITS, _LABELS, probabilities=False).tolist()
    # row 0: (2 - 3) and (4 - 1) → mean 1.0; row 1: 2.5 - 2.0 = 0.5
    assert logit == pytest.approx([1.0, 0.5])
    prob = margins_per_sample(_LOGITS, _LABELS, probabilities=True).tolist()
    # row 1: softmax(0, 2.5, 2) = (1, 12.182494, 7.389056) / 20.571550 → 0.592202 - 0.359189
    assert prob[1] == pytest.approx(0.233013, abs=1e-6)
    # row 0: position 0 softmax(1, 3, 2): p2 - p1 = (7.389056 - 20.085537) / 30.192875 = -0.420512;
    # position 1 softmax(4, 0.5, 1): p0 - p2 = (54.598150 - 2.718282) / 58.965153 = 0.879839
    assert prob[0] == pytest.approx((-0.420512 + 0.879839) / 2, abs=1e-6)
    empty = margins_per_sample(_LOGITS[:1], torch.full((1, 3), -100), probabilities=False)
    assert np.isnan(empty.numpy()).all()


def test_aum_recorder_averages_over_the_steps_that_saw_a_row(tmp_path):
    from vlselect.errors import FeatureError
    from vlselect.features.dynamics import MarginRecorder, aggregate_aum

    rec = MarginRecorder(tmp_path / "steps")
    rec(1, [3, 5], _LOGITS, _LABELS, False)  # step 1, first micro-batch: row 3 → 1.0, row 5 → 0.5
    rec(1, [0], _LOGITS[:1], torch.full((1, 3), -100), True)  # row 0 has no answer token: not counted
    assert [f.name for f in (tmp_path / "steps").iterdir()] == ["step-0000001-rank0.npz"]
    rec(2, [5, 0], _LOGITS, _LABELS, True)  # step 2: row 5 → 1.0, row 0 → 0.5
    aum, count = aggregate_aum(tmp_path / "steps", 6, 2)
    assert count.tolist() == [1, 0, 0, 1, 0, 2]
    np.testing.assert_allclose(aum, [0.5, np.nan, np.nan, 1.0, np.nan, 0.75])
    with pytest.raises(FeatureError, match="1 of 3 steps were not recorded .*step 3.*--no-resume"):
        aggregate_aum(tmp_path / "steps", 6, 3)
    with pytest.raises(FeatureError, match="row 5 is outside the pool of 4 rows"):
        aggregate_aum(tmp_path / "steps", 4, 2)


# ------------------------------------------------------------------------ AUM recorded during a training run

_TRAIN = dict(adapter="lora", r=4, lora_alpha=8, lora_dropout=0.0, lr=1e-3, epochs=2, batch_size=2, grad_accum=1,
              warmup_ratio=0.03, schedule="cosine", seed=0, gradient_checkpointing=False, bf16=False, progress=False)


@pytest.fixture(scope="module")
def dyn_run(tiny_llava, pool6, tmp_path_factory):  # noqa: F811
    """``vlselect train --record-dynamics`` on the 6-row pool: 2 epochs of 3 steps."""
    pool, images = pool6
    out = tmp_path_factory.mktemp("dyn") / "run"
    argv = ["train", "--model", str(tiny_llava), "--pool", str(pool), "--images", str(images), "--out", str(out),
            "--r", "4", "--lora-alpha", "8", "--lora-dropout", "0", "--lr", "1e-3", "--epochs", "2",
            "--batch-size", "2", "--no-gradient-checkpointing", "--bf16", "no", "--no-progress",
            "--record-dynamics"]
    try:
        main(argv)
    except SystemExit as exc:
        assert not exc.code, exc.code
    return out


def test_train_record_dynamics_writes_the_aum_store(dyn_run, tiny_llava, pool6):  # noqa: F811
    st = FeatureStore.open(dyn_run / "aum")
    assert st.manifest["kind"] == "training-dynamics" and st.manifest["total_steps"] == 6
    assert st.array("aum_count").tolist() == [2] * 6  # every row once per epoch
    assert st.sample_ids() == [f"s{i}" for i in range(6)] and not st.missing().any()
    # the first step runs the untrained model (LoRA B = 0, no dropout): its margins are the base model's logit
    # margins, worked out from a lone forward pass of each row
    loaded = load_vlm(tiny_llava, device="cpu")
    samples = make_samples(6)
    with np.load(dyn_run / "aum-steps" / "step-0000001-rank0.npz") as z:
        rows, margins = z["rows"].tolist(), z["margins"]
    assert len(rows) == 2
    for r, m in zip(rows, margins):
        assert m == pytest.approx(_by_hand(loaded, samples[r], pool6[1], logits_margin=True)[2], abs=1e-4)
    # AUM is the mean of the recorded step margins of each row (hand-checked above); here: it moved with training
    aum = st.array("aum")
    assert np.isfinite(aum).all() and not np.allclose(aum[rows], margins, atol=1e-3)


def test_aum_is_identical_after_an_interrupted_and_resumed_run(dyn_run, tiny_llava, pool6, tmp_path):  # noqa: F811
    from vlselect.errors import FeatureError
    from vlselect.features.dynamics import train_with_dynamics

    pool, images = pool6
    res, store = train_with_dynamics(tiny_llava, pool, images, tmp_path / "run", stop_after_steps=2, **_TRAIN)
    assert store is None and res.steps == 2
    res, store = train_with_dynamics(tiny_llava, pool, images, tmp_path / "run", **_TRAIN)
    assert res.steps == 6
    np.testing.assert_array_equal(FeatureStore.open(store).array("aum"),
                                  FeatureStore.open(dyn_run / "aum").array("aum"))
    # a finished run whose steps were not all recorded (e.g. trained before without --record-dynamics) is refused
    import shutil

    shutil.rmtree(store)
    (tmp_path / "run" / "aum-steps" / "step-0000002-rank0.npz").unlink()
    with pytest.raises(FeatureError, match="1 of 6 steps were not recorded .*step 2"):
        train_with_dynamics(tiny_llava, pool, images, tmp_path / "run", **_TRAIN)


# ------------------------------------------------------------------------------ select and bench wiring


@pytest.fixture(scope="module")
def emb_store(tiny_llava, pool6, tmp_path_factory):  # noqa: F811
    from vlselect.features.activations import extract_activations

    pool, images = pool6
    out = tmp_path_factory.mktemp("emb") / "store"
    extract_activations(tiny_llava, pool, out, images=images, embeddings=True, losses=True, progress=False)
    return out


def test_select_reads_each_baselines_own_arrays(emb_store, dyn_run, pool6, tmp_path, capsys):
    from vlselect.select import run_method

    pool, _ = pool6
    emb = FeatureStore.open(emb_store)
    aum = FeatureStore.open(dyn_run / "aum").array("aum")
    code, text = _run(["select", "semdedup", "--input", f"features={emb_store}", "--pool", str(pool), "--budget",
                       "4", "--param", "n_clusters=2", "--out", str(tmp_path / "sd")], capsys)
    assert code == 0, text
    m = json.loads((tmp_path / "sd" / "manifest.json").read_text())
    assert m["extra"]["inputs"]["features"]["array"] == "embed_last"
    (ref,) = run_method("semdedup", {"features": emb.array("embed_last")}, 4, params={"n_clusters": 2})
    assert np.load(tmp_path / "sd" / "indices.npy").tolist() == ref.indices.tolist()

    code, text = _run(["select", "d2pruning", "--input", f"features={emb_store}", "--input",
                       f"scores={dyn_run / 'aum'}", "--pool", str(pool), "--budget", "3", "--param",
                       "n_neighbors=2", "--out", str(tmp_path / "d2")], capsys)
    assert code == 0, text
    m = json.loads((tmp_path / "d2" / "manifest.json").read_text())
    assert m["extra"]["inputs"]["features"]["array"] == "embed_mean"
    assert m["extra"]["inputs"]["scores"]["array"] == "aum"
    (ref,) = run_method("d2pruning", {"features": emb.array("embed_mean"), "scores": aum}, 3,
                        params={"n_neighbors": 2})
    assert np.load(tmp_path / "d2" / "indices.npy").tolist() == ref.indices.tolist()
    # the one-checkpoint margin (score_aum.py) from the embeddings store when no AUM is given
    code, text = _run(["select", "d2pruning", "--input", f"features={emb_store}", "--input",
                       f"scores={emb_store}", "--pool", str(pool), "--budget", "3", "--param", "n_neighbors=2",
                       "--out", str(tmp_path / "d2m")], capsys)
    assert code == 0, text
    m = json.loads((tmp_path / "d2m" / "manifest.json").read_text())
    assert m["extra"]["inputs"]["scores"]["array"] == "margin"
    (ref,) = run_method("d2pruning", {"features": emb.array("embed_mean"), "scores": emb.array("margin")}, 3,
                        params={"n_neighbors": 2})
    assert np.load(tmp_path / "d2m" / "indices.npy").tolist() == ref.indices.tolist()


def test_select_refuses_a_store_without_the_baselines_array(dyn_run, pool6, tmp_path, capsys):
    pool, _ = pool6
    code, text = _run(["select", "semdedup", "--input", f"features={dyn_run / 'aum'}", "--pool", str(pool),
                       "--budget", "4", "--param", "n_clusters=2", "--out", str(tmp_path / "x")], capsys)
    assert code == 2
    assert "reads array 'embed_last' for role 'features'" in text and "it has: aum, aum_count" in text
    assert f"features={dyn_run / 'aum'}:NAME" in text


def test_select_list_names_the_store_arrays(capsys):
    code, text = _run(["select", "--list"], capsys)
    assert code == 0
    assert "store array: embed_last" in text and "store array: aum or margin" in text


def test_bench_feeds_semdedup_and_d2pruning_their_official_inputs(tiny_llava, pool6, tmp_path):  # noqa: F811
    from vlselect.bench.run import BenchConfig, _extract_activations, _method_inputs
    from vlselect.pool import open_pool

    pool, images = pool6
    _extract_activations(tiny_llava, pool, images, tmp_path)  # the bench's activation stage
    acts = FeatureStore.open(tmp_path / "store")
    inputs_for = _method_inputs(acts, None, {}, open_pool(pool), {"num_layers": 3, "hidden_size": 32})
    cfg = BenchConfig.quick(n_clusters=2)
    sd, params = inputs_for("semdedup", cfg)
    assert list(sd) == ["features"] and params == {"n_clusters": 2}
    np.testing.assert_array_equal(sd["features"], acts.array("embed_last"))
    d2, _ = inputs_for("d2pruning", cfg)
    np.testing.assert_array_equal(d2["features"], acts.array("embed_mean"))
    np.testing.assert_array_equal(d2["scores"], acts.array("margin"))
    # the embeddings are the model's last hidden state, not COINCIDE's activations
    loaded = load_vlm(tiny_llava, device="cpu")
    ref_last, ref_mean, ref_margin = _by_hand(loaded, make_samples(6)[4], images)
    np.testing.assert_allclose(sd["features"][4].astype(np.float64), ref_last, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(d2["features"][4].astype(np.float64), ref_mean, rtol=2e-3, atol=2e-3)
    assert d2["scores"][4] == pytest.approx(ref_margin, abs=1e-5)


def test_bench_d2_score_aum_comes_from_a_recorded_training_run(tiny_llava, pool6, tmp_path):  # noqa: F811
    from vlselect.bench import run_bench
    from vlselect.bench.run import BenchConfig, _dynamics, _method_inputs
    from vlselect.errors import ConfigError

    pool, images = pool6
    cfg = BenchConfig.quick(lora_r=4, epochs=1, batch_size=3, lr=1e-3, adapter="lora", modules_to_save=(),
                            d2_score="aum")
    _dynamics(cfg, tiny_llava, pool, images, tmp_path)  # the bench's dynamics stage
    st = FeatureStore.open(tmp_path / "run" / "aum")
    assert st.array("aum_count").tolist() == [1] * 6 and st.manifest["total_steps"] == 2
    aum = st.array("aum")

    class Acts:  # an activation store without a margin array: with the AUM given, none is read
        @staticmethod
        def array(name):
            assert name in ("activations", "embed_mean"), name
            return np.zeros((6, 4), dtype=np.float16)

    d2, _ = _method_inputs(Acts, None, {}, None, {}, None, aum)("d2pruning", cfg)
    assert d2["scores"] is aum
    with pytest.raises(ConfigError, match="d2_score='bogus'"):
        run_bench(tmp_path / "b", BenchConfig.quick(d2_score="bogus"))
