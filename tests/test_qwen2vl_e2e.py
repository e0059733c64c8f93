"""Qwen2-VL end to end (issue 13 item 7), as tests/test_train.py does for LLaVA: on a tiny Qwen2-VL and the colour
task, LoRA adapts only the language model (plus the merger, Qwen2-VL's projector), fits the training records
better than the untrained model, reloads merged or as an adapter with the same answers, and is reproducible from its seed; full
fine-tuning trains the language model and the merger but never the vision encoder; MMA trains exactly its
adapters (hand-counted) and reloads; the CLI evaluates the results."""

from __future__ import annotations

import json

import pytest
import torch

from vlselect.cli import main

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}
QUESTION = "What color is the image?"


@pytest.fixture(scope="module")
def world(tmp_path_factory, _one_torch_thread):
    from PIL import Image

    from vlselect.models.tiny import build_tiny

    root = tmp_path_factory.mktemp("qwenworld")
    build_tiny(root / "model", family="qwen2-vl", seed=0)
    (root / "images").mkdir()
    names = list(COLOURS)
    recs = []
    for i in range(12):
        c = names[i % 3]
        Image.new("RGB", (32, 32), COLOURS[c]).save(root / "images" / f"{i}.png")
        recs.append({"id": f"s{i}", "image": f"{i}.png",
                     "conversations": [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": c}]})
    (root / "pool.json").write_text(json.dumps(recs))
    es = {"name": "colours", "metric": "vqa_accuracy", "description": "colour of a plain image",
          "samples": [{"id": f"e{i}", "image": f"{i}.png", "question": QUESTION, "answers": [names[i % 3]]}
                      for i in range(6)]}
    (root / "colours.json").write_text(json.dumps(es))
    return root


def _score(world, model, out, **kw):
    from vlselect.evaluate import evaluate

    return evaluate(model, [world / "colours.json"], world / "images", world / out, max_new_tokens=4,
                    progress=False, **kw)["sets"]["colours"]["score"]


def _pool_loss(world, model_dir) -> float:
    """Mean answer-token loss of ``model_dir`` on the 12 training records (teacher-forced, one batch)."""
    from vlselect.models import load_vlm
    from vlselect.train.data import encode_batch, open_training_pool

    loaded = load_vlm(model_dir)
    pool = open_training_pool(world / "pool.json")
    with torch.no_grad():
        return float(loaded.model(**encode_batch(loaded, [pool[i] for i in range(len(pool))], world / "images")).loss)


def _weights(d):
    from safetensors.torch import load_file

    return load_file(d / "model.safetensors")


LORA = dict(r=8, lora_alpha=16, lr=2e-2, batch_size=6, epochs=15, gradient_checkpointing=False, seed=0,
            progress=False, warmup_ratio=0.0)


def test_qwen2vl_lora_learns_the_task_and_adapts_only_the_language_model(world):
    from vlselect.train import train_lora

    res = train_lora(world / "model", world / "pool.json", world / "images", world / "lora", save_steps=(5,), **LORA)
    assert res.steps == 30 and res.losses[-1] < res.losses[0] - 0.3
    adapted = torch.load(world / "lora" / "checkpoint-5" / "trainable.pt")
    lora_a = [k for k in adapted if "lora_A" in k]
    assert len(lora_a) == 4 * 7 and not any("visual" in k for k in lora_a)  # 4 layers x 7 linears, no ViT
    assert any("merger" in k for k in adapted)  # the projector trains in full (LLaVA-1.5's recipe)
    # What LoRA learns here is the answer format, not yet the colour: the tiny random Qwen2-VL's LoRA runs end at a
    # loss of 5.79-5.83 from 6.21 (six seeds measured 2026-12-03), and their greedy answers score 0-67% by seed,
    # so an accuracy threshold would test the seed. Checked instead: the merged model fits the training records
    # better than the untrained one does (full fine-tuning, below, does learn the colours: >= 66%).
    assert _pool_loss(world, res.final_dir) < _pool_loss(world, world / "model") - 0.25
    trained = _score(world, res.final_dir, "ev_lora")
    assert _score(world, world / "model", "ev_adapter", adapter=res.adapter_dir) == trained
    again = train_lora(world / "model", world / "pool.json", world / "images", world / "lora_again",
                       stop_after_steps=5, **LORA)
    b = torch.load(world / "lora_again" / "checkpoint-5" / "trainable.pt")
    assert again.steps == 5 and b.keys() == adapted.keys() and all(torch.equal(adapted[k], b[k]) for k in b)


def test_qwen2vl_full_fine_tuning_trains_llm_and_merger_never_the_vision_encoder(world):
    from vlselect.train import train_lora

    res = train_lora(world / "model", world / "pool.json", world / "images", world / "full", adapter="full",
                     lr=1e-2, batch_size=6, epochs=15, gradient_checkpointing=False, seed=0, progress=False,
                     warmup_ratio=0.0)
    before, after = _weights(world / "model"), _weights(res.final_dir)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    encoder = [k for k in before if k.startswith("visual.") and "merger" not in k]  # Qwen2-VL's checkpoint layout
    assert encoder and not any(k in changed for k in encoder)
    assert any("visual.merger" in k for k in changed) and any(k.startswith("model.layers.") for k in changed)
    assert res.trainable_parameters == sum(v.numel() for k, v in before.items() if k not in encoder)
    assert res.losses[-1] < res.losses[0] - 2.0
    assert _score(world, res.final_dir, "ev_full") >= 66.0


def test_qwen2vl_mma_trains_only_its_adapters_and_reloads(world, capsys):
    from vlselect.train import load_trained
    from vlselect.train.mma import mma_param_count

    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", str(world / "model"), "--pool", str(world / "pool.json"), "--images",
              str(world / "images"), "--out", str(world / "mma"), "--adapter", "mma", "--epochs", "2",
              "--batch-size", "6", "--lr", "0.05", "--no-gradient-checkpointing", "--no-progress",
              "--warmup-ratio", "0"])
    assert exc.value.code in (0, None)
    res = json.loads((world / "mma" / "train_result.json").read_text())
    assert res["adapter"] == "mma" and res["steps"] == 4 and res["losses"][-1] < res["losses"][0]
    # per adapter of width 32: 32·8+8 (down) + 2·(4·32+32) (experts) + 2·32+2 (router) = 650; 4 LLM blocks +
    # 2 ViT blocks + the 2 x 32 modality embedding
    assert res["trainable_parameters"] == mma_param_count(32, 4, 32, 2, include_proj=False) == 6 * 650 + 64
    loaded = load_trained(world / "mma" / "final")
    assert loaded.extra["mma"] is True
    saved = torch.load(world / "mma" / "checkpoint-4" / "trainable.pt")
    params = dict(loaded.model.named_parameters())
    # the 2 ViT blocks' router adapters: weight and bias of conv_A, conv_B, conv_D and the router = 8 tensors each
    assert sum("visual" in k for k in saved) == 2 * 8
    assert all(torch.equal(params[k], v) for k, v in saved.items())
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", str(world / "mma" / "final"), "--eval", str(world / "colours.json"), "--images",
              str(world / "images"), "--max-new-tokens", "4", "--no-progress", "--out", str(world / "ev_mma")])
    assert exc.value.code in (0, None)
    rows = [json.loads(x) for x in (world / "ev_mma" / "predictions" / "colours.jsonl").read_text().splitlines()]
    got = json.loads((world / "ev_mma" / "results.json").read_text())["sets"]["colours"]["score"]
    assert [r["id"] for r in rows] == [f"e{i}" for i in range(6)]
    assert got == pytest.approx(100 * sum(r["score"] for r in rows) / 6)


def test_qwen2vl_mma_train_projector_trains_the_merger(world):
    from vlselect.models import load_vlm
    from vlselect.train.mma import attach_mma

    model = load_vlm(world / "model").model
    attach_mma(model, train_projector=True, seed=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    merger = {n for n, _ in model.named_parameters() if "visual.merger" in n}
    assert merger and merger <= trainable
    assert all("adapter" in n for n in trainable - merger)
