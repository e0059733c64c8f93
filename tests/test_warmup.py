"""Warm-up reference model rules (issue 4; tive.md §1-2, icons.md §1) and the end-to-end warm-up -> gradients path."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from vlselect.errors import ConfigError, PoolError
from vlselect.train.warmup import (
    ICONS_EPOCH_FRACTION,
    RULE_DEFAULTS,
    icons_warmup_step,
    tive_warmup_indices,
    train_warmup,
)


def test_tive_rule_equal_count_per_task_in_first_appearance_order():
    tasks = ["gqa"] * 300 + ["vqa"] * 500 + ["text"] * 200 + ["gqa"] * 100
    idx = tive_warmup_indices(tasks, 0.08, seed=0)
    m = int(1100 * 0.08 / 3)  # 29
    assert idx.size == 3 * m
    labels = [tasks[i] for i in idx]
    assert labels == ["gqa"] * m + ["vqa"] * m + ["text"] * m  # task blocks in first-appearance order
    assert len(set(idx.tolist())) == idx.size  # without replacement
    assert np.array_equal(idx, tive_warmup_indices(tasks, 0.08, seed=0))  # seeded
    assert not np.array_equal(idx, tive_warmup_indices(tasks, 0.08, seed=1))
    # rows of a task come from the whole task, including its rows after other tasks
    many = tive_warmup_indices(tasks, 0.6, seed=0)
    assert any(i >= 1000 for i in many)


def test_tive_rule_small_task_default_and_strict():
    tasks = ["a"] * 500 + ["b"] * 5 + ["c"] * 495
    m = int(1000 * 0.08 / 3)  # 26
    idx = tive_warmup_indices(tasks, 0.08, seed=3)
    c = Counter(tasks[i] for i in idx)
    assert c["b"] == 5 and c["a"] + c["c"] == 3 * m - 5 and abs(c["a"] - c["c"]) <= 1
    assert idx.size == 3 * m
    with pytest.raises(PoolError, match="task 'b' has 5 records, fewer than the 26"):
        tive_warmup_indices(tasks, 0.08, strict_official=True)
    with pytest.raises(PoolError, match="row 1 has no task label"):
        tive_warmup_indices(["a", None, "b"], 0.5)
    with pytest.raises(ConfigError, match="ratio 0"):
        tive_warmup_indices(["a"], 0)


def test_icons_rule_step():
    assert abs(ICONS_EPOCH_FRACTION - 0.0962) < 1e-3
    assert icons_warmup_step(665_298, batch_size=16, world_size=8) == (500, 5198)
    # one GPU, batch 16: the same share of the epoch (same samples seen), not the literal step
    assert icons_warmup_step(665_298, batch_size=16) == (4000, 41582)
    assert icons_warmup_step(665_298, batch_size=16, step=500) == (500, 41582)
    assert icons_warmup_step(40, batch_size=4) == (1, 10)
    with pytest.raises(ConfigError, match="step 11 is outside the run's 1..10"):
        icons_warmup_step(40, batch_size=4, step=11)


def test_rule_defaults_follow_the_specs():
    assert RULE_DEFAULTS["tive"]["lr"] == 2e-5 and RULE_DEFAULTS["icons"]["lr"] == 2e-4
    for d in RULE_DEFAULTS.values():
        assert (d["r"], d["lora_alpha"], d["lora_dropout"], d["epochs"], d["batch_size"]) == (128, 256, 0.05, 1, 16)
        assert d["schedule"] == "cosine" and d["warmup_ratio"] == 0.03


def _write_pool(root: Path, n: int = 8) -> tuple[Path, Path]:
    from PIL import Image

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        Image.new("RGB", (32, 32), ((40 * i) % 256, (70 * i) % 256, 90)).save(images / f"i{i}.png")
        recs.append({"id": f"r{i}", "image": f"i{i}.png", "task": "color" if i % 2 else "shape",
                     "conversations": [{"from": "human", "value": f"<image>\nWhat is in image {i}?"},
                                       {"from": "gpt", "value": ["Red.", "A square.", "Two.", "Blue."][i % 4]}]})
    (root / "pool.json").write_text(json.dumps(recs))
    return root / "pool.json", images


def test_train_warmup_calls_the_trainer_with_the_rule(tmp_path):
    pool, images = _write_pool(tmp_path, 50)
    calls = []

    def fake_train(model_dir, pool, image_root, out_dir, **kw):
        calls.append(kw)
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError):
        train_warmup("m", pool, images, tmp_path / "w", rule="tive", ratio=0.2, r=8, batch_size=2, train_fn=fake_train)
    kw = calls[0]
    assert kw["lr"] == 2e-5 and kw["r"] == 8 and kw["lora_alpha"] == 16 and kw["epochs"] == 1
    assert len(kw["indices"]) == 10 and kw["save_steps"] == [5] and kw["stop_after_steps"] == 5
    assert json.loads((tmp_path / "w" / "warmup_indices.json").read_text()) == kw["indices"]
    subset = json.loads((tmp_path / "w" / "warmup_subset.json").read_text())
    assert [r["id"] for r in subset] == [f"r{i}" for i in kw["indices"]]
    with pytest.raises(RuntimeError):
        train_warmup("m", pool, images, tmp_path / "w2", rule="icons", batch_size=5, train_fn=fake_train)
    kw = calls[1]
    assert kw["indices"] is None and kw["lr"] == 2e-4 and kw["save_steps"] == [1] and kw["stop_after_steps"] == 1
    with pytest.raises(ConfigError, match="rule 'less'"):
        train_warmup("m", pool, images, tmp_path / "w3", rule="less", train_fn=fake_train)


def test_icons_warmup_end_to_end_then_gradients(tmp_path):
    """A real (tiny) ICONS warm-up: the checkpoint at the rule's step becomes a PEFT adapter + Adam state that the
    gradient extractor loads; the adapter holds the trained weights of that step."""
    from vlselect.features.gradients import extract_gradients
    from vlselect.models.tiny import build_tiny

    mdir = build_tiny(tmp_path / "tiny", family="llava", seed=0)
    pool, images = _write_pool(tmp_path, 8)
    res = train_warmup(mdir, pool, images, tmp_path / "warm", rule="icons", r=4, batch_size=2, step=2,
                       progress=False, device="cpu")
    assert (res.step, res.total_steps, res.n_train) == (2, 4, 8)
    assert (res.lora_dir / "adapter_config.json").exists() and res.adam_state is not None
    cp = torch.load(tmp_path / "warm" / "run" / "checkpoint-2" / "trainable.pt")
    from safetensors.torch import load_file

    saved = load_file(str(res.lora_dir / "adapter_model.safetensors"))
    b_names = [n for n in cp if "lora_B" in n]
    assert b_names and all(float(cp[n].abs().max()) > 0 for n in b_names)  # trained for 2 steps
    key = next(k for k in saved if "lora_B" in k)
    src = next(n for n in b_names if n.replace(".default", "").endswith(key.split("base_model.model.")[-1]))
    assert torch.equal(saved[key], cp[src])
    adam = torch.load(res.adam_state)
    assert set(adam) == {n for n in cp if "lora_" in n}
    meta = json.loads((tmp_path / "warm" / "warmup.json").read_text())
    assert meta["rule"] == "icons" and meta["step"] == 2 and meta["params"]["lr"] == 2e-4
    # the gradient extractor takes the adapter, and the Adam state for LESS
    from typer.testing import CliRunner

    from vlselect.cli import app
    from vlselect.features.store import FeatureStore

    run = CliRunner().invoke(app, ["features", "gradients", "--model", str(mdir), "--lora", str(res.lora_dir),
                                   "--pool", str(pool), "--images", str(images), "--out", str(tmp_path / "g"),
                                   "--dim", "32", "--norms", "--batch-size", "4", "--device", "cpu", "--quiet"])
    assert run.exit_code == 0, run.output
    assert "finished" in run.output
    plain = FeatureStore.open(tmp_path / "g")
    less = extract_gradients(mdir, res.lora_dir, pool, tmp_path / "gl", image_root=images, dim=32, progress=False,
                             device="cpu", batch_size=4, adam_state=res.adam_state)
    g, gl = plain.array("gradients"), less.array("gradients")
    assert g.shape == (8, 32) and np.all(np.abs(g).sum(1) > 0) and not np.allclose(g, gl)
    np.testing.assert_allclose(plain.array("grad_norms"), less.array("grad_norms"), rtol=1e-6)
    # running the warm-up again reuses the checkpoint (no retraining)
    again = train_warmup(mdir, pool, images, tmp_path / "warm", rule="icons", r=4, batch_size=2, step=2,
                         progress=False, device="cpu", train_fn=lambda *a, **k: pytest.fail("retrained"))
    assert again.step == 2
