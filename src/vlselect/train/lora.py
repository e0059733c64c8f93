"""Fine-tuning a Hugging Face VLM on a pool or subset: LoRA (PEFT) or Mixture-of-Modality adapters.

Recipe defaults are LLaVA-1.5's LoRA script (``scripts/v1_5/finetune_lora.sh``): ``r=128``, ``lora_alpha=256``,
``lora_dropout=0.05``, LoRA on every linear layer of the language model, the multimodal projector trained in full
with ``mm_projector_lr=2e-5``, ``learning_rate=2e-4``, 1 epoch, cosine schedule with ``warmup_ratio=0.03``, no
weight decay, per-device batch 16 (× 8 GPUs = 128 in the official run: on one GPU use ``grad_accum=8``), loss on
assistant tokens only (labels from :func:`vlselect.models.encode_sample`), non-reentrant gradient checkpointing,
bf16 where the hardware has it. ``adapter="full"`` is LLaVA-1.5's full fine-tuning recipe instead (language model and
projector trained, vision tower frozen unless named in ``modules_to_save``; lr 2e-5); ``adapter="mma"`` trains LaVIN's adapters instead (``specs/mma.md`` §5:
AdamW(0.9, 0.95), weight decay 0.02 except biases/1-D, lr ``9e-3 × effective batch / 256``).

Output folder
-------------
``checkpoint-{step}/``
    trainable tensors, optimiser, scheduler, RNG states and ``state.json`` (step, loss curve): a run started again
    with the same arguments resumes from the last one, and ends with the same weights as an uninterrupted run.
``final/``
    LoRA and full: the merged / trained model (``save_pretrained`` + processor; loads with :func:`vlselect.models.load_vlm`).
    MMA: the adapter tensors (``adapter_model.safetensors``) and ``vlselect_adapter.json`` naming the base model;
    load with :func:`vlselect.train.load_trained` (which also loads a merged LoRA model).
``adapter/``
    LoRA only: the PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``) for ``--adapter``.
``train_result.json``
    The :class:`TrainResult` of the finished run.

Multi-GPU: launch the same command with ``torchrun --nproc_per_node N --no-python vlselect train ...``
(or ``accelerate launch`` of a script calling :func:`train_lora`). Each rank takes every N-th micro-batch of a step, gradients are all-reduced (averaged) before the
optimiser step, and rank 0 writes. The per-step sample count is ``batch_size × grad_accum × N``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from vlselect.errors import ConfigError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROJECTOR_NAMES = ("multi_modal_projector", "visual.merger")


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes
    ----------
    out_dir : Path
    final_dir : Path or None
        Loadable model (see module docstring); ``None`` when the run stopped early (``stop_after_steps``).
    adapter_dir : Path or None
        PEFT adapter (LoRA) or the MMA adapter folder.
    checkpoints : list of Path
    losses : list of float
        Mean training loss of every optimiser step.
    steps, total_steps : int
    samples : int
        Samples seen by this process in this call.
    samples_per_second : float
    peak_memory_bytes : int
        CUDA peak allocation, or the process's peak RSS on CPU.
    trainable_parameters : int
    adapter : str
    padding : float or None
        Share of the token positions of this call's batches that were padding (``length_group`` lowers it).
    """

    out_dir: Path
    final_dir: Path | None
    adapter_dir: Path | None
    checkpoints: list[Path] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    total_steps: int = 0
    samples: int = 0
    samples_per_second: float = 0.0
    peak_memory_bytes: int = 0
    trainable_parameters: int = 0
    adapter: str = "lora"
    padding: float | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("out_dir", "final_dir", "adapter_dir"):
            d[k] = None if d[k] is None else str(d[k])
        d["checkpoints"] = [str(p) for p in self.checkpoints]
        return d


def _atomic_json(path: Path, obj) -> None:
    from vlselect.artifact import atomic_write_json

    atomic_write_json(path, obj, indent=2, sort_keys=False)


def _peak_memory(device) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except Exception:  # noqa: BLE001
        return 0


