"""Fine-tuning on a pool: LoRA (PEFT) with the LLaVA-1.5 recipe, LaVIN's Mixture-of-Modality adapters, loading
trained models. The warm-up reference model lives in :mod:`vlselect.train.warmup`.

Public API: :func:`train_lora` / :class:`TrainResult`, :func:`load_trained`, :mod:`vlselect.train.mma`
(:func:`~vlselect.train.mma.attach_mma`, :func:`~vlselect.train.mma.mma_routing`).
"""

from __future__ import annotations

from vlselect.train.load import load_trained
from vlselect.train.lora import TrainResult, train_lora

__all__ = ["TrainResult", "load_trained", "train_lora"]
