"""What the commands would do on a real checkpoint, and what they would cost, without a GPU and without weights.

The model is built from its ``config.json`` on the **meta device** (shapes only, no memory), so a 7B model is
inspected in seconds on a laptop: parameter counts, the LoRA target modules ``vlselect train`` would adapt, the
layers ``vlselect features activations`` would probe and the width of its rows, and an estimate of memory and
FLOPs per stage for a pool of a given size: ``vlselect plan --model llava-1.5-7b-hf --pool-size 665298``.

Built-in configs (``src/vlselect/models/configs/``, written from the public ``config.json`` files):
``llava-1.5-7b-hf``, ``qwen2-vl-2b-instruct``, ``qwen2-vl-7b-instruct`` and ``tinyllava-2.0b-hf`` (COINCIDE's
reference model, TinyLLaVA-2.0B, as a Hugging Face LLaVA config). Any model directory with a ``config.json`` works.

Cost model (estimates, documented so they can be checked; none is measured)
-------------------------------------------------------------------------
Tokens per sample ``T = image tokens + text tokens``. Image tokens: LLaVA = (image size / patch)² (minus nothing:
the CLS token is dropped, ``"full"`` keeps all patches); Qwen2-VL = patches of the image resized to multiples of
28 px, merged 2×2 (default image 640×480, COCO's usual size → 644×476 → 391 tokens). Text tokens default to 250.

* Forward FLOPs per sample: ``2·P_llm·T + 4·L·T²·H`` (dense matmuls + attention scores and values, Kaplan et al.
  2020) plus the vision tower's ``2·P_vis·V + 4·L_v·V²·H_v`` over its ``V`` patches. The features stage runs only
  the decoder layers up to the last probed one (the rest is cut, as the official COINCIDE code does).
* Backward = 2 × forward for full fine-tuning (weight and activation gradients); 1 × forward for LoRA (activation
  gradients only; LoRA's own weight gradients are negligible); gradient checkpointing adds one forward.
* Per-sample projected gradients (ICONS/LESS/TIVE): forward + LoRA backward, plus ``2·d·k`` for a dense
  random projection of the ``d`` LoRA gradients to ``k`` dimensions.
* Memory: weights 2 bytes/parameter (bf16); full fine-tuning with AdamW in mixed precision 16 bytes/parameter
  (bf16 weights and gradients, fp32 master copy and two moments; ZeRO-3 divides it by the number of GPUs); LoRA
  trainable parameters 16 bytes each. Training activations per layer ``s·b·H·(34 + 5·a·s/H)`` bytes (Korthikanti
  et al. 2022, fp16, no recomputation) or, with gradient checkpointing, ``2·s·b·H`` per layer plus one layer's
  full activations.
* GPU-hours = FLOPs / (effective throughput); the default 100 TFLOP/s is about 30-40 % of an A100's or 10-15 % of
  an H100's bf16 peak, typical of variable-length VLM batches. Pass ``--tflops`` for your hardware.

The selection stage's k-means cost (COINCIDE) comes from :func:`vlselect.cluster.kmeans_cost`, the one place that
estimates it (``vlselect select coincide --dry-run`` prints the same numbers).
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from vlselect.errors import ConfigError, ModelError

CONFIG_NAMES = ("llava-1.5-7b-hf", "qwen2-vl-2b-instruct", "qwen2-vl-7b-instruct", "tinyllava-2.0b-hf")

#: LLaVA-1.5's 12-benchmark suite sizes (VQAv2 test-dev, GQA, VizWiz, SQA-IMG, TextVQA, POPE, MME, MMBench en/cn,
#: LLaVA-W): the questions a full evaluation generates answers for.
EVAL_QUESTIONS = 107_394 + 12_578 + 8_000 + 2_017 + 5_000 + 8_910 + 2_374 + 4_377 + 4_329 + 60


@dataclass
class ModelFacts:
    """What the meta-device model says about a checkpoint."""

    name: str
    model_type: str
    family: str
    parameters: int
    llm_parameters: int  # decoder + embeddings + lm_head
    vision_parameters: int
    projector_parameters: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vision_hidden: int
    vision_layers: int
    vision_patches: int  # patches through the vision tower per image
    image_tokens: int  # tokens the LLM sees per image
    lora_modules: list[str] = field(default_factory=list)
    lora_shapes: list[tuple[int, int]] = field(default_factory=list)  # (in, out) per target module
    probed_layers: list[int] = field(default_factory=list)
    feature_width: int = 0

    def lora_parameters(self, r: int) -> int:
        """LoRA A and B of rank ``r`` on every target module: ``r·(in + out)`` each."""
        return sum(r * (i + o) for i, o in self.lora_shapes)


def config_path(name: str) -> Path:
    """Path of a built-in config JSON (:data:`CONFIG_NAMES`)."""
    return Path(str(resources.files("vlselect.models") / "configs" / f"{name}.json"))


def load_config(model):
    """A transformers config from a built-in name, a model directory or a ``config.json`` path."""
    from transformers import AutoConfig

    p = Path(str(model))
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        if str(model) not in CONFIG_NAMES:
            raise ConfigError(f"--model {model}: neither a model directory with a config.json nor a built-in config; "
                              f"pass a checkpoint folder or one of: {', '.join(CONFIG_NAMES)}")
        p = config_path(str(model))
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{p}: cannot read the model config ({exc}); pass the checkpoint's config.json") from None
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    if "model_type" not in data:
        raise ModelError(f"{p}: no 'model_type'; pass a Hugging Face config.json")
    try:
        return AutoConfig.for_model(**data)
    except (ValueError, KeyError) as exc:
        raise ModelError(f"{p}: transformers cannot build this config ({exc})") from None


def meta_model(config):
    """The model of ``config`` on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def _qwen_image_tokens(width: int, height: int, patch: int, merge: int, min_pixels: int = 56 * 56,
                       max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """Qwen2-VL's ``smart_resize``: sides rounded to multiples of patch·merge within the pixel limits; returns
    (vision patches, LLM tokens)."""
    f = patch * merge
    h, w = max(f, round(height / f) * f), max(f, round(width / f) * f)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / f) * f, math.floor(width / beta / f) * f
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
    patches = (h // patch) * (w // patch)
    return patches, patches // (merge * merge)


def _config_file(model) -> Path:
    p = Path(str(model))
    p = p / "config.json" if p.is_dir() else p
    return p if p.is_file() or str(model) not in CONFIG_NAMES else config_path(str(model))


def model_facts(model, *, image_size: tuple[int, int] = (640, 480), name: str | None = None) -> ModelFacts:
    """Inspect a checkpoint's config on the meta device: parameters, LoRA targets, probed layers, feature width.

    ``image_size`` (width, height) sets Qwen2-VL's dynamic number of image tokens; LLaVA's is fixed. Results are
    cached per config file and modification time (building a 7B model on the meta device takes ~1 s).
    """
    import copy

    cfg_file = _config_file(model)
    stamp = cfg_file.stat().st_mtime_ns if cfg_file.is_file() else 0
    facts = _model_facts(str(model), stamp, tuple(image_size))
    facts = copy.deepcopy(facts)
    facts.name = name or str(model)
    return facts


@functools.lru_cache(maxsize=16)
def _model_facts(model: str, _stamp: int, image_size: tuple[int, int]) -> ModelFacts:
    from torch import nn

    from vlselect.features.activations import array_specs, default_layers
    from vlselect.train.lora import _lora_target_regex

    cfg = load_config(model)
    m = meta_model(cfg)
    tc, vc = cfg.text_config, cfg.vision_config
    mt = cfg.model_type
    family = {"llava": "llava", "qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2-vl"}.get(mt, mt)

    def count(prefixes) -> int:
        return sum(p.numel() for n, p in m.named_parameters() if any(n.startswith(x) for x in prefixes))

    total = sum(p.numel() for p in m.parameters())
    if family == "llava":
        vision = count(["model.vision_tower."])
        proj = count(["model.multi_modal_projector."])
        patches = (vc.image_size // vc.patch_size) ** 2
        image_tokens = patches  # CLS dropped ("default") or absent (SigLIP, "full")
        v_hidden, v_layers = vc.hidden_size, vc.num_hidden_layers
    elif family == "qwen2-vl":
        proj = count(["model.visual.merger."])
        vision = count(["model.visual."]) - proj
        patches, image_tokens = _qwen_image_tokens(*image_size, vc.patch_size, vc.spatial_merge_size)
        v_hidden = getattr(vc, "embed_dim", None) or vc.hidden_size
        v_layers = vc.depth
    else:
        raise ConfigError(f"{model}: model type {mt!r} is not one vlselect plans for (llava, qwen2_vl)")
    regex = re.compile(_lora_target_regex(None))
    names, shapes = [], []
    for n, mod in m.named_modules():
        if isinstance(mod, nn.Linear) and regex.match(n):
            names.append(n)
            shapes.append((mod.in_features, mod.out_features))
    layers = default_layers(tc.num_hidden_layers)
    width = array_specs(tc.hidden_size, len(layers), False)["activations"][0]
    return ModelFacts(
        name=str(model), model_type=mt, family=family, parameters=total,
        llm_parameters=total - vision - proj, vision_parameters=vision, projector_parameters=proj,
        hidden_size=tc.hidden_size, num_layers=tc.num_hidden_layers, num_heads=tc.num_attention_heads,
        intermediate_size=tc.intermediate_size, vision_hidden=v_hidden, vision_layers=v_layers,
        vision_patches=patches, image_tokens=image_tokens, lora_modules=names, lora_shapes=shapes,
        probed_layers=layers, feature_width=width)


# --------------------------------------------------------------------------------------------------------------
# cost
# --------------------------------------------------------------------------------------------------------------


def forward_flops(f: ModelFacts, text_tokens: int, *, image: bool = True, layers: int | None = None) -> float:
    """FLOPs of one forward pass of one sample (through ``layers`` decoder layers; all by default)."""
    t = text_tokens + (f.image_tokens if image else 0)
    n = f.num_layers if layers is None else layers
    frac = n / f.num_layers
    llm_body = f.llm_parameters  # embeddings are lookups, but lm_head is a matmul: close enough at this scale
    flops = 2 * llm_body * t * frac + 4 * n * t * t * f.hidden_size
    if image:
        v = f.vision_patches
        flops += 2 * (f.vision_parameters + f.projector_parameters) * v + 4 * f.vision_layers * v * v * f.vision_hidden
    return float(flops)


def _train_activation_bytes(f: ModelFacts, seq: int, batch: int, checkpointing: bool) -> float:
    h, a, L = f.hidden_size, f.num_heads, f.num_layers
    full_layer = seq * batch * h * (34 + 5 * a * seq / h)
    if checkpointing:
        return 2.0 * seq * batch * h * L + full_layer
    return float(full_layer * L)


def plan(model, pool_size: int, *, budget: float = 0.2, text_tokens: int = 250, image_fraction: float = 0.94,
         image_size: tuple[int, int] = (640, 480), lora_r: int = 128, batch_size: int = 16,
         gradient_checkpointing: bool = True, proj_dim: int = 8192, warmup_fraction: float = 0.0962,
         epochs: int = 1, eval_questions: int = EVAL_QUESTIONS, eval_new_tokens: int = 10,
         tflops: float = 100.0, coincide_k: int = 10_000, name: str | None = None) -> dict:
    """Memory and FLOPs per stage of a selection run on a pool of ``pool_size`` rows.

    Parameters
    ----------
    model : str or path-like
        Built-in config name (:data:`CONFIG_NAMES`), model directory or config.json.
    pool_size : int
        Rows in the pool (LLaVA-665K: 665,298).
    budget : float
        Fraction selected and trained on.
    text_tokens : int
        Mean text tokens per row (assumption; LLaVA-665K's multi-turn rows are ~100-400).
    image_fraction : float
        Fraction of rows with an image (LLaVA-665K: ~94 %).
    lora_r, batch_size, gradient_checkpointing, epochs
        Training recipe (LLaVA-1.5 LoRA: r 128, global batch 128 = 8 GPUs × 16, 1 epoch).
    proj_dim : int
        Random-projection width of per-sample gradients (LESS: 8192).
    warmup_fraction : float
        Fraction of the pool the warm-up model trains on (ICONS's checkpoint-500: 9.62 % of 665K).
    eval_questions, eval_new_tokens
        Evaluation size (default: LLaVA-1.5's benchmark suite) and generated tokens per answer.
    tflops : float
        Effective throughput per GPU in TFLOP/s for the GPU-hour estimate.
    coincide_k : int
        COINCIDE's number of clusters for the selection stage's k-means (the paper's 10,000 for LLaVA-665K).

    Returns
    -------
    dict
        ``{"model": ModelFacts as dict, "assumptions": {...}, "stages": {name: {"flops", "gpu_hours",
        "memory_bytes", "output_bytes", "note"}}}``; ``stages["selection"]`` is COINCIDE's k-means
        (:func:`vlselect.cluster.kmeans_cost`), the only selection step that is not seconds on a CPU.
    """
    if pool_size < 1:
        raise ConfigError(f"--pool-size {pool_size}: give the number of rows in the pool (e.g. 665298)")
    if not 0 < budget <= 1:
        raise ConfigError(f"--budget {budget}: give a fraction in (0, 1], e.g. 0.2")
    f = model_facts(model, image_size=image_size, name=name)
    P, H, L = f.parameters, f.hidden_size, f.num_layers
    seq = text_tokens + f.image_tokens
    img_rows = image_fraction * pool_size

    def fwd(rows: float, layers: int | None = None) -> float:
        return (img_rows / pool_size * rows * forward_flops(f, text_tokens, image=True, layers=layers)
                + (1 - image_fraction) * rows * forward_flops(f, text_tokens, image=False, layers=layers))

    def hours(fl: float) -> float:
        return fl / (tflops * 1e12) / 3600

    weights = 2.0 * P
    lora_params = f.lora_parameters(lora_r) + f.projector_parameters  # the projector trains in full (LLaVA-1.5)
    ckpt_extra = 1 if gradient_checkpointing else 0
    act_train = _train_activation_bytes(f, seq, batch_size, gradient_checkpointing)
    act_infer = seq * batch_size * (4 * H + 2 * f.intermediate_size) * 2.0  # one layer's working set, bf16
    stages: dict[str, dict] = {}

    last = max(f.probed_layers) + 1
    fl = fwd(pool_size, layers=last)
    stages["features"] = {
        "flops": fl, "gpu_hours": hours(fl), "memory_bytes": weights + act_infer,
        "output_bytes": pool_size * f.feature_width * 2.0,
        "note": f"COINCIDE activations: decoder layers 0..{last - 1} of {L}, rows of {f.feature_width} float16"}
    from vlselect.cluster import kmeans_cost

    km = kmeans_cost(pool_size, f.feature_width, min(coincide_k, pool_size))
    stages["selection"] = {
        "flops": float(km["flops"]), "gpu_hours": hours(km["flops"]), "memory_bytes": float(km["ram_out_of_core_bytes"]),
        "output_bytes": pool_size * 8.0,
        "note": f"COINCIDE k-means, K={min(coincide_k, pool_size):,} (memory: host RAM out of core; in memory "
                f"{km['ram_in_memory_bytes'] / 1e9:,.0f} GB); other methods: minutes on a CPU"}
    warm_rows = warmup_fraction * pool_size
    fl = fwd(warm_rows) * (2 + ckpt_extra)
    stages["warmup"] = {
        "flops": fl, "gpu_hours": hours(fl), "memory_bytes": weights + 16.0 * lora_params + act_train,
        "output_bytes": 2.0 * lora_params,
        "note": f"LoRA r={lora_r} on {warmup_fraction:.2%} of the pool (ICONS/LESS/TIVE reference model)"}
    fl = fwd(pool_size) * 2 + 2.0 * f.lora_parameters(lora_r) * proj_dim * pool_size
    stages["gradients"] = {
        "flops": fl, "gpu_hours": hours(fl), "memory_bytes": weights + 4.0 * lora_params + act_train / batch_size
        + 4.0 * f.lora_parameters(lora_r) * 2,
        "output_bytes": pool_size * proj_dim * 2.0,
        "note": f"per-sample LoRA gradients projected to {proj_dim} (ICONS/LESS/TIVE), batch 1"}
    rows = budget * pool_size * epochs
    fl = fwd(rows) * (2 + ckpt_extra)
    stages["train_lora"] = {
        "flops": fl, "gpu_hours": hours(fl), "memory_bytes": weights + 16.0 * lora_params + act_train,
        "output_bytes": 2.0 * lora_params,
        "note": f"LoRA r={lora_r} ({f.lora_parameters(lora_r):,} + projector {f.projector_parameters:,} trainable) "
                f"on {budget:.0%} of the pool, {epochs} epoch(s)"}
    trainable_full = P - f.vision_parameters
    fl = fwd(rows) * (3 + ckpt_extra)
    stages["train_full"] = {
        "flops": fl, "gpu_hours": hours(fl), "memory_bytes": weights + 16.0 * trainable_full + act_train,
        "output_bytes": 2.0 * P,
        "note": "full fine-tuning (LLM + projector; vision frozen); memory is for one GPU without ZeRO: "
                "divide the 16 B/parameter part by the GPUs under ZeRO-3"}
    prompt = fwd(eval_questions)
    decode = eval_questions * eval_new_tokens * (2.0 * f.llm_parameters + 4 * L * seq * H)
    fl = prompt + decode
    stages["evaluation"] = {
        "flops": fl, "gpu_hours": hours(fl), "memory_bytes": weights + act_infer + 2.0 * 2 * L * seq * batch_size * H,
        "output_bytes": None,
        "note": f"{eval_questions:,} questions (LLaVA-1.5's suite), {eval_new_tokens} new tokens each; "
                "generation is memory-bound, so real time is several times this"}
    return {
        "model": asdict(f) | {"lora_parameters": f.lora_parameters(lora_r), "lora_module_count": len(f.lora_modules)},
        "pool_size": pool_size, "budget": budget,
        "assumptions": {"text_tokens": text_tokens, "image_tokens": f.image_tokens, "tokens_per_sample": seq,
                        "image_fraction": image_fraction, "image_size": list(image_size), "lora_r": lora_r,
                        "batch_size": batch_size, "gradient_checkpointing": gradient_checkpointing,
                        "proj_dim": proj_dim, "warmup_fraction": warmup_fraction, "epochs": epochs,
                        "tflops": tflops, "bytes_per_weight": 2},
        "stages": stages,
    }