def language_model_targets(names: Sequence[str]) -> str:
    """A PEFT ``target_modules`` regex for the linear layers ``names`` (among :data:`LORA_TARGETS`) of the language
    model only: a bare name list would also match the vision tower's layers of the same name (CLIP's ``q_proj``).

    >>> import re
    >>> rx = language_model_targets(["gate_proj", "up_proj", "down_proj"])
    >>> bool(re.match(rx, "model.language_model.layers.0.mlp.up_proj")), bool(re.match(rx, "model.language_model.layers.0.self_attn.q_proj"))
    (True, False)
    >>> bool(re.match(language_model_targets(["q_proj"]), "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj"))
    False
    """
    bad = [n for n in names if n not in LORA_TARGETS]
    if bad or not names:
        raise ConfigError(f"LoRA targets {', '.join(map(repr, bad)) or '(none)'}: give one or more of "
                          f"{', '.join(LORA_TARGETS)}")
    return r"^(?!.*(vision_tower|visual|multi_modal_projector)).*\.(" + "|".join(names) + r")$"


def _lora_target_regex(target_modules) -> str | list[str]:
    if target_modules:
        return list(target_modules) if not isinstance(target_modules, str) else target_modules
    # every linear of the language model, none in the vision tower / projector / lm_head (LLaVA find_all_linear_names)
    return language_model_targets(LORA_TARGETS)


def _checkpoints(out: Path) -> list[Path]:
    cps = [p for p in out.glob("checkpoint-*") if (p / "state.json").exists() and p.name.split("-")[-1].isdigit()]
    return sorted(cps, key=lambda p: int(p.name.split("-")[-1]))


def _rng_state() -> dict:
    import torch

    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    import torch

    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _save_checkpoint(out: Path, step: int, model, optimizer, scheduler, state: dict) -> Path:
    import torch

    final = out / f"checkpoint-{step}"
    tmp = out / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    from vlselect.artifact import atomic_torch_save, replace_dir

    atomic_torch_save(tmp / "trainable.pt", trainable)
    atomic_torch_save(tmp / "optimizer.pt", optimizer.state_dict())
    atomic_torch_save(tmp / "scheduler.pt", scheduler.state_dict())
    atomic_torch_save(tmp / "rng.pt", _rng_state())
    _atomic_json(tmp / "state.json", state)
    replace_dir(tmp, final)
    return final


def load_trainable(model, cp: Path, fix: str) -> dict:
    """Copy a checkpoint's ``trainable.pt`` (the trained parameters by name) into ``model`` and return it; a name
    the model lacks is a :class:`ConfigError` naming the checkpoint, the parameter and ``fix``."""
    import torch

    trainable = torch.load(cp / "trainable.pt", map_location="cpu")
    params = dict(model.named_parameters())
    missing = [n for n in trainable if n not in params]
    if missing:
        raise ConfigError(f"{cp}: checkpoint holds parameters this model does not have ({missing[0]}, ...); {fix}")
    with torch.no_grad():
        for n, t in trainable.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
    return trainable


def _load_checkpoint(cp: Path, model, optimizer, scheduler) -> dict:
    import torch

    load_trainable(model, cp, "resume with the same --model and --adapter options, or pass --no-resume / a new --out")
    optimizer.load_state_dict(torch.load(cp / "optimizer.pt", map_location="cpu"))
    scheduler.load_state_dict(torch.load(cp / "scheduler.pt", map_location="cpu"))
    _set_rng_state(torch.load(cp / "rng.pt", map_location="cpu", weights_only=False))
    return json.loads((cp / "state.json").read_text())


def _progress(enabled: bool):
    from vlselect.progress import progress_bar

    return progress_bar("train", enabled=enabled, unit="steps")


