"""MMA (specs/mma.md §8.10): identity at init, the trainable-parameter formula, side pass == in-sequence modality
token (logits and gradients), gradients under non-reentrant checkpointing, reentrant rejected, ViT routing modes."""

from __future__ import annotations

import pytest
import torch

from vlselect.errors import ConfigError
from vlselect.train.mma import (
    MMAdapter, attach_mma, mma_param_count, mma_routing, mma_state_dict, trainable_parameters,
)


def _tiny_llama(layers=3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, attn_implementation="eager")
    return LlamaForCausalLM(cfg)


def _perturb_experts(model, std=0.5):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "conv_B" in n or "conv_D" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module")
def tiny_llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    v = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         image_size=16, patch_size=8)
    t = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=2)
    cfg = LlavaConfig(vision_config=v, text_config=t, image_token_index=63, vision_feature_layer=-1,
                      vision_feature_select_strategy="default")
    return LlavaForConditionalGeneration(cfg)


def test_param_count_formula():
    assert mma_param_count(4096, 32) == 3_781_296
    assert mma_param_count(5120, 40) == 5_390_080
    assert mma_param_count(4096, 1, 1024, 0, include_proj=False) - 2 * 4096 == 81_930
    assert mma_param_count(1, 0, 1024, 1, include_proj=False) - 2 == 20_490


def test_attach_counts_and_freezes(tiny_llava):
    import copy

    model = copy.deepcopy(tiny_llava)
    attach_mma(model, seed=0)
    # 2 LLM layers of width 32, 2 CLIP layers of width 16, modality embedding 2 x 32, no adapter_proj
    assert trainable_parameters(model) == mma_param_count(32, 2, 16, 2, include_proj=False)
    assert all(("adapter" in n) == p.requires_grad for n, p in model.named_parameters())
    keys = set(mma_state_dict(model))
    assert "model.language_model.layers.0.input_layernorm.adapter.conv_A.weight" in keys
    assert "model.vision_tower.encoder.layers.1.layer_norm1.adapter.expert_weights.bias" in keys
    assert "adapter_modality_embedding.weight" in keys
    # base keys are unchanged (adapter is a child of the norm, applied by a hook)
    assert "model.language_model.layers.0.input_layernorm.weight" in model.state_dict()
    with pytest.raises(ConfigError, match="already attached"):
        attach_mma(model)


def test_identity_at_init(tiny_llava):
    import copy

    model = copy.deepcopy(tiny_llava).eval()
    ids = torch.randint(0, 60, (2, 6))
    ids[:, 1:3] = 63  # 2 image tokens? CLIP 16px / 8px -> 4 patches; use text only here
    ids = torch.randint(0, 60, (2, 6))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        attach_mma(model, seed=0)
        model.eval()
        with mma_routing(model, [1, 0]):
            got = model(input_ids=ids).logits
    assert torch.equal(ref, got)
    a = MMAdapter(16, routing="per_token").eval()
    x = torch.randn(2, 5, 16)
    assert torch.equal(a(x), x)


def _oracle_logits(model, ids, ind):
    """Official computation: modality token in the sequence, 4D mask with column 0 blocked for rows >= 1."""
    emb = model.get_input_embeddings()(ids)
    x = torch.cat([model.adapter_modality_embedding(ind)[:, None], emb], 1)
    n = x.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1)
    mask[1:, 0] = float("-inf")
    pos = torch.arange(n)[None].expand(len(ids), n)
    return model(inputs_embeds=x, attention_mask=mask[None, None].expand(len(ids), 1, n, n), position_ids=pos).logits[:, 1:]


