"""Per-sample gradients on both tiny model families through the real encoder, and the extractor's store:
exactness against one-sample autograd, projection determinism across batch size and shard layout, resumption
(issue 4; icons.md §2.2-2.5, tive.md §4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlselect.features.gradients import GradientEngine, extract_gradients, per_sample_autograd_gradients
from vlselect.features.projection import Projection

LLM_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def write_pool(root: Path, n: int = 7) -> tuple[Path, Path]:
    """A LLaVA JSON pool of ``n`` rows (image rows, multi-turn rows and text-only rows) with PNG images."""
    from PIL import Image

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    answers = ["Red.", "There are three squares.", "Yes, it is.", "Hello there!", "Green and blue.", "Five."]
    records = []
    for i in range(n):
        ans = answers[i % len(answers)]
        if i % 3 == 2:
            records.append({"id": f"s{i}", "conversations": [
                {"from": "human", "value": f"Tell me something short, number {i}."}, {"from": "gpt", "value": ans}]})
            continue
        Image.new("RGB", (24 + 8 * (i % 3), 32), ((37 * i) % 256, (91 * i) % 256, (151 * i) % 256)).save(
            images / f"img{i}.png")
        conv = [{"from": "human", "value": f"<image>\nWhat do you see in picture {i}?"}, {"from": "gpt", "value": ans}]
        if i % 2 == 0:
            conv += [{"from": "human", "value": "Are you sure?"}, {"from": "gpt", "value": f"Yes, {ans.lower()}"}]
        records.append({"id": f"s{i}", "image": f"img{i}.png", "conversations": conv})
    pool = root / "pool.json"
    pool.write_text(json.dumps(records))
    return pool, images


def add_lora(model, seed: int = 0, r: int = 4):
    from peft import LoraConfig, get_peft_model

    from vlselect.models.peft_wrap import quiet_peft_wrap

    with quiet_peft_wrap():  # PEFT reads a property transformers 5 deprecates
        pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules=LLM_TARGETS))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return pm.eval()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return write_pool(tmp_path_factory.mktemp("gpool"))


@pytest.fixture(scope="module", params=["llava", "qwen2-vl"])
def family_setup(request, tmp_path_factory, pool):
    from vlselect.models import load_vlm
    from vlselect.models.tiny import build_tiny

    mdir = build_tiny(tmp_path_factory.mktemp(f"tiny-{request.param}"), family=request.param, seed=0)
    loaded = load_vlm(mdir, device="cpu")
    import inspect

    # decide the encoder's Qwen2-VL mm_token_type_ids from the base model's forward, before PEFT wraps it
    loaded.extra["mm_token_type_ids"] = "mm_token_type_ids" in inspect.signature(loaded.model.forward).parameters
    loaded.model = add_lora(loaded.model)
    lora_dir = tmp_path_factory.mktemp(f"lora-{request.param}")
    loaded.model.save_pretrained(str(lora_dir))
    from vlselect.pool import open_pool

    samples = list(open_pool(pool[0]))
    return request.param, mdir, lora_dir, loaded, samples


def _encoded(loaded, samples, image_root):
    from vlselect.models import encode_sample

    return [encode_sample(loaded, s, image_root) for s in samples]


def test_exact_against_one_sample_autograd_on_the_real_encoder(family_setup, pool):
    from vlselect.models import collate

    family, _, _, loaded, samples = family_setup
    enc = _encoded(loaded, samples, pool[1])
    eng = GradientEngine(loaded.model, projection="none")
    ref, _ = per_sample_autograd_gradients(loaded.model, [collate([e], loaded.pad_token_id) for e in enc],
                                           eng.param_names)
    assert float(ref.abs().max()) > 0
    full, norms = eng.full_gradients(collate(enc, loaded.pad_token_id))
    assert full.shape == ref.shape
    scale = float(ref.abs().max())
    assert float((full - ref).abs().max()) / scale < 2e-5, family
    torch.testing.assert_close(norms, ref.norm(dim=1), rtol=1e-5, atol=1e-8)


def test_store_matches_reference_and_is_independent_of_batch_size(family_setup, pool, tmp_path):
    from vlselect.features.store import FeatureStore
    from vlselect.models import collate

    family, mdir, lora_dir, loaded, samples = family_setup
    kw = dict(image_root=pool[1], dim=64, seed=5, shard_size=3, progress=False, device="cpu")
    a = extract_gradients(mdir, lora_dir, pool[0], tmp_path / "a", batch_size=1, **kw)
    b = extract_gradients(mdir, lora_dir, pool[0], tmp_path / "b", batch_size=4, **kw)
    fa, fb = a.array("gradients"), b.array("gradients")
    assert fa.shape == (len(samples), 64) and a.array("grad_norms").shape == (len(samples),)
    np.testing.assert_allclose(fa, fb, rtol=1e-4, atol=1e-6)
    # equal to projecting the one-sample autograd gradients of the saved adapter with the seeded matrix
    enc = _encoded(loaded, samples, pool[1])
    names = GradientEngine(loaded.model, projection="none").param_names
    ref, _ = per_sample_autograd_gradients(loaded.model, [collate([e], loaded.pad_token_id) for e in enc], names)
    expected = (ref @ Projection(ref.shape[1], 64, seed=5).matrix() / 8.0).numpy()
    np.testing.assert_allclose(fa, expected, rtol=1e-3, atol=1e-5 * float(np.abs(expected).max()))
    np.testing.assert_allclose(a.array("grad_norms"), ref.norm(dim=1).numpy(), rtol=1e-5)
    m = FeatureStore.open(tmp_path / "a").manifest
    assert m["kind"] == "gradients" and m["projection"] == "rademacher" and m["dim"] == 64 and m["seed"] == 5
    assert m["num_params"] == ref.shape[1]
    # validation-set gradients (ICONS's target tasks, icons.md §3): the same engine and projection on another file
    val = tmp_path / "val.json"
    recs = json.loads(Path(pool[0]).read_text())
    val.write_text(json.dumps([recs[3], recs[0]]))
    v = extract_gradients(mdir, lora_dir, val, tmp_path / "v", batch_size=2, **kw)
    np.testing.assert_allclose(v.array("gradients"), fa[[3, 0]], rtol=1e-4, atol=1e-6)
    vm = FeatureStore.open(tmp_path / "v").manifest
    assert (vm["lora_hash"], vm["seed"], vm["dim"]) == (m["lora_hash"], m["seed"], m["dim"])


def test_one_pass_writes_the_stores_of_separate_passes(family_setup, pool, tmp_path):
    """``out={"lora": A, "self_attn": B}``: both stores from one forward/backward per batch, each equal to the store
    of its own pass (same manifest meta); a store that already holds some shards is completed, the other filled."""
    from vlselect.features.store import FeatureStore

    family, mdir, lora_dir, _, _ = family_setup
    if family != "llava":
        pytest.skip("store mechanics are family-independent; exercised once")
    kw = dict(image_root=pool[1], dim=32, seed=2, shard_size=2, batch_size=2, progress=False, device="cpu")
    sep = {k: extract_gradients(mdir, lora_dir, pool[0], tmp_path / f"sep_{k}", params=k, **kw)
           for k in ("lora", "self_attn")}
    # the TIVE store was started alone and stopped after one shard; the shared pass resumes it
    extract_gradients(mdir, lora_dir, pool[0], tmp_path / "one_self_attn", params="self_attn", stop_after_shards=1,
                      **kw)
    both = extract_gradients(mdir, lora_dir, pool[0], {"lora": tmp_path / "one_lora",
                                                       "self_attn": tmp_path / "one_self_attn"}, **kw)
    assert set(both) == {"lora", "self_attn"}
    for k in ("lora", "self_attn"):
        assert both[k].finished
        np.testing.assert_allclose(both[k].array("gradients"), sep[k].array("gradients"), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(both[k].array("grad_norms"), sep[k].array("grad_norms"), rtol=1e-6)
        ma, mb = FeatureStore.open(tmp_path / f"one_{k}").manifest, FeatureStore.open(tmp_path / f"sep_{k}").manifest
        assert ma == mb  # the same meta, arrays and layout as a pass of its own
    assert both["lora"].array("gradients").shape == both["self_attn"].array("gradients").shape
    assert FeatureStore.open(tmp_path / "one_self_attn").manifest["num_params"] < \
        FeatureStore.open(tmp_path / "one_lora").manifest["num_params"]


def test_resumed_and_sharded_runs_are_byte_identical(family_setup, pool, tmp_path):
    from vlselect.features.store import merge

    family, mdir, lora_dir, _, _ = family_setup
    if family != "llava":
        pytest.skip("store mechanics are family-independent; exercised once")
    kw = dict(image_root=pool[1], dim=32, seed=0, shard_size=2, batch_size=2, progress=False, device="cpu")
    full = extract_gradients(mdir, lora_dir, pool[0], tmp_path / "full", **kw)
    part = extract_gradients(mdir, lora_dir, pool[0], tmp_path / "resumed", stop_after_shards=2, **kw)
    assert not part.finished and len(part.done_shards()) == 2
    resumed = extract_gradients(mdir, lora_dir, pool[0], tmp_path / "resumed", **kw)
    for name in ("gradients", "grad_norms"):
        assert full.array(name).tobytes() == resumed.array(name).tobytes()
    # SLURM-style --shard i/N into separate directories, then merged
    for i in range(2):
        extract_gradients(mdir, lora_dir, pool[0], tmp_path / f"s{i}", shard=f"{i}/2", **kw)
    merged = merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    for name in ("gradients", "grad_norms"):
        assert full.array(name).tobytes() == merged.array(name).tobytes()
    # torchrun-style ranks writing their own shards of one store; the last rank to finish finalises it
    first = extract_gradients(mdir, lora_dir, pool[0], tmp_path / "ranks", rank=0, world_size=2, **kw)
    assert not first.finished
    last = extract_gradients(mdir, lora_dir, pool[0], tmp_path / "ranks", rank=1, world_size=2, **kw)
    assert last.finished
    for name in ("gradients", "grad_norms"):
        assert full.array(name).tobytes() == last.array(name).tobytes()