def _adamw_with_projector_lr(model, lr: float, projector_lr: float, wd: float):
    """AdamW over the trainable parameters (made float32), the projector's own weights at ``projector_lr`` (LoRA
    A/B inside the projector, if any, stay at ``lr``)."""
    import torch

    proj, rest = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            p.data = p.data.float()
            (proj if any(x in n for x in PROJECTOR_NAMES) and "lora_" not in n else rest).append(p)
    groups = [{"params": rest, "lr": lr, "weight_decay": wd}]
    if proj:
        groups.append({"params": proj, "lr": projector_lr, "weight_decay": wd})
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def train_lora(
    model_dir,
    pool,
    image_root,
    out_dir,
    *,
    indices: Sequence[int] | None = None,
    adapter: str = "lora",
    r: int = 128,
    lora_alpha: int = 256,
    lora_dropout: float = 0.05,
    lr: float | None = None,
    projector_lr: float | None = None,
    train_projector: bool = True,
    epochs: int = 1,
    batch_size: int = 16,
    grad_accum: int = 1,
    length_group: int = 0,
    warmup_ratio: float = 0.03,
    schedule: str = "cosine",
    weight_decay: float | None = None,
    max_steps: int | None = None,
    save_steps: Sequence[int] = (),
    seed: int = 0,
    gradient_checkpointing: bool = True,
    bf16: bool | str = "auto",
    resume: bool = True,
    target_modules=None,
    modules_to_save: Sequence[str] | None = None,
    mma_kwargs: dict | None = None,
    max_length: int | None = None,
    stop_after_steps: int | None = None,
    progress: bool = True,
    device=None,
    on_batch=None,
    overwrite: bool = False,
) -> TrainResult:
    """Fine-tune ``model_dir`` on a pool (or the ``indices`` of it) with LoRA or MMA adapters.

    Parameters
    ----------
    model_dir : path-like
        Hugging Face model directory (real or :func:`vlselect.models.tiny.build_tiny`).
    pool : path-like, Pool or list of Sample
        Training data (a subset exported by ``vlselect select`` is a pool).
    image_root : path-like
        Folder the image paths are relative to.
    out_dir : path-like
        Output folder (see module docstring).
    indices : sequence of int, optional
        Positions in ``pool`` to train on (default all).
    adapter : {"lora", "full", "projector", "mma"}
        ``"full"``: every parameter of the language model and the projector is trained (LLaVA-1.5's main recipe),
        plus any module named in ``modules_to_save`` (e.g. ``"vision_tower"``); ``r``/``lora_*`` are ignored.
        ``"projector"``: only the multimodal projector is trained (plus any module in ``modules_to_save``), the
        language model frozen (LLaVA-1.5 stage 1, feature alignment on captions; its recipe: lr 1e-3, batch 256,
        1 epoch).
    r, lora_alpha, lora_dropout : LoRA rank (128), alpha (256), dropout (0.05).
    lr : float, optional
        Learning rate; default 2e-4 (LoRA), 2e-5 (full) or ``9e-3 × effective batch / 256`` (MMA, spec §5.1).
    projector_lr : float
        Learning rate of the multimodal projector (``mm_projector_lr``): default 2e-5 for LoRA, ``lr`` for full
        fine-tuning (LLaVA-1.5 sets none there). Ignored for MMA.
    train_projector : bool
        Train the projector in full (LLaVA LoRA recipe: yes). Ignored for MMA (adapters only).
    epochs, batch_size, grad_accum : int
        1 epoch; per-device batch 16; accumulation 1.
    length_group : int
        0 (LLaVA's order: one shuffle per epoch). ``m > 0``: each step's samples are drawn from ``m`` steps'
        worth of the shuffle and have similar token counts (:func:`vlselect.train.data.global_schedule`), which
        cuts padding (a random batch of the benchmark's world is 34% padding; ``m = 4``: 14%); the lengths come
        from the encodings, so every sample is encoded before the first step.
    warmup_ratio, schedule : float, str
        0.03 and ``"cosine"`` (any ``transformers.get_scheduler`` name).
    weight_decay : float, optional
        Default 0 (LoRA) or 0.02 with timm groups (MMA).
    max_steps : int, optional
        Cap on optimiser steps (the schedule is built for the capped length).
    save_steps : sequence of int
        Optimiser steps after which a checkpoint is written (the end is always saved).
    seed : int
        Seeds adapter initialisation, data order and dropout: same seed → identical weights.
    gradient_checkpointing : bool
        Non-reentrant layer checkpointing.
    bf16 : bool or "auto"
        ``"auto"`` = CUDA with bf16 support.
    resume : bool
        Continue from the last ``checkpoint-*`` in ``out_dir``; a finished run is returned as is. Only a run of the
        same inputs is resumed (its content key: the model hash, the pool fingerprint, the exact indices, every
        option above and the code version); a folder holding another run is an :class:`ArtifactMismatchError`
        naming what differs. ``resume=False`` starts over (same as ``overwrite``).
    target_modules : list of str or regex, optional
        LoRA targets (default: all linear layers of the language model).
    modules_to_save : list of str, optional
        LoRA: further modules trained in full at ``lr`` (PEFT ``modules_to_save``), e.g. ``["lm_head"]``; full:
        frozen modules to train as well (e.g. ``["vision_tower"]``). Not
        in the LLaVA recipe; useful for tiny random models whose frozen ``lm_head`` (init std 0.02) caps the logit
        range so that the loss cannot fall far below log(vocab).
    mma_kwargs : dict, optional
        Passed to :func:`vlselect.train.mma.attach_mma` (``temperature``, ``adapter_dim``, ``vit_routing``...).
    max_length : int, optional
        Longer samples raise (never truncated silently).
    stop_after_steps : int, optional
        Stop (after checkpointing) once this many optimiser steps are done; run again to continue.
    progress : bool
        Show progress with loss and samples/s (:mod:`vlselect.progress`).
    on_batch : callable, optional
        Called after each micro-batch's forward as ``on_batch(step, rows, logits, labels, last)``: 1-based
        optimiser step, the micro-batch's pool positions, its logits and labels, and whether it is this rank's last
        micro-batch of the step (e.g. :class:`vlselect.features.dynamics.MarginRecorder`).
    overwrite : bool
        Empty ``out_dir`` and train from scratch whatever it holds.

    Returns
    -------
    TrainResult

    References
    ----------
    LLaVA-1.5 LoRA recipe (issue 6 item 1); ``specs/mma.md`` §4-§5, §8.

    Examples
    --------
    >>> res = train_lora("tiny", "subset.json", "images", "runs/lora", epochs=1)  # doctest: +SKIP
    >>> res.final_dir  # doctest: +SKIP
    PosixPath('runs/lora/final')
    """
    from vlselect.train.data import open_training_pool

    if adapter not in ("lora", "full", "projector", "mma"):
        raise ConfigError(f"unknown adapter {adapter!r}; choose --adapter lora, full, projector or mma")
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("grad_accum", grad_accum), ("r", r)):
        if int(v) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {v})")
    if int(length_group) < 0:
        raise ConfigError(f"--length-group must be 0 (off) or a number of steps (got {length_group})")
    if not 0 <= warmup_ratio < 1:
        raise ConfigError(f"--warmup-ratio must be in [0, 1) (got {warmup_ratio})")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps must be at least 1 (got {max_steps})")

    from vlselect.executor import current

    ex = current().init()
    rank, world, local = ex.rank, ex.world_size, ex.local_rank
    out = Path(out_dir)
    done = out / "train_result.json"

    data_pool = open_training_pool(pool)
    n_pool = len(data_pool)
    idx = list(range(n_pool)) if indices is None else [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < n_pool]
    if bad:
        raise ConfigError(f"index {bad[0]} is outside the pool of {n_pool} records; fix the subset indices")
    if not idx:
        raise ConfigError("nothing to train on: the pool / subset is empty")
    run_config = {"adapter": adapter, "seed": seed, "epochs": epochs, "batch_size": batch_size, "grad_accum": grad_accum,
                  "world_size": world, "lr": lr, "projector_lr": projector_lr, "train_projector": train_projector,
                  "r": r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout, "weight_decay": weight_decay,
                  "max_steps": max_steps, "length_group": length_group, "warmup_ratio": warmup_ratio, "schedule": schedule, "n_train": len(idx),
                  "target_modules": target_modules, "modules_to_save": list(modules_to_save or []),
                  "mma_kwargs": dict(mma_kwargs or {}), "max_length": max_length, "bf16": bf16,
                  "gradient_checkpointing": gradient_checkpointing}
    art = training_artifact(out, model_dir, data_pool, idx, image_root, run_config)
    with contextlib.ExitStack() as held:
        if rank == 0:  # one writer: the folder is locked, checked against the key (or cleared), then trained into
            held.enter_context(art.writing(overwrite=overwrite or not resume))
        _barrier(world)
        if art.done:
            data = json.loads(done.read_text())
            data.pop("config", None)
            data.pop("key", None)
            return TrainResult(**{**data, "out_dir": out, "final_dir": Path(data["final_dir"]),
                                  "adapter_dir": Path(data["adapter_dir"]) if data.get("adapter_dir") else None,
                                  "checkpoints": [Path(p) for p in data["checkpoints"]]})
        return _train(model_dir, data_pool, image_root, out, art, idx, run_config, ex, adapter=adapter, r=r,
                      lora_alpha=lora_alpha, lora_dropout=lora_dropout, lr=lr, projector_lr=projector_lr,
                      train_projector=train_projector, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
                      length_group=length_group, warmup_ratio=warmup_ratio, schedule=schedule, weight_decay=weight_decay, max_steps=max_steps,
                      save_steps=save_steps, seed=seed, gradient_checkpointing=gradient_checkpointing, bf16=bf16,
                      target_modules=target_modules, modules_to_save=modules_to_save, mma_kwargs=mma_kwargs,
                      max_length=max_length, stop_after_steps=stop_after_steps, progress=progress, device=device,
                      on_batch=on_batch)


