"""The model layer: tiny builders, loading, encoding with answer-only labels, collation (issue 3)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from fixtures_models import make_samples, tiny_llava, tiny_pool, tiny_qwen2vl  # noqa: F401

from vlselect.errors import ModelError, PoolError
from vlselect.models import collate, encode_sample, load_vlm
from vlselect.models.tiny import build_tiny

END = {"llava": "</s>", "qwen2-vl": "<|im_end|>"}


def _expected_answers(sample, family):
    answers = [t["value"] for t in sample.conversations if t["from"] == "gpt"]
    sep = " " if family == "llava" else ""
    return "".join(sep + a + END[family] for a in answers)


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_labels_cover_exactly_the_answers(family, tiny_llava, tiny_pool, tiny_qwen2vl):  # noqa: F811
    path = tiny_llava if family == "llava" else tiny_qwen2vl
    loaded = load_vlm(path, device="cpu")
    assert loaded.family == family and loaded.num_layers == 4
    tok = loaded.processor.tokenizer
    _, images = tiny_pool
    for s in make_samples(6):
        e = encode_sample(loaded, s, images)
        ids, lab = e["input_ids"], e["labels"]
        sup = lab != -100
        assert torch.equal(lab[sup], ids[sup])
        assert tok.decode(ids[sup]) == _expected_answers(s, family)
        n_img = int(e["image_mask"].sum())
        assert n_img == (0 if not s.images else (16 if family == "llava" else 4))
        assert not (e["image_mask"] & e["text_mask"]).any()
        assert not (e["image_mask"] & sup).any()
        text = tok.decode(ids[e["text_mask"]])
        q = s.conversations[0]["value"].replace("<image>\n", "")
        assert text.lstrip("\n").startswith(q)
        assert "assistant." not in text  # the system prompt is not text
        if s.images:
            assert ("pixel_values" in e) and (("image_grid_thw" in e) == (family == "qwen2-vl"))
        else:
            assert "pixel_values" not in e


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_collate_mixed_batch_matches_single_rows(family, tiny_llava, tiny_pool, tiny_qwen2vl):  # noqa: F811
    path = tiny_llava if family == "llava" else tiny_qwen2vl
    loaded = load_vlm(path, device="cpu")
    _, images = tiny_pool
    encs = [encode_sample(loaded, s, images) for s in make_samples(3)]  # image, image, text-only
    batch = collate(encs, loaded.pad_token_id)
    lengths = [int(e["input_ids"].shape[0]) for e in encs]
    T = max(lengths)
    assert batch["input_ids"].shape == (3, T)
    for b, n in enumerate(lengths):
        assert torch.equal(batch["input_ids"][b, :n], encs[b]["input_ids"])
        assert (batch["input_ids"][b, n:] == loaded.pad_token_id).all()
        assert (batch["labels"][b, n:] == -100).all()
        assert not batch["image_mask"][b, n:].any() and not batch["text_mask"][b, n:].any()
        assert batch["attention_mask"][b].sum() == n
    fwd = {k: v for k, v in batch.items() if k not in ("image_mask", "text_mask", "labels")}
    with torch.no_grad():
        logits = loaded.model(**fwd).logits
        for b, e in enumerate(encs):
            single = {k: v.unsqueeze(0) for k, v in e.items()
                      if k not in ("image_mask", "text_mask", "labels", "pixel_values", "image_grid_thw")}
            for k in ("pixel_values", "image_grid_thw"):
                if k in e:
                    single[k] = e[k]
            one = loaded.model(**single).logits[0]
            torch.testing.assert_close(logits[b, : lengths[b]], one, atol=1e-4, rtol=1e-4)


def test_tiny_is_deterministic_and_loads_via_from_pretrained(tmp_path, tiny_llava):  # noqa: F811
    again = build_tiny(tmp_path / "again", family="llava", seed=0)
    other = build_tiny(tmp_path / "other", family="llava", seed=1)
    digest = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(again) == digest(tiny_llava)
    assert digest(other) != digest(tiny_llava)
    assert load_vlm(again).model_hash == load_vlm(tiny_llava).model_hash


def test_missing_model_dir_and_bad_image(tmp_path, tiny_llava, tiny_pool):  # noqa: F811
    with pytest.raises(ModelError, match="nope"):
        load_vlm(tmp_path / "nope")
    loaded = load_vlm(tiny_llava, device="cpu")
    s = make_samples(1)[0]
    s.images = ["missing.png"]
    with pytest.raises(PoolError, match="s0.*missing.png"):
        encode_sample(loaded, s, tiny_pool[1])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    s.images = ["bad.png"]
    with pytest.raises(PoolError, match="s0.*bad.png"):
        encode_sample(loaded, s, tmp_path)
    with pytest.raises(ModelError, match="max_length"):
        encode_sample(loaded, make_samples(3)[2], None, max_length=5)


def test_cli_models_tiny(tmp_path):
    from typer.testing import CliRunner

    from vlselect.cli import app

    res = CliRunner().invoke(app, ["models", "tiny", str(tmp_path / "q"), "--family", "qwen2-vl"])
    assert res.exit_code == 0, res.output
    assert load_vlm(tmp_path / "q").family == "qwen2-vl"
    res = CliRunner().invoke(app, ["models", "tiny", str(tmp_path / "x"), "--family", "nope"])
    assert res.exit_code != 0


def test_leading_answer_turn_and_stray_image_tags_are_dropped(tiny_llava):  # noqa: F811
    from vlselect.pool import Sample

    loaded = load_vlm(tiny_llava, device="cpu")
    s = Sample("t", [], [{"from": "gpt", "value": "Ignored."}, {"from": "human", "value": "Hi <image>there"},
                         {"from": "gpt", "value": "Hello."}])
    e = encode_sample(loaded, s, None)
    tok = loaded.processor.tokenizer
    assert tok.decode(e["input_ids"]) == "USER: Hi there ASSISTANT: Hello.</s>"
    assert tok.decode(e["input_ids"][e["labels"] != -100]) == " Hello.</s>"
    assert not e["image_mask"].any()
    with pytest.raises(PoolError, match="no answer"):
        encode_sample(loaded, Sample("u", [], [{"from": "human", "value": "Hi"}]), None)


def test_b8_is_b_with_eight_language_layers_and_48_px_gives_36_image_tokens(tmp_path):
    # the capacity probes of benchmarks/foundation_screen.py (issue 12): "b8" keeps b's widths and doubles its
    # language layers; 48 px pictures with 8 px patches are 6 x 6 = 36 image tokens (24 px: 3 x 3 = 9)
    b = load_vlm(build_tiny(tmp_path / "b", family="llava", size="b"), device="cpu")
    b8 = load_vlm(build_tiny(tmp_path / "b8", family="llava", size="b8", image_size=48), device="cpu")
    assert (b.num_layers, b8.num_layers) == (4, 8)
    cb, c8 = b.model.config.text_config, b8.model.config.text_config
    assert (c8.hidden_size, c8.intermediate_size, c8.num_attention_heads) == (cb.hidden_size, cb.intermediate_size,
                                                                               cb.num_attention_heads)
    assert b.model.config.vision_config.image_size == 24 and b8.model.config.vision_config.image_size == 48
    s = make_samples(1)[0]
    from PIL import Image

    Image.new("RGB", (48, 48), (200, 30, 30)).save(tmp_path / "p.png")
    s.images = ["p.png"]
    assert int(encode_sample(b8, s, tmp_path)["image_mask"].sum()) == 36
    assert int(encode_sample(b, s, tmp_path)["image_mask"].sum()) == 9