def test_side_pass_equals_in_sequence_modality_token():
    model = _tiny_llama()
    attach_mma(model, dropout=0.0, seed=1)
    _perturb_experts(model)
    ids = torch.randint(0, 64, (3, 7))
    ind = torch.tensor([1, 0, 1])
    model.train()
    with mma_routing(model, ind) as w:
        side = model(input_ids=ids).logits
        side.square().mean().backward()
        # one routing vector per modality: rows 0 and 2 share weights, row 1 differs
        assert torch.equal(w[0][0], w[0][2]) and not torch.allclose(w[0][0], w[0][1])
    g_side = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    oracle = _oracle_logits(model, ids, ind)
    oracle.square().mean().backward()
    assert torch.allclose(side, oracle, atol=1e-6)
    assert len(g_side) == 3 * 8 + 1
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad.abs().sum() > 0, n
            assert torch.allclose(g_side[n], p.grad, atol=1e-7, rtol=1e-4), n
    # the oracle must be able to fail: routing by the wrong modality changes the logits
    with torch.no_grad(), mma_routing(model, 1 - ind):
        assert not torch.allclose(model(input_ids=ids).logits, oracle, atol=1e-4)


def _grads(model, ids, ind):
    model.zero_grad()
    with mma_routing(model, ind):
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradients_under_checkpointing():
    model = _tiny_llama()
    attach_mma(model, dropout=0.0, seed=1)
    _perturb_experts(model)
    model.train()
    ids = torch.randint(0, 64, (2, 9))
    ind = torch.tensor([0, 1])
    plain = _grads(model, ids, ind)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    ckpt = _grads(model, ids, ind)
    for n in plain:
        assert torch.allclose(plain[n], ckpt[n], atol=1e-7, rtol=1e-5), n
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ConfigError, match="use_reentrant=True"):
        _grads(model, ids, ind)


def test_vit_routing_modes():
    torch.manual_seed(0)
    a = MMAdapter(8, routing="per_token", dropout=0.0)
    b = MMAdapter(8, routing="official_batch0", dropout=0.0)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        torch.nn.init.normal_(m.conv_B.weight)
        m.conv_D.weight.data = -m.conv_B.weight.data.clone() if m is a else -a.conv_B.weight.data.clone()
    b.conv_B.weight.data = a.conv_B.weight.data.clone()
    x = torch.randn(3, 4, 8)
    # identical for batch size 1 (spec §2.2), different otherwise (sample 0 drives everybody)
    assert torch.allclose(a(x[:1]), b(x[:1]))
    assert torch.allclose(a(x)[0], b(x)[0])
    assert not torch.allclose(a(x)[1:], b(x)[1:])
    assert torch.allclose(b(x)[1], b(torch.stack([x[0], x[1]]))[1])


def test_llava_mma_trains_only_adapters(tiny_llava):
    import copy

    model = copy.deepcopy(tiny_llava)
    attach_mma(model, seed=0)
    _perturb_experts(model, 0.1)
    model.train()
    ids = torch.randint(0, 60, (2, 8))
    ids[0, 1:5] = 63  # 4 image tokens (16 px / 8 px patches, CLS dropped)
    pix = torch.randn(1, 3, 16, 16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with mma_routing(model, [1, 0]):
        loss = model(input_ids=ids, pixel_values=pix, labels=ids).loss
        loss.backward()
    vit_grad = model.model.vision_tower.encoder.layers[0].layer_norm1.adapter.conv_A.weight.grad
    assert vit_grad is not None and vit_grad.abs().sum() > 0
    opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(before[n], p.detach()) != ("adapter" in n), n


def test_generate_with_cache_equals_no_cache_loop():
    model = _tiny_llama()
    attach_mma(model, dropout=0.0, seed=1)
    _perturb_experts(model, 2.0)
    model.eval()
    model.generation_config.eos_token_id = None
    ids = torch.randint(3, 64, (2, 5))
    with torch.no_grad(), mma_routing(model, [1, 0]):
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=0)
        cur = ids
        for _ in range(6):
            nxt = model(input_ids=cur, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            cur = torch.cat([cur, nxt], 1)
    assert torch.equal(gen, cur)
    with torch.no_grad(), mma_routing(model, [0, 1]):  # the routing matters for what is generated
        other = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                               do_sample=False, pad_token_id=0)
    assert not torch.equal(gen, other)
