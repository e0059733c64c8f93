"""Per-sample LoRA gradients (issue 4; icons.md §2.2-2.3, tive.md §4.1-4.4): the batched hook engine equals
one-sample-at-a-time autograd, padding included; projections and norms agree with the full gradients."""

from __future__ import annotations

import math

import pytest
import torch

from vlselect.features.gradients import GradientEngine, per_sample_autograd_gradients, per_sample_loss
from vlselect.features.projection import Projection

IMG_TOKEN = 119
N_PATCH = 4  # (28 / 14) ** 2, CLS dropped


def tiny_llava_lora(seed: int = 0, r: int = 4):
    """A tiny LLaVA (CLIP tower + Llama) with LoRA on every linear layer of the language model; B is random so
    that A gets gradients too."""
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          image_size=28, patch_size=14, projection_dim=32)
    tc = LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=120, max_position_embeddings=128)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=IMG_TOKEN, vision_feature_layer=-1,
                      vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(cfg).eval()
    lc = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05,
                    target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    from vlselect.models.peft_wrap import quiet_peft_wrap

    with quiet_peft_wrap():  # PEFT reads a property transformers 5 deprecates
        pm = get_peft_model(model, lc)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return pm.eval()


def random_samples(n: int, seed: int = 0, min_len: int = 8, max_len: int = 16):
    """``n`` single-sample batches (one image each, random text, labels on a random answer suffix)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        T = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(0, 100, (1, T), generator=g)
        ids[0, 1 : 1 + N_PATCH] = IMG_TOKEN
        labels = torch.full_like(ids, -100)
        start = int(torch.randint(N_PATCH + 2, T - 1, (1,), generator=g))
        labels[0, start:] = ids[0, start:]
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                    "pixel_values": torch.randn(1, 3, 28, 28, generator=g)})
    return out


def collate(singles, side: str = "right"):
    """Pad single-sample batches into one batch (pad id 0, labels -100, mask 0)."""
    T = max(s["input_ids"].shape[1] for s in singles)
    ids, mask, labels = [], [], []
    for s in singles:
        pad = T - s["input_ids"].shape[1]
        cat = (lambda a, v: torch.cat([a, torch.full((1, pad), v, dtype=a.dtype)], 1)) if side == "right" else \
              (lambda a, v: torch.cat([torch.full((1, pad), v, dtype=a.dtype), a], 1))
        ids.append(cat(s["input_ids"], 0))
        mask.append(cat(s["attention_mask"], 0))
        labels.append(cat(s["labels"], -100))
    return {"input_ids": torch.cat(ids), "attention_mask": torch.cat(mask), "labels": torch.cat(labels),
            "pixel_values": torch.cat([s["pixel_values"] for s in singles])}


@pytest.fixture(scope="module")
def model():
    return tiny_llava_lora()


@pytest.fixture(scope="module")
def samples():
    return random_samples(6)


@pytest.fixture(scope="module")
def reference(model, samples):
    eng = GradientEngine(model, projection="none")
    grads, losses = per_sample_autograd_gradients(model, samples, eng.param_names)
    return eng.param_names, grads, losses


def test_parameter_order_is_named_parameters_order(model, reference):
    names = reference[0]
    expected = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert names == expected
    assert names[0].endswith("layers.0.self_attn.q_proj.lora_A.default.weight")
    assert names[1].endswith("layers.0.self_attn.q_proj.lora_B.default.weight")
    # 2 layers x (q 48x48, k 48x24, v 48x24, o 48x48, gate 48x96, up 48x96, down 96x48), r = 4
    per_layer = sum(4 * (i + o) for i, o in [(48, 48), (48, 24), (48, 24), (48, 48), (48, 96), (48, 96), (96, 48)])
    assert reference[1].shape == (6, 2 * per_layer)


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_equals_per_sample_autograd(model, samples, reference, side):
    _, ref, _ = reference
    assert float(ref.abs().max()) > 1e-3  # A and B both get non-zero gradients
    eng = GradientEngine(model, projection="none")
    batch = collate(samples, side)
    full, norms = eng.full_gradients(batch)
    err = (full - ref).abs().max() / ref.abs().max()
    assert float(err) < 1e-5
    torch.testing.assert_close(norms, ref.norm(dim=1), rtol=1e-5, atol=1e-7)


def test_loss_is_mean_over_answer_tokens(model, samples, reference):
    _, _, ref_losses = reference
    s = samples[0]
    with torch.no_grad():
        logits = model(input_ids=s["input_ids"], attention_mask=s["attention_mask"],
                       pixel_values=s["pixel_values"]).logits
    lp = torch.log_softmax(logits[0, :-1].float(), -1)
    tgt = s["labels"][0, 1:]
    sup = tgt != -100
    manual = -lp[sup.nonzero()[:, 0], tgt[sup]].mean()
    assert math.isclose(float(manual), float(ref_losses[0]), rel_tol=1e-5)
    losses, counts = per_sample_loss(logits, s["labels"])
    assert int(counts[0]) == int(sup.sum())


def test_self_attn_subset_is_a_slice_of_the_full_gradient(model, samples, reference):
    names, ref, _ = reference
    eng = GradientEngine(model, params="self_attn", projection="none")
    assert all("self_attn" in n for n in eng.param_names) and len(eng.param_names) == 16
    full, _ = eng.full_gradients(collate(samples[:3]))
    offs, cols = 0, []
    for n, p in model.named_parameters():
        if "lora_" in n:
            if "self_attn" in n:
                cols.append(torch.arange(offs, offs + p.numel()))
            offs += p.numel()
    torch.testing.assert_close(full, ref[:3, torch.cat(cols)], rtol=1e-4, atol=1e-6)
    GradientEngine(model, params="lora", projection="none")  # restore requires_grad for other tests


@pytest.mark.parametrize("batch_size", [1, 4, 6])
def test_projected_features_equal_projection_of_exact_gradients(model, samples, reference, batch_size):
    _, ref, _ = reference
    eng = GradientEngine(model, projection="rademacher", dim=256, seed=3)
    batches = [collate(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]
    rows = list(eng.run(batches))
    feats = torch.cat([f for _, f, _ in rows])
    assert [s for s, _, _ in rows] == sorted(s for s, _, _ in rows) and rows[0][0] == 0
    expected = ref @ Projection(ref.shape[1], 256, seed=3).matrix() / 16.0
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)


def test_streaming_projection_equals_buffered(model, samples):
    a = GradientEngine(model, projection="gaussian", dim=128, seed=1)
    b = GradientEngine(model, projection="gaussian", dim=128, seed=1, buffer_bytes=0)  # layer-by-layer path
    batch = collate(samples)
    fa = torch.cat([f for _, f, _ in a.run([batch])])
    fb, nb = zip(*[(f, n) for _, f, n in b.run([batch])])
    torch.testing.assert_close(fa, torch.cat(fb), rtol=1e-4, atol=1e-5)


def test_factored_norms_are_exact_and_sketch_preserves_inner_products(model, samples, reference):
    _, ref, _ = reference
    eng = GradientEngine(model, projection="factored", dim=4096, factor_dim=16, seed=0)
    out = list(eng.run([collate(samples)]))
    feats, norms = out[0][1], out[0][2]
    torch.testing.assert_close(norms, ref.norm(dim=1), rtol=1e-5, atol=1e-7)
    assert feats.shape == (6, min(4096, eng.factored.dim_factored))
    cos_true = torch.nn.functional.normalize(ref, dim=1) @ torch.nn.functional.normalize(ref, dim=1).T
    cos_sk = torch.nn.functional.normalize(feats, dim=1) @ torch.nn.functional.normalize(feats, dim=1).T
    assert float((cos_true - cos_sk).abs().max()) < 0.35
    assert float((cos_true - cos_sk).abs().mean()) < 0.12


def test_adam_preconditioning_matches_less_formula(model, samples, reference):
    names, ref, _ = reference
    g = torch.Generator().manual_seed(5)
    params = dict(model.named_parameters())
    state = {n: (torch.randn(params[n].numel(), generator=g) * 1e-3, torch.rand(params[n].numel(), generator=g) * 1e-5)
             for n in names}
    eng = GradientEngine(model, projection="none", adam_state=state)
    full, norms = eng.full_gradients(collate(samples))
    m = torch.cat([state[n][0] for n in names])
    v = torch.cat([state[n][1] for n in names])
    expected = (0.9 * m + 0.1 * ref) / torch.sqrt(0.999 * v + 0.001 * ref**2 + 1e-8)
    torch.testing.assert_close(full, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norms, ref.norm(dim=1), rtol=1e-5, atol=1e-7)  # norms stay those of plain grads


def test_factored_features_do_not_depend_on_batch_size(model, samples):
    eng = GradientEngine(model, projection="factored", dim=256, factor_dim=8, seed=2)
    assert eng.factored.dim_factored > 256  # the final dense step is used
    one = torch.cat([f for _, f, _ in eng.run([collate(samples)])])
    pairs = torch.cat([f for _, f, _ in eng.run([collate(samples[i : i + 2]) for i in range(0, 6, 2)])])
    assert one.shape == (6, 256)
    torch.testing.assert_close(pairs, one, rtol=1e-4, atol=1e-6)


def test_checkpointing_and_train_mode_are_switched_off(samples, reference):
    """A model left in train mode with activation checkpointing (as after training) still gives the exact
    gradients: the engine turns dropout and recomputation off."""
    m = tiny_llava_lora()
    m.base_model.model.activation_checkpointing_enable({"use_reentrant": False})
    m.train()
    eng = GradientEngine(m, projection="none")
    assert not m.training
    full, _ = eng.full_gradients(collate(samples))
    ref = reference[1]
    assert float((full - ref).abs().max() / ref.abs().max()) < 1e-5


@pytest.mark.parametrize("factor_dim, dim, route", [(8, 4096, "auto"), (16, 256, "auto"), (8, 256, "tokens"),
                                                     (8, 4096, "grad")])
def test_factored_features_equal_kronecker_projection_of_exact_gradients(model, samples, reference, factor_dim, dim,
                                                                         route):
    """The engine's factored features (either route per layer: token factors + Gram norms, or the formed LoRA
    gradient) equal the exact per-sample gradients (one-sample autograd) times the block-diagonal Kronecker matrix
    diag_l(P_out,l (x) P_in,l), then the final dense step when the concatenation is longer than ``dim``; the norms
    are the exact gradient norms on both routes."""
    _, ref, _ = reference
    eng = GradientEngine(model, projection="factored", dim=dim, factor_dim=factor_dim, seed=4)
    fp = eng.factored
    if route != "auto":  # force one route for every layer
        fp.route_costs = (lambda layer, tokens: (0, 1)) if route == "tokens" else (lambda layer, tokens: (1, 0))
    norms = torch.cat([n for _, _, n in eng.run([collate(samples)])])
    torch.testing.assert_close(norms, ref.norm(dim=1), rtol=1e-5, atol=1e-7)
    feats = torch.cat([f for _, f, _ in eng.run([collate(samples[:4]), collate(samples[4:])])])
    blocks = []
    for layer, (o, i) in enumerate(fp.shapes):
        po, pi = fp.side(layer, 0), fp.side(layer, 1)
        blocks.append(torch.kron(torch.eye(o) if po is None else po, torch.eye(i) if pi is None else pi).double())
    expected = ref.double() @ torch.block_diag(*blocks)
    if fp.final is not None:
        expected = expected @ fp.final.matrix().double() / math.sqrt(dim)
    assert (fp.final is not None) == (dim == 256)
    torch.testing.assert_close(feats.double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_help_states_what_is_identical_and_what_agrees_to_rounding(model):
    """Issue 15 item 7: 'features gradients --help' says the matrix is bit for bit the same on any shard or batch
    size and the projected values agree within 1e-5 of the largest |value|; both halves are checked here (devices:
    CPU only on this machine; the Rademacher matrix is built from integer operations, see projection.py)."""
    from vlselect.cli.features_gradients import gradients as cli_gradients

    doc = " ".join(cli_gradients.__doc__.split())
    assert "The matrix depends on the seed alone: bit for bit the same on any device, shard or batch size." in doc
    assert "they agree within 1e-5 of the largest |value|." in doc
    samples = random_samples(12, seed=7, min_len=8, max_len=30)  # varied lengths: padding differs by batch size
    feats, mats = {}, []
    for bs in (1, 2, 5, 12):
        eng = GradientEngine(model, projection="rademacher", dim=512, seed=0, block_bytes=bs * 2**20)
        feats[bs] = torch.cat([f for _, f, _ in eng.run([collate(samples[i : i + bs]) for i in range(0, 12, bs)])])
        mats.append(eng.dense.matrix())
    # the matrix: bit for bit, whatever the block size; a shard's rows generated alone are the same rows
    assert all(torch.equal(m, mats[0]) for m in mats[1:])
    assert torch.equal(Projection(mats[0].shape[0], 512, seed=0).matrix(1000, 3000), mats[0][1000:3000])
    # the values: within 1e-5 of the largest |value| (float32 rounding), for every batch size
    scale = float(feats[1].abs().max())
    for bs in (2, 5, 12):
        assert float((feats[bs] - feats[1]).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("buffer_bytes", [512 * 2**20, 0])  # buffered, and projected layer by layer
def test_one_pass_for_two_parameter_sets_equals_each_projection_of_the_exact_gradients(model, samples, reference,
                                                                                      buffer_bytes):
    """ICONS's every-LoRA gradients and TIVE's self-attention ones from one forward/backward (run_engines): each is
    its own seeded projection of the one-sample autograd gradients (an independent computation)."""
    from vlselect.errors import ConfigError
    from vlselect.features.gradients import run_engines

    _, ref, _ = reference
    attn = GradientEngine(model, params="self_attn", projection="rademacher", dim=128, seed=5,
                          buffer_bytes=buffer_bytes)
    lora = GradientEngine(model, params="lora", projection="rademacher", dim=256, seed=3, buffer_bytes=buffer_bytes)
    cols, offs = [], 0
    for n, p in model.named_parameters():
        if "lora_" in n:
            if "self_attn" in n:
                cols.append(torch.arange(offs, offs + p.numel()))
            offs += p.numel()
    sub = ref[:, torch.cat(cols)]
    batches = [collate(samples[i : i + 4]) for i in range(0, len(samples), 4)]
    out = list(run_engines([lora, attn], batches))
    assert [s for s, _ in out] == ([0, 4] if buffer_bytes == 0 else [0])
    fl = torch.cat([o[0][0] for _, o in out])
    fa = torch.cat([o[1][0] for _, o in out])
    torch.testing.assert_close(fl, ref @ Projection(ref.shape[1], 256, seed=3).matrix() / 16.0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fa, sub @ Projection(sub.shape[1], 128, seed=5).matrix() / math.sqrt(128),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([o[1][1] for _, o in out]), sub.norm(dim=1), rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="largest parameter set first"):
        list(run_engines([attn, lora], batches))
    GradientEngine(model, params="lora", projection="none")  # restore requires_grad for other tests
