"""Loading a trained model: a merged LoRA model, a base model plus a PEFT adapter, or a base model plus MMA
adapters (``final/`` of :func:`vlselect.train.train_lora`)."""

from __future__ import annotations

import json
from pathlib import Path

from vlselect.errors import ModelError


def _meta(path: Path) -> dict | None:
    p = path / "vlselect_adapter.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _attach_mma_from(loaded, adapter_dir: Path, meta: dict) -> None:
    import torch
    from safetensors.torch import load_file

    from vlselect.train.mma import attach_mma

    attach_mma(loaded.model, **(meta.get("mma") or {}))
    state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    params = dict(loaded.model.named_parameters())
    missing = [k for k in params if "adapter" in k and k not in state]
    if missing or any(k not in params for k in state):
        raise ModelError(f"{adapter_dir}: MMA adapter tensors do not match the model ({(missing or list(state))[0]}); "
                         "load it on the base model it was trained from")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v.to(params[k].device))
    loaded.model.eval()
    loaded.extra["mma"] = True


def load_trained(model_dir, *, adapter=None, dtype=None, device=None):
    """Load a model for evaluation.

    Parameters
    ----------
    model_dir : path-like
        A Hugging Face model directory (base or merged), or an MMA ``final/`` folder (its
        ``vlselect_adapter.json`` names the base model).
    adapter : path-like, optional
        A PEFT LoRA adapter folder (merged on load) or an MMA ``final/`` folder, applied to ``model_dir``.

    Returns
    -------
    vlselect.models.LoadedVLM
        ``loaded.extra["mma"]`` is True when MMA adapters are attached (generation must route them).
    """
    from vlselect.models import load_vlm

    path = Path(model_dir)
    meta = _meta(path)
    if meta and meta.get("adapter") == "mma" and not (path / "config.json").exists():
        loaded = load_vlm(meta["base_model"], dtype=dtype, device=device)
        _attach_mma_from(loaded, path, meta)
        return loaded
    loaded = load_vlm(path, dtype=dtype, device=device)
    if adapter is not None:
        ad = Path(adapter)
        ameta = _meta(ad)
        if ameta and ameta.get("adapter") == "mma":
            _attach_mma_from(loaded, ad, ameta)
        elif (ad / "adapter_config.json").is_file():
            from peft import PeftModel

            from vlselect.models.peft_wrap import quiet_peft_wrap

            with quiet_peft_wrap():
                loaded.model = PeftModel.from_pretrained(loaded.model, str(ad)).merge_and_unload()
            loaded.model.eval()
        else:
            raise ModelError(f"{ad}: not an adapter folder (no adapter_config.json or vlselect_adapter.json); pass the "
                             "'adapter/' or 'final/' folder written by `vlselect train`")
    return loaded
