"""Training and evaluation on a tiny LLaVA and a tiny colour task (answer the image's colour), end to end:
LoRA lowers the loss and beats the untrained model; a fixed seed gives identical weights; resume equals an
uninterrupted run; MMA trains only adapters, saves and reloads; CLI train / eval / summarize with relative
performance; user errors exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from vlselect.cli import main
from vlselect.errors import ConfigError

from fixtures_models import tiny_llava  # noqa: F401

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}
QUESTION = "What color is the image?"


@pytest.fixture(scope="module")
def world(tmp_path_factory, _one_torch_thread):
    from PIL import Image

    from vlselect.models.tiny import build_tiny

    root = tmp_path_factory.mktemp("trainworld")
    build_tiny(root / "model", family="llava", seed=0)
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


LORA = dict(r=8, lora_alpha=16, lr=1e-2, batch_size=6, epochs=5, gradient_checkpointing=False, seed=0,
            progress=False, warmup_ratio=0.0)


@pytest.fixture(scope="module")
def lora_run(world):
    from vlselect.train import train_lora

    return train_lora(world / "model", world / "pool.json", world / "images", world / "lora", save_steps=(5,), **LORA)


def _trainable(cp):
    return torch.load(cp / "trainable.pt")


def test_lora_lowers_loss_and_beats_untrained(world, lora_run):
    from vlselect.evaluate import evaluate

    assert lora_run.total_steps == lora_run.steps == 10  # 12 samples / 6 per step x 5 epochs
    assert lora_run.losses[-1] < lora_run.losses[0] - 0.4
    assert lora_run.final_dir == world / "lora" / "final"
    assert (lora_run.adapter_dir / "adapter_config.json").is_file()
    assert lora_run.samples == 60 and lora_run.samples_per_second > 0 and lora_run.peak_memory_bytes > 0
    base = evaluate(world / "model", [world / "colours.json"], world / "images", world / "ev_base",
                    max_new_tokens=4, progress=False)
    trained = evaluate(lora_run.final_dir, [world / "colours.json"], world / "images", world / "ev_lora",
                       max_new_tokens=4, progress=False)
    assert trained["sets"]["colours"]["score"] > base["sets"]["colours"]["score"]
    assert trained["sets"]["colours"]["score"] >= 50.0
    lines = [json.loads(x) for x in (world / "ev_lora" / "predictions" / "colours.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [f"e{i}" for i in range(6)]
    assert 100 * sum(x["score"] for x in lines) / 6 == pytest.approx(trained["sets"]["colours"]["score"])
    # the base adapter folder gives the same answers as the merged model
    via_adapter = evaluate(world / "model", [world / "colours.json"], world / "images", world / "ev_ad",
                           adapter=lora_run.adapter_dir, max_new_tokens=4, progress=False)
    assert via_adapter["sets"] == trained["sets"]
    # finished sets are reused by a second call (predictions file kept), not regenerated
    pf = world / "ev_lora" / "predictions" / "colours.jsonl"
    stamp = pf.stat().st_mtime_ns
    again = evaluate(lora_run.final_dir, [world / "colours.json"], world / "images", world / "ev_lora",
                     max_new_tokens=4, progress=False)
    assert again["sets"] == trained["sets"] and pf.stat().st_mtime_ns == stamp


def test_seed_determinism_and_resume(world, lora_run):
    from vlselect.train import train_lora

    out = world / "lora_resumed"
    part = train_lora(world / "model", world / "pool.json", world / "images", out, stop_after_steps=5, **LORA)
    assert part.final_dir is None and part.steps == 5
    first, ref5 = _trainable(out / "checkpoint-5"), _trainable(world / "lora" / "checkpoint-5")
    assert first.keys() == ref5.keys() and any("lora_A" in k for k in first)
    assert all(torch.equal(first[k], ref5[k]) for k in first)  # same seed -> identical weights
    full = train_lora(world / "model", world / "pool.json", world / "images", out, **LORA)  # resumes at step 5
    assert full.samples == 30 and full.losses == lora_run.losses
    a, b = _trainable(out / "checkpoint-10"), _trainable(world / "lora" / "checkpoint-10")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train_lora(world / "model", world / "pool.json", world / "images", world / "lora_seed1",
                       stop_after_steps=1, **{**LORA, "seed": 1})
    assert other.steps == 1
    c = _trainable(world / "lora_seed1" / "checkpoint-1")
    assert not all(torch.equal(c[k], ref5[k]) for k in c)
    # non-reentrant gradient checkpointing changes nothing (same weights after 5 steps, dropout included)
    train_lora(world / "model", world / "pool.json", world / "images", world / "lora_gc", stop_after_steps=5,
               **{**LORA, "gradient_checkpointing": True})
    gc = _trainable(world / "lora_gc" / "checkpoint-5")
    assert all(torch.allclose(gc[k], ref5[k], atol=1e-6) for k in gc)
    # other options on the same folder: told what differs, and to pass --overwrite or another --out
    from vlselect.artifact import ArtifactMismatchError

    with pytest.raises(ArtifactMismatchError, match=r"lora holds a result of other inputs: config.lr \(0.01 there, "
                                                    r"0.02 now\); pass --overwrite or another --out"):
        train_lora(world / "model", world / "pool.json", world / "images", world / "lora", **{**LORA, "lr": 2e-2})
    # a finished run is returned as is
    again = train_lora(world / "model", world / "pool.json", world / "images", world / "lora", **LORA)
    assert again.losses == lora_run.losses and again.final_dir == lora_run.final_dir


def test_full_fine_tuning_trains_llm_and_projector_not_vision(world):
    """adapter="full" (LLaVA-1.5's full fine-tuning): the language model and the projector change, the vision
    tower stays frozen unless named in modules_to_save, the final folder loads as a plain model and beats the
    untrained one, and the same seed gives the same weights."""
    from safetensors.torch import load_file

    from vlselect.evaluate import evaluate
    from vlselect.train import train_lora

    kw = dict(adapter="full", lr=3e-3, batch_size=6, epochs=5, gradient_checkpointing=False, seed=0, progress=False,
              warmup_ratio=0.0)
    res = train_lora(world / "model", world / "pool.json", world / "images", world / "full", save_steps=(1,), **kw)
    assert res.adapter == "full" and res.adapter_dir is None and res.losses[-1] < res.losses[0] - 0.4
    before, after = load_file(world / "model" / "model.safetensors"), load_file(res.final_dir / "model.safetensors")
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not any("vision_tower" in k for k in changed)
    assert any("multi_modal_projector" in k for k in changed) and any("lm_head" in k for k in changed)
    n_vision = sum(v.numel() for k, v in before.items() if "vision_tower" in k)
    assert res.trainable_parameters == sum(v.numel() for v in before.values()) - n_vision
    scored = evaluate(res.final_dir, [world / "colours.json"], world / "images", world / "ev_full",
                      max_new_tokens=4, progress=False)
    assert scored["sets"]["colours"]["score"] >= 50.0
    with_vision = train_lora(world / "model", world / "pool.json", world / "images", world / "full_vis",
                             stop_after_steps=1, modules_to_save=["vision_tower"], **kw)
    vis = _trainable(world / "full_vis" / "checkpoint-1")
    assert any("vision_tower" in k for k in vis) and with_vision.trainable_parameters == res.trainable_parameters + n_vision
    again = train_lora(world / "model", world / "pool.json", world / "images", world / "full_again",
                       stop_after_steps=1, **kw)
    a, b = _trainable(world / "full_again" / "checkpoint-1"), _trainable(world / "full" / "checkpoint-1")
    assert again.steps == 1 and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_mma_train_eval_relative_and_summary(world, lora_run, capsys):
    from vlselect.train import load_trained
    from vlselect.train.mma import mma_param_count

    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", str(world / "model"), "--pool", str(world / "pool.json"), "--images",
              str(world / "images"), "--out", str(world / "mma"), "--adapter", "mma", "--epochs", "2",
              "--batch-size", "6", "--lr", "0.05", "--no-gradient-checkpointing", "--no-progress",
              "--warmup-ratio", "0"])
    assert exc.value.code in (0, None)
    res = json.loads((world / "mma" / "train_result.json").read_text())
    assert res["adapter"] == "mma" and res["steps"] == 4
    assert res["losses"][-1] < res["losses"][0]
    # LLM: 4 layers x width 32; ViT: 2 CLIP layers of width 32; modality embedding; nothing else trains
    assert res["trainable_parameters"] == mma_param_count(32, 4, 32, 2, include_proj=False)
    loaded = load_trained(world / "mma" / "final")
    assert loaded.extra["mma"] is True
    saved = _trainable(world / "mma" / "checkpoint-4")
    params = dict(loaded.model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in saved.items())

    ev = ["eval", "--eval", str(world / "colours.json"), "--images", str(world / "images"), "--max-new-tokens", "4",
          "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        main(ev + ["--model", str(lora_run.final_dir), "--out", str(world / "cli_lora")])
    assert exc.value.code in (0, None)
    with pytest.raises(SystemExit) as exc:
        main(ev + ["--model", str(world / "mma" / "final"), "--out", str(world / "cli_mma"),
                   "--reference", str(world / "cli_lora" / "results.json")])
    assert exc.value.code in (0, None)
    ref = json.loads((world / "cli_lora" / "results.json").read_text())
    got = json.loads((world / "cli_mma" / "results.json").read_text())
    expect = 100 * got["sets"]["colours"]["score"] / ref["sets"]["colours"]["score"]
    assert got["relative"] == pytest.approx(expect)
    assert "relative performance" in capsys.readouterr().out

    # two "seeds" -> mean and t-interval
    with pytest.raises(SystemExit) as exc:
        main(["eval", "summarize", str(world / "cli_lora" / "results.json"), str(world / "cli_mma" / "results.json"),
              "--reference", str(world / "cli_lora" / "results.json"), "--out", str(world / "summary.json")])
    assert exc.value.code in (0, None)
    s = json.loads((world / "summary.json").read_text())
    assert s["n"] == 2 and s["relative"]["mean"] == pytest.approx((100 + expect) / 2)
    assert s["relative"]["half_width"] == pytest.approx(12.7062047 * abs(100 - expect) / 2, rel=1e-6)


def test_cli_user_errors_exit_2(world, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", str(world / "model")])
    assert exc.value.code == 2 and "needs --pool, --out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", str(world / "model"), "--pool", str(world / "pool.json"), "--images",
              str(world / "images"), "--out", str(world / "bad"), "--adapter", "prefix"])
    assert exc.value.code == 2 and "unknown adapter 'prefix'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", str(world / "model"), "--pool", str(world / "missing.json"), "--images",
              str(world / "images"), "--out", str(world / "bad")])
    assert exc.value.code == 2 and "missing.json" in capsys.readouterr().err
    bad = world / "bad_set.json"
    bad.write_text(json.dumps({"name": "x", "metric": "bleu", "samples": []}))
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", str(world / "model"), "--eval", str(bad), "--images", str(world / "images"),
              "--out", str(world / "bad_ev")])
    assert exc.value.code == 2 and "unknown metric 'bleu'" in capsys.readouterr().err


def test_lmms_cli_prints_command(world, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "lmms", "--model", str(world / "model"), "--tasks", "mme,pope", "--out", "o"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "lmms_eval --model llava_hf" in out and f"pretrained={world / 'model'}" in out and "--tasks mme,pope" in out


_DDP_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from vlselect.train import train_lora
root = sys.argv[1]
train_lora(root + "/model", root + "/pool.json", root + "/images", root + "/ddp", r=8, lora_alpha=16, lr=1e-2,
           lora_dropout=0.0, batch_size=3, max_steps=2, gradient_checkpointing=False, progress=False, warmup_ratio=0.0)
"""


@pytest.mark.slow
def test_two_process_training_equals_gradient_accumulation(world):
    """torchrun with 2 CPU ranks (gloo): each rank takes every other micro-batch and gradients are averaged, which
    equals one process with grad_accum=2 (dropout off: ranks draw their own masks)."""
    import os
    import subprocess
    import sys

    from vlselect.train import train_lora

    script = world / "ddp_train.py"
    script.write_text(_DDP_SCRIPT)
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(script), str(world)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    single = train_lora(world / "model", world / "pool.json", world / "images", world / "ddp_single", r=8,
                        lora_alpha=16, lr=1e-2, lora_dropout=0.0, batch_size=3, grad_accum=2, max_steps=2,
                        gradient_checkpointing=False, progress=False, warmup_ratio=0.0)
    ddp = json.loads((world / "ddp" / "train_result.json").read_text())
    assert ddp["steps"] == 2 and ddp["losses"] == pytest.approx(single.losses, abs=1e-5)
    a, b = _trainable(world / "ddp" / "checkpoint-2"), _trainable(world / "ddp_single" / "checkpoint-2")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_length_group_removes_padding_and_reports_it(world, tmp_path):
    """Two short and two long samples, two per step: grouped over two steps, each step holds one length (padding
    exactly 0); in the plain shuffle the padding is what the mixed steps waste, worked out by hand."""
    from vlselect.models import encode_sample, load_vlm
    from vlselect.pool.sample import Sample
    from vlselect.train import train_lora
    from vlselect.train.data import epoch_order

    long_answer = " ".join(["red"] * 12)
    answers = ["red", long_answer, "red", long_answer]
    pool = [Sample(id=f"p{i}", images=[f"{i}.png"], conversations=[
        {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": a}]) for i, a in enumerate(answers)]
    loaded = load_vlm(world / "model")
    lens = [int(encode_sample(loaded, s, world / "images")["input_ids"].shape[0]) for s in pool]
    short, long_ = lens[0], lens[1]
    assert long_ > short and lens == [short, long_, short, long_]
    opts = {**LORA, "batch_size": 2, "epochs": 1, "seed": 1}  # seed 1's shuffle mixes both steps
    grouped = train_lora(world / "model", pool, world / "images", tmp_path / "grouped", length_group=2, **opts)
    assert grouped.padding == 0.0
    plain = train_lora(world / "model", pool, world / "images", tmp_path / "plain", **opts)
    order = epoch_order(4, 1, 0).tolist()
    mixed = sum(1 for st in (order[:2], order[2:]) if len({lens[i] for i in st}) == 2)
    assert mixed == 2
    # each mixed step pads its short sample by (long - short); the steps hold 2 x their longest sample
    positions = sum(2 * max(lens[i] for i in st) for st in (order[:2], order[2:]))
    assert plain.padding == pytest.approx(mixed * (long_ - short) / positions)


def test_language_model_targets_pick_those_layers_of_the_language_model_only(tiny_llava):
    """PEFT's own matching, on the tiny LLaVA: the regex adapts exactly the named layers of the language model (4
    layers x 3), none of the vision tower's; a bare name list would have taken CLIP's q_proj too (why the regex)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from vlselect.train.lora import LORA_TARGETS, language_model_targets

    def adapted(targets):
        model = AutoModelForImageTextToText.from_pretrained(tiny_llava)
        pm = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=targets))
        return sorted({n.rsplit(".lora_A", 1)[0] for n, _ in pm.named_parameters() if ".lora_A" in n})

    mlp = adapted(language_model_targets(["gate_proj", "up_proj", "down_proj"]))
    assert len(mlp) == 12 and {n.rsplit(".", 1)[1] for n in mlp} == {"gate_proj", "up_proj", "down_proj"}
    assert not any("vision" in n or "projector" in n for n in mlp)
    every = adapted(language_model_targets(LORA_TARGETS))
    assert len(every) == 28 and not any("vision" in n for n in every)
    assert any("vision" in n for n in adapted(["q_proj"]))
    with pytest.raises(ConfigError, match="'mlp'.*gate_proj"):
        language_model_targets(["mlp"])
    with pytest.raises(ConfigError, match="none"):
        language_model_targets([])