#: what a training run's result depends on besides its options (its code version)
CODE_MODULES = ("vlselect.train", "vlselect.models.encode", "vlselect.models.load")


def training_artifact(out: Path, model_dir, data_pool, idx: Sequence[int], image_root, run_config: dict):
    """The :class:`vlselect.artifact.Artifact` of a training run: its key covers the model (hash of its weights),
    the pool (fingerprint, or a digest of the samples for an in-memory list), the exact indices, the image folder,
    every option and the code version."""
    from dataclasses import asdict, is_dataclass

    from vlselect.artifact import Artifact, code_version, digest, ids_digest
    from vlselect.models.load import model_hash

    fp = getattr(data_pool, "fingerprint", None)
    if not fp:
        fp = digest([asdict(s) if is_dataclass(s) else repr(s) for s in data_pool])
    inputs = {"model": model_hash(model_dir), "pool": fp, "indices": ids_digest(idx),
              "images": None if image_root is None else str(Path(image_root).resolve())}
    return Artifact(out, stage="train", config=run_config, inputs=inputs, code=code_version(*CODE_MODULES),
                    done_marker="train_result.json")


def _train(model_dir, data_pool, image_root, out: Path, art, idx, run_config, ex, *, adapter, r, lora_alpha,
           lora_dropout, lr, projector_lr, train_projector, epochs, batch_size, grad_accum, length_group, warmup_ratio, schedule,
           weight_decay, max_steps, save_steps, seed, gradient_checkpointing, bf16, target_modules, modules_to_save,
           mma_kwargs, max_length, stop_after_steps, progress, device, on_batch=None) -> TrainResult:
    import torch

    from vlselect.models import load_vlm
    from vlselect.train import mma as mma_mod
    from vlselect.train.data import encode_batch, encode_cache, global_schedule, micro_batches

    rank, world, local = ex.rank, ex.world_size, ex.local_rank
    done = out / "train_result.json"
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    use_bf16 = (device.type == "cuda" and torch.cuda.is_bf16_supported()) if bf16 == "auto" else bool(bf16)
    torch.manual_seed(seed)
    loaded = load_vlm(model_dir, dtype=torch.bfloat16 if use_bf16 else torch.float32, device=device)
    model = loaded.model
    if gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})

    eff_batch = batch_size * grad_accum * world
    mma_cfg = dict(mma_kwargs or {})
    if adapter == "lora":
        from peft import LoraConfig, get_peft_model

        extra_modules, modules_to_save = list(modules_to_save or []), None
        if train_projector:
            names = {n for n, _ in model.named_modules()}
            modules_to_save = [p.split(".")[-1] for p in PROJECTOR_NAMES
                               if any(n.endswith(p) for n in names)] or None
        if extra_modules:
            modules_to_save = (modules_to_save or []) + [m for m in extra_modules if m not in (modules_to_save or [])]
        cfg = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none",
                         target_modules=_lora_target_regex(target_modules), modules_to_save=modules_to_save)
        torch.manual_seed(seed)
        from vlselect.models.peft_wrap import quiet_peft_wrap

        with quiet_peft_wrap():
            model = get_peft_model(model, cfg)
        if device.type == "cpu":  # the same dropout, its mask drawn 4x faster (vlselect.train.dropout)
            from vlselect.train import dropout as dropout_mod

            dropout_mod.use_pcg_dropout(model)
        lr = 2e-4 if lr is None else lr
        projector_lr = 2e-5 if projector_lr is None else projector_lr
        wd = 0.0 if weight_decay is None else weight_decay
        optimizer = _adamw_with_projector_lr(model, lr, projector_lr, wd)
    elif adapter == "full":
        lr = 2e-5 if lr is None else lr
        projector_lr = lr if projector_lr is None else projector_lr
        wd = 0.0 if weight_decay is None else weight_decay
        extra = tuple(modules_to_save or ())
        frozen = ("vision_tower", "visual.")  # the vision encoder; its projector (Qwen2-VL's visual.merger) trains
        for n, p in model.named_parameters():
            p.requires_grad_(not any(f in n for f in frozen) or any(m in n for m in extra + PROJECTOR_NAMES))
        optimizer = _adamw_with_projector_lr(model, lr, projector_lr, wd)
    elif adapter == "projector":  # LLaVA-1.5 stage 1: the projector alone
        lr = 1e-3 if lr is None else lr
        projector_lr = lr if projector_lr is None else projector_lr
        wd = 0.0 if weight_decay is None else weight_decay
        extra = tuple(modules_to_save or ())  # e.g. the vision tower, trained through the frozen language model
        for n, p in model.named_parameters():
            p.requires_grad_(any(m in n for m in PROJECTOR_NAMES + extra))
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError(f"{model_dir}: the model has no multimodal projector ({', '.join(PROJECTOR_NAMES)}) "
                              "to align; use --adapter full or lora")
        optimizer = _adamw_with_projector_lr(model, lr, projector_lr, wd)
    else:
        mma_mod.attach_mma(model, seed=seed, **mma_cfg)
        lr = mma_mod.lavin_lr(9e-3, eff_batch) if lr is None else lr
        wd = 0.02 if weight_decay is None else weight_decay
        optimizer = torch.optim.AdamW(mma_mod.mma_param_groups(model, wd), lr=lr, betas=(0.9, 0.95), eps=1e-8)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    lengths = None
    if length_group:
        cache = encode_cache()
        lengths = [int(cache.encode(loaded, data_pool[i], image_root, max_length=max_length)["input_ids"].shape[0])
                   for i in idx]
    plan = global_schedule(len(idx), epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
                           world_size=world, seed=seed, max_steps=max_steps, lengths=lengths,
                           length_group=length_group)
    total = len(plan)
    from transformers import get_scheduler

    try:
        scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=math.ceil(warmup_ratio * total),
                                  num_training_steps=total)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"unknown --schedule {schedule!r} ({exc}); use cosine, linear or constant_with_warmup") from None

    start, losses, checkpoints = 0, [], []
    if True:  # the folder holds only this run's checkpoints (its key was checked, or it was cleared)
        cps = _checkpoints(out)
        if cps:
            st = _load_checkpoint(cps[-1], model, optimizer, scheduler)
            if st.get("total_steps") != total:
                raise ConfigError(f"{cps[-1]}: checkpoint of a run with {st.get('total_steps')} steps, this run has "
                                  f"{total}; resume with the same options, or pass --no-resume / a new --out")
            start, losses, checkpoints = int(st["step"]), list(st["losses"]), [Path(p) for p in st["checkpoints"]]
    torch.manual_seed(seed + 1) if start == 0 else None  # dropout stream independent of init; restored on resume

    trainable = [p for p in model.parameters() if p.requires_grad]
    save_at = {int(s) for s in save_steps}
    stop = total if stop_after_steps is None else min(total, start + int(stop_after_steps))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seen, t0 = 0, time.perf_counter()
    tokens = positions = 0
    kill_after = int(os.environ.get("VLSELECT_TEST_KILL_AFTER_STEPS", "0") or 0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else None
    model.train()
    with _progress(progress and rank == 0) as bar:
        task = bar.add_task("", total=total, completed=start)
        for step in range(start, stop):
            mbs = micro_batches(plan[step], batch_size=batch_size, rank=rank, world_size=world)
            n_micro = max(1, math.ceil(len(plan[step]) / batch_size))  # micro-batches of this step, all ranks
            step_loss = 0.0
            for mb in mbs:
                samples = [data_pool[idx[p]] for p in mb]
                batch = encode_batch(loaded, samples, image_root, max_length=max_length)
                tokens += int(batch["attention_mask"].sum())
                positions += batch["attention_mask"].numel()
                ctx_mma = (mma_mod.mma_routing(model, [1 if s.images else 0 for s in samples])
                           if adapter == "mma" else _null())
                with ctx_mma, (autocast or _null()):
                    fwd = model(**batch)
                    loss = fwd.loss
                    (loss / n_micro).backward()  # mean over the step's micro-batches (summed over ranks below)
                if on_batch is not None:
                    on_batch(step + 1, [idx[p] for p in mb], fwd.logits, batch["labels"], mb is mbs[-1])
                del fwd
                step_loss += float(loss.detach()) / n_micro
                seen += len(samples)
            if world > 1:
                import torch.distributed as dist

                for p in trainable:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                lt = torch.tensor([step_loss], device=device)
                dist.all_reduce(lt)
                step_loss = float(lt)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
            done_steps = step + 1
            rate = seen / max(1e-9, time.perf_counter() - t0)
            bar.update(task, advance=1, description=f"loss {step_loss:.4f} · {rate * world:.1f} samples/s")
            if done_steps in save_at or done_steps == stop:
                state = {"step": done_steps, "total_steps": total, "losses": losses,
                         "checkpoints": [str(c) for c in checkpoints] + [str(out / f"checkpoint-{done_steps}")],
                         "adapter": adapter, "seed": seed, "config": run_config}
                if rank == 0:
                    checkpoints.append(_save_checkpoint(out, done_steps, model, optimizer, scheduler, state))
                _barrier(world)
            if kill_after and done_steps >= kill_after:  # fault-injection tests: die like an OOM-killed job
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
    elapsed = time.perf_counter() - t0
    result = TrainResult(out_dir=out, final_dir=None, adapter_dir=None, checkpoints=checkpoints, losses=losses,
                         steps=stop, total_steps=total, samples=seen, samples_per_second=seen / max(elapsed, 1e-9) * world,
                         peak_memory_bytes=_peak_memory(device), trainable_parameters=n_trainable, adapter=adapter,
                         padding=None if not positions else 1 - tokens / positions)
    if stop < total:
        return result
    if rank == 0:
        _save_final(out, model, loaded, adapter, model_dir, mma_cfg, result)
        _atomic_json(done, {**result.to_json(), "config": run_config, "key": art.key})  # the done marker, last
    _barrier(world)
    return result


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _copy_processor_files(src: Path, dst: Path) -> None:
    """Copy the base model's processor / tokenizer / template files (everything but weights and the model config)
    next to the merged weights: byte-identical, and works for processors whose optional parts are missing."""
    skip_suffix = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
    for f in src.iterdir():
        if (f.is_file() and not f.name.startswith(".") and not f.name.endswith(skip_suffix)
                and f.name not in ("config.json", "generation_config.json", "model.safetensors.index.json")
                and not (dst / f.name).exists()):
            shutil.copy2(f, dst / f.name)


def _save_final(out: Path, model, loaded, adapter: str, model_dir, mma_cfg: dict, result: TrainResult) -> None:
    from safetensors.torch import save_file

    from vlselect.artifact import replace_dir
    from vlselect.train.mma import mma_state_dict

    model.eval()
    final = out / "final"
    tmp = out / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    meta = {"adapter": adapter, "base_model": str(Path(model_dir).resolve())}
    if adapter == "lora":
        ad = out / "adapter"
        tmp_ad = out / ".tmp-adapter"
        shutil.rmtree(tmp_ad, ignore_errors=True)
        model.save_pretrained(str(tmp_ad))
        replace_dir(tmp_ad, ad)
        merged = model.merge_and_unload()
        merged.save_pretrained(str(tmp))
        _copy_processor_files(Path(model_dir), tmp)
        meta["merged"] = True
        result.adapter_dir = ad
    elif adapter in ("full", "projector"):
        model.save_pretrained(str(tmp))
        _copy_processor_files(Path(model_dir), tmp)
        meta["merged"] = True
    else:
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in mma_state_dict(model).items()}, str(tmp / "adapter_model.safetensors"))
        meta["mma"] = mma_cfg
        result.adapter_dir = final
    _atomic_json(tmp / "vlselect_adapter.json", meta)
    replace_dir(tmp, final)
    result.final_dir = final
    if adapter == "mma":
        result.adapter_dir = final
