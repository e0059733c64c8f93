"""Mixture-of-Modality Adaptation (LaVIN's MMA) on Hugging Face VLMs (``specs/mma.md``).

What is attached (``attach_mma``):

- an **MM-adapter** (:class:`MMAdapter`, spec §3.3) after the pre-attention norm of every language-model block
  (``input_layernorm``), routed by the **modality token** (spec §3.4);
- a **router adapter** (the same class, per-token routing, spec §2.2) after the pre-attention norm of every
  vision-encoder block (``layer_norm1`` in CLIP/SigLIP, ``norm1`` in Qwen2-VL's ViT);
- ``adapter_modality_embedding`` (``Embedding(2, d_model)``: row 0 text-only, row 1 image+text).

Adapters are children of the norm they follow (``...input_layernorm.adapter.conv_A.weight``, the key layout of
spec §8.8) and are applied by a forward hook on the norm, so base-weight keys are unchanged and HF layer
checkpointing covers them. Only parameters whose name contains ``adapter`` train (spec §4, §8.7).

Routing uses the exact **side pass** of spec §8.4: the adapted decoder runs on the 1-token sequence
``[MOD_m]`` at position 0 with each MM-adapter recording ``softmax(router(x[:, 0]) / T)``; the main pass (without
the modality token) then uses the recorded weights. Because nobody attends to the modality token (spec §3.2) this
equals LaVIN's in-sequence computation; ``tests/test_mma.py`` checks it against that oracle.

Deviation (documented): LaVIN feeds 6 ViT [CLS] features through ``adapter_proj`` (spec §2.3-2.4). On an HF
LLaVA/Qwen2-VL we keep the model's own image-feature path and projector (frozen unless ``train_projector=True``),
so the count of :func:`mma_param_count` with ``include_proj=False`` is what :func:`attach_mma` adds.

Other deviations when training through :func:`vlselect.train.train_lora` (``adapter="mma"``): prompts come from the
model's chat template (not LaVIN's ``Image: …`` prefix and ``Instruction:/Response:`` strings, spec §3.1, §6.2), a
multi-turn record is trained as one dialogue with loss on every answer (LaVIN splits turns, spec §9.5), and the
warm-up is ``warmup_ratio`` of the steps with HF's cosine schedule (LaVIN: 2 warm-up epochs then half-cosine per
iteration, spec §5.2). Optimiser, weight-decay groups, learning-rate rule, adapter math and routing are LaVIN's.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from vlselect.errors import ConfigError


class RoutingContext:
    """Shared routing state of the MM-adapters of one model (spec §8.4).

    ``mode``: ``"sequence"`` (weights from ``x[:, 0]``, the in-sequence official computation), ``"record"``
    (same, and append the weights to ``record``: the side pass), or ``"given"`` (use ``weights[layer]``).
    """

    def __init__(self) -> None:
        self.mode = "sequence"
        self.weights: list[torch.Tensor] | None = None
        self.record: list[torch.Tensor] | None = None


class GroupedUp(nn.Module):
    """Point-wise grouped up-projection ``h → C`` (``Conv1d(h, C, 1, groups)`` without the kernel dim).

    Hidden chunk ``g`` (``h/groups`` units) produces output channels ``[g·C/groups, (g+1)·C/groups)``.
    """

    def __init__(self, hidden: int, out_features: int, groups: int) -> None:
        super().__init__()
        if hidden % groups or out_features % groups:
            raise ConfigError(f"adapter hidden {hidden} and width {out_features} must be divisible by groups={groups}")
        self.groups = groups
        self.weight = nn.Parameter(torch.zeros(out_features, hidden // groups))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        g = self.groups
        zs = z.reshape(*z.shape[:-1], g, z.shape[-1] // g)  # [..., g, h/g]
        w = self.weight.reshape(g, -1, self.weight.shape[-1])  # [g, C/g, h/g]
        y = torch.einsum("...gh,gch->...gc", zs, w)
        return y.reshape(*z.shape[:-1], -1) + self.bias


class MMAdapter(nn.Module):
    """LaVIN's ``RepAdapter_Router`` (spec §3.3): shared down-projection, two grouped up-projections (experts)
    mixed by soft routing weights.

    Parameters
    ----------
    in_features : int
        Feature width C.
    hidden_dim : int
        Bottleneck (``--adapter_dim``, 8).
    groups : int
        Groups of the up-projections (2).
    scale : float
        ``--adapter_scale`` (1).
    t : float
        Router temperature (``--temperature``: 10 for 7B, 5 for 13B).
    dropout : float
        Dropout on the bottleneck (0.1).
    routing : {"modality", "per_token", "official_batch0"}
        ``modality``: weights from position 0 / the routing context (LLM); ``per_token``: per sample and token
        (ViT default); ``official_batch0``: LaVIN's ViT quirk (sample 0's per-position weights for the batch).
    """

    def __init__(self, in_features: int, hidden_dim: int = 8, groups: int = 2, scale: float = 1.0, t: float = 10.0,
                 dropout: float = 0.1, routing: str = "modality", layer_idx: int = 0, ctx: RoutingContext | None = None):
        super().__init__()
        if routing not in ("modality", "per_token", "official_batch0"):
            raise ConfigError(f"unknown routing {routing!r}; use modality, per_token or official_batch0")
        self.conv_A = nn.Linear(in_features, hidden_dim)
        self.conv_B = GroupedUp(hidden_dim, in_features, groups)
        self.conv_D = GroupedUp(hidden_dim, in_features, groups)
        self.expert_weights = nn.Linear(in_features, 2)
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.conv_A.weight)
        nn.init.zeros_(self.conv_A.bias)
        self.scale, self.t, self.routing, self.layer_idx = scale, t, routing, layer_idx
        self.ctx = ctx  # plain attribute (not a submodule): shared by all adapters of a model

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Routing weights for input ``x`` [B, N, C]: [B, 2] (modality) or [B, N, 2] / [N, 2] (ViT)."""
        if self.routing == "per_token":
            return torch.softmax(self.expert_weights(x) / self.t, dim=-1)
        if self.routing == "official_batch0":
            return torch.softmax(self.expert_weights(x[0]) / self.t, dim=-1)
        ctx = self.ctx
        if ctx is not None and ctx.mode == "given":
            w = ctx.weights[self.layer_idx]
            if w.shape[0] != x.shape[0]:  # beams / repeated sequences
                w = w.repeat_interleave(x.shape[0] // w.shape[0], dim=0)
            return w
        w = torch.softmax(self.expert_weights(x[:, 0]) / self.t, dim=-1)
        if ctx is not None and ctx.mode == "record":
            ctx.record.append(w)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(self.conv_A.weight.dtype)
        w = self.route(xf).to(xf.dtype)
        if w.dim() == 2 and self.routing == "modality":
            w = w[:, None, :]  # [B, 1, 2]
        z = self.dropout(self.conv_A(xf))
        y = w[..., 0:1] * self.conv_B(z) + w[..., 1:2] * self.conv_D(z)
        return (xf + self.scale * y).to(x.dtype)


_PROJECTORS = ("multi_modal_projector", "visual.merger")  # LLaVA's projector, Qwen2-VL's (= train.lora.PROJECTOR_NAMES)


def _adapter_hook(module, args, output):
    return module.adapter(output)


def _find_blocks(model: nn.Module):
    """(language-model blocks, their norm attribute), (vision blocks, their norm attribute)."""
    llm, vit = [], []
    for name, mod in model.named_modules():
        if hasattr(mod, "input_layernorm") and hasattr(mod, "self_attn"):
            llm.append((name, mod, "input_layernorm"))
        elif hasattr(mod, "layer_norm1") and hasattr(mod, "self_attn"):
            vit.append((name, mod, "layer_norm1"))
        elif hasattr(mod, "norm1") and hasattr(mod, "attn") and "visual" in name:
            vit.append((name, mod, "norm1"))
    return llm, vit


def _d_model(model: nn.Module) -> int:
    return model.get_input_embeddings().weight.shape[1]


def attach_mma(model: nn.Module, *, adapter_dim: int = 8, groups: int = 2, adapter_scale: float = 1.0,
               temperature: float = 10.0, dropout: float = 0.1, vit_routing: str = "per_token",
               vision: bool = True, train_projector: bool = False, seed: int | None = None) -> RoutingContext:
    """Attach MM-adapters (LLM), router adapters (ViT) and the modality embedding; freeze everything else.

    Parameters
    ----------
    model : transformers model
        A VLM (LLaVA, Qwen2-VL) or a plain decoder (``LlamaForCausalLM``; then no ViT adapters).
    adapter_dim, groups, adapter_scale, temperature, dropout
        Spec §3.3 names and defaults (temperature 10 = the 7B scripts).
    vit_routing : {"per_token", "official_batch0"}
        Spec §2.2.
    vision : bool
        Put router adapters in the vision encoder.
    train_projector : bool
        Also train the model's multimodal projector (a deviation from "only adapters train"; default off).
    seed : int, optional
        Seed for the adapter initialisation.

    Returns
    -------
    RoutingContext
        Also stored as ``model.mma_ctx``.
    """
    if getattr(model, "mma_ctx", None) is not None:
        raise ConfigError("MMA adapters are already attached to this model")
    llm, vit = _find_blocks(model)
    if not llm:
        raise ConfigError(f"{type(model).__name__}: no decoder blocks with an 'input_layernorm' found; MMA needs a "
                          "pre-norm decoder (LLaMA, Qwen2, ...)")
    gen = torch.random.fork_rng() if seed is not None else contextlib.nullcontext()
    with gen:
        if seed is not None:
            torch.manual_seed(seed)
        ctx = RoutingContext()
        for i, (_, block, attr) in enumerate(llm):
            norm = getattr(block, attr)
            c = norm.weight.shape[0]
            norm.adapter = MMAdapter(c, adapter_dim, groups, adapter_scale, temperature, dropout, "modality", i, ctx)
            norm.register_forward_hook(_adapter_hook)
        if vision:
            for i, (_, block, attr) in enumerate(vit):
                norm = getattr(block, attr)
                c = norm.weight.shape[0]
                norm.adapter = MMAdapter(c, adapter_dim, groups, adapter_scale, temperature, dropout, vit_routing, i, None)
                norm.register_forward_hook(_adapter_hook)
        model.adapter_modality_embedding = nn.Embedding(2, _d_model(model))
    ref = next(model.parameters())
    for n, p in model.named_parameters():
        if "adapter" in n:
            p.data = p.data.float().to(ref.device)
        p.requires_grad_("adapter" in n or (train_projector and any(x in n for x in _PROJECTORS)))
    model.mma_ctx = ctx
    model.mma_n_layers = len(llm)
    return ctx


def _decoder(model: nn.Module) -> nn.Module:
    dec = model.get_decoder() if hasattr(model, "get_decoder") else model
    # LlavaForConditionalGeneration.get_decoder() -> LlavaModel.language_model; LlamaForCausalLM -> LlamaModel
    return dec


def _check_checkpointing(model: nn.Module) -> None:
    for mod in model.modules():
        if getattr(mod, "gradient_checkpointing", False) is True and hasattr(mod, "_gradient_checkpointing_func"):
            kw = getattr(mod._gradient_checkpointing_func, "keywords", {}) or {}
            if kw.get("use_reentrant", True):
                raise ConfigError(
                    "gradient checkpointing is enabled with use_reentrant=True: the MMA routing weights reach the "
                    "checkpointed layers through the routing context and their gradients would be lost (spec §8.4); "
                    "enable it with gradient_checkpointing_kwargs={'use_reentrant': False}"
                )


def routing_side_pass(model: nn.Module, indicator: torch.Tensor) -> list[torch.Tensor]:
    """Run the side pass (spec §8.4): the decoder on ``[MOD_m]`` at position 0; returns per-layer [B, 2] weights.

    Gradients flow (training); layer checkpointing is switched off for this 1-token pass.
    """
    ctx: RoutingContext = model.mma_ctx
    _check_checkpointing(model)
    emb = model.adapter_modality_embedding(indicator.long().to(model.adapter_modality_embedding.weight.device))
    dec = _decoder(model)
    dtype = dec.get_input_embeddings().weight.dtype
    toggled = [m for m in dec.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in toggled:
        m.gradient_checkpointing = False
    ctx.mode, ctx.record = "record", []
    try:
        pos = torch.zeros(emb.shape[0], 1, dtype=torch.long, device=emb.device)
        dec(inputs_embeds=emb[:, None, :].to(dtype), position_ids=pos, use_cache=False)
        weights = ctx.record
    finally:
        ctx.mode, ctx.record = "sequence", None
        for m in toggled:
            m.gradient_checkpointing = True
    if len(weights) != model.mma_n_layers:
        raise ConfigError(f"side pass recorded {len(weights)} routing weights for {model.mma_n_layers} adapted layers")
    return weights


@contextlib.contextmanager
def mma_routing(model: nn.Module, indicator):
    """Context in which every forward (training step or ``generate``) uses the routing of ``indicator``.

    ``indicator`` is a [B] tensor (or list): 1 = the sample has an image, 0 = text-only. Weights are kept (with
    their graph) until the context exits, so call ``backward()`` inside it.
    """
    ctx: RoutingContext = model.mma_ctx
    if not torch.is_tensor(indicator):
        indicator = torch.tensor(list(indicator), dtype=torch.long)
    weights = routing_side_pass(model, indicator)
    ctx.mode, ctx.weights = "given", weights
    try:
        yield weights
    finally:
        ctx.mode, ctx.weights = "sequence", None


def mma_param_count(d_model: int, n_layers: int, vit_width: int = 1024, vit_layers: int = 24, *,
                    adapter_dim: int = 8, groups: int = 2, hidden_proj: int = 128, include_proj: bool = True) -> int:
    """Trainable parameters of MMA (spec §4): LLM MM-adapters + ViT router adapters + ``adapter_proj`` +
    modality embedding.

    Per adapter of width C: ``C·h + h`` (down) + 2 × ``(h/groups·C + C)`` (experts) + ``2C + 2`` (router).

    Examples
    --------
    >>> mma_param_count(4096, 32)
    3781296
    >>> mma_param_count(5120, 40)
    5390080
    """

    def per(c: int) -> int:
        return c * adapter_dim + adapter_dim + 2 * (adapter_dim // groups * c + c) + 2 * c + 2

    total = n_layers * per(d_model) + vit_layers * per(vit_width) + 2 * d_model
    if include_proj:
        total += vit_width * hidden_proj + hidden_proj + hidden_proj * d_model + d_model
    return total


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def mma_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (what LaVIN checkpoints store, spec §4)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if "adapter" in k}


def mma_param_groups(model: nn.Module, weight_decay: float = 0.02) -> list[dict]:
    """timm-style groups (spec §5.2): no decay for ndim ≤ 1 and ``.bias``; ``weight_decay`` for the rest."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or n.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lavin_lr(blr: float = 9e-3, effective_batch: int = 32) -> float:
    """LaVIN's actual learning rate ``blr · effective_batch / 256`` (spec §5.1)."""
    return blr * effective_batch / 256


def cosine_warmup_lambda(total_steps: int, warmup_steps: int):
    """Linear warm-up then half-cosine to 0 (spec §5.2; also LLaVA's cosine schedule)."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        rest = max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / rest)))

    return f
