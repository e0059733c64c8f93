"""Real-size readiness without a GPU (issue 13 item 8): the real configs of llava-1.5-7b-hf, Qwen2-VL-2B/7B and
TinyLLaVA-2.0B are built on the meta device, and what the commands would do is checked against published or
hand-worked numbers: parameter counts, LoRA target modules, probed layers, feature widths (COINCIDE's official
665K x 20,480 rows), image tokens, and the plan's per-stage estimates against the COINCIDE spec's cost table."""

from __future__ import annotations

import json

import pytest

from fixtures_models import tiny_llava  # noqa: F401
from vlselect.cli import main
from vlselect.errors import ConfigError
from vlselect.plan import CONFIG_NAMES, model_facts, plan

LLAVA_665K = 665_298


@pytest.fixture(scope="module")
def facts():
    return {n: model_facts(n) for n in CONFIG_NAMES}


def test_parameter_counts_equal_the_published_ones(facts):
    # model cards: llava-1.5-7b-hf 7.06B, Qwen2-VL-2B-Instruct 2.21B, Qwen2-VL-7B-Instruct 8.29B (exact safetensors
    # totals); TinyLLaVA-2.0B = StableLM-2-1.6B (1,644,515,328, its model card's 1.64B) + SigLIP-so400m without
    # its unused pooling head + a 2-layer MLP projector
    assert facts["llava-1.5-7b-hf"].parameters == 7_063_427_072
    assert facts["qwen2-vl-2b-instruct"].parameters == 2_208_985_600
    assert facts["qwen2-vl-7b-instruct"].parameters == 8_291_375_616
    llava = facts["llava-1.5-7b-hf"]
    # Llama-2-7B (6,738,415,616) + 64 added vocabulary rows in the embedding and the lm_head
    assert llava.llm_parameters == 6_738_415_616 + 64 * 4096 * 2
    assert llava.projector_parameters == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    assert facts["qwen2-vl-2b-instruct"].llm_parameters == 1_543_714_304  # Qwen2-1.5B
    tl = facts["tinyllava-2.0b-hf"]
    assert tl.llm_parameters == 1_644_515_328
    # SigLIP-so400m/14 at 384 px by hand: patch embedding, 729 positions, 27 layers, final norm
    d, i = 1152, 4304
    layer = 4 * (d * d + d) + (d * i + i + i * d + d) + 4 * d
    assert tl.vision_parameters == 3 * 14 * 14 * d + d + 729 * d + 27 * layer + 2 * d
    assert tl.projector_parameters == 1152 * 2048 + 2048 + 2048 * 2048 + 2048


def test_lora_targets_probed_layers_and_feature_widths(facts):
    llava = facts["llava-1.5-7b-hf"]
    assert len(llava.lora_modules) == 32 * 7
    assert not any("vision" in n or "projector" in n or "lm_head" in n for n in llava.lora_modules)
    # LLaVA-1.5's LoRA (r 128, every linear of the LLM) trains 319,815,680 adapter parameters
    assert llava.lora_parameters(128) == 319_815_680 == 32 * 128 * (4 * (4096 + 4096) + 3 * (4096 + 11008))
    qwen = facts["qwen2-vl-2b-instruct"]
    assert len(qwen.lora_modules) == 28 * 7 and not any("visual" in n for n in qwen.lora_modules)
    # GQA: k/v project 1536 -> 2 heads x 128
    assert qwen.lora_parameters(8) == 28 * 8 * (2 * (1536 + 1536) + 2 * (1536 + 256) + 3 * (1536 + 8960))
    # COINCIDE's official rows: TinyLLaVA-2.0B, layers 3, 7, 11, 15, 19 of 24, 5 x [2048 | 2048] = 20,480
    tl = facts["tinyllava-2.0b-hf"]
    assert tl.probed_layers == [3, 7, 11, 15, 19] and tl.feature_width == 20_480
    assert tl.image_tokens == 729 and tl.hidden_size == 2048 and tl.num_layers == 24
    # other depths: the paper's layers mapped proportionally (floor((l+1)·n/24 + 1/2) - 1), width 2·5·hidden
    assert llava.probed_layers == [4, 10, 15, 20, 26] and llava.feature_width == 40_960
    assert qwen.probed_layers == [4, 8, 13, 18, 22] and qwen.feature_width == 15_360
    assert facts["qwen2-vl-7b-instruct"].feature_width == 35_840
    assert llava.image_tokens == 576  # (336 / 14)^2, CLS dropped
    # Qwen2-VL: a 640x480 image is resized to 644x476 (multiples of 28): 46 x 34 patches, merged 2x2
    assert (qwen.vision_patches, qwen.image_tokens) == (1564, 391)


def test_plan_estimates_agree_with_the_coincide_cost_table():
    p = plan("tinyllava-2.0b-hf", LLAVA_665K, text_tokens=171, image_fraction=1.0)  # ~900 tokens per row
    feats = p["stages"]["features"]
    # specs/coincide.md §1.6 and §9: 665,298 x 20,480 x 2 B = 27.3 GB; ~2.7e12 FLOP per sample (rough estimate)
    assert feats["output_bytes"] == LLAVA_665K * 20_480 * 2
    assert 0.65 * 2.7e12 < feats["flops"] / LLAVA_665K < 1.35 * 2.7e12
    assert feats["gpu_hours"] == pytest.approx(feats["flops"] / 100e12 / 3600)
    # COINCIDE's k-means by hand: faiss trains on K x 256 rows for 50 iterations, then assigns every row once
    sel = p["stages"]["selection"]
    n, d, k = LLAVA_665K, 20_480, 10_000
    assert sel["flops"] == pytest.approx(2 * min(n, k * 256) * d * k * 50 + 2 * n * d * k)
    assert sel["flops"] == pytest.approx(1.39e16, rel=0.01)  # issue 14: "about 1.4e16 FLOP of k-means"
    big = plan("llava-1.5-7b-hf", LLAVA_665K, budget=0.2)
    st = big["stages"]
    # 20 % of the pool costs a fifth of the whole pool's training; full fine-tuning (backward 2x) costs more than
    # LoRA (backward 1x), and its Adam state alone (16 B per trainable parameter) does not fit one 80 GB GPU
    whole = plan("llava-1.5-7b-hf", LLAVA_665K, budget=1.0)["stages"]
    assert st["train_lora"]["flops"] == pytest.approx(whole["train_lora"]["flops"] / 5)
    assert st["train_full"]["flops"] / st["train_lora"]["flops"] == pytest.approx(4 / 3)
    assert st["train_full"]["memory_bytes"] > 16 * (7_063_427_072 - 303_507_456) > 80e9
    assert st["train_lora"]["memory_bytes"] < 80e9


def test_cli_plan_prints_and_writes_the_plan(tmp_path, capsys, tiny_llava):
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--model", "tinyllava-2.0b-hf", "--pool-size", str(LLAVA_665K), "--budget", "0.2",
              "--out", str(tmp_path / "plan.json")])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "2,064,060,272 parameters" in out and "rows of 20,480 float16" in out and "168 linear modules" in out
    assert "selection" in out
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["model"]["feature_width"] == 20_480 and set(saved["stages"]) == {
        "features", "selection", "warmup", "gradients", "train_lora", "train_full", "evaluation"}
    # a model directory works the same (here the tiny test model: 4 layers of 32)
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--model", str(tiny_llava), "--pool-size", "100"])
    assert exc.value.code in (0, None) and "rows of 192 float16" in capsys.readouterr().out  # layers [0, 1, 2]
    for argv, msg in ((["--model", "llava-13b", "--pool-size", "10"], "built-in config"),
                      (["--model", "tinyllava-2.0b-hf", "--pool-size", "0"], "--pool-size 0"),
                      (["--model", "tinyllava-2.0b-hf", "--pool-size", "10", "--budget", "2"], "--budget 2.0"),
                      (["--model", "tinyllava-2.0b-hf", "--pool-size", "10", "--image-size", "big"], "WIDTHxHEIGHT")):
        with pytest.raises(SystemExit) as exc:
            main(["plan", *argv])
        assert exc.value.code == 2 and msg in capsys.readouterr().err
    with pytest.raises(ConfigError, match="qwen2-vl-2b-instruct"):
        plan(tmp_path, 10)
