"""Loading a Hugging Face VLM and its processor from a local directory (issue 3, DESIGN.md "models/").

One path for real checkpoints and the tiny test models: ``AutoModelForImageTextToText.from_pretrained`` and
``AutoProcessor.from_pretrained`` on a directory. The only deviation: when ``torchvision`` is not installed,
transformers cannot build the *video* processor of Qwen2-VL-style processors; we then assemble the processor from
its image processor, tokenizer and chat template with no video processor (images and text work unchanged).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlselect.errors import ModelError

_HASH_CACHE = ".vlselect_model_hash.json"


@contextlib.contextmanager
def _allow_missing_subprocessors():
    """Let a ProcessorMixin be built with ``None`` for an optional sub-processor (e.g. video without torchvision)."""
    from transformers.processing_utils import ProcessorMixin

    original = ProcessorMixin.check_argument_for_proper_class

    def lenient(self, argument_name, argument):
        if argument is None:
            return None
        return original(self, argument_name, argument)

    ProcessorMixin.check_argument_for_proper_class = lenient
    try:
        yield
    finally:
        ProcessorMixin.check_argument_for_proper_class = original


def make_processor(cls, **parts):
    """Instantiate processor class ``cls`` from its parts; missing optional parts (video) are set to ``None``."""
    import inspect

    names = [n for n in inspect.signature(cls.__init__).parameters if n.endswith("_processor") or n == "tokenizer"]
    for n in names:
        parts.setdefault(n, None)
    with _allow_missing_subprocessors():
        return cls(**parts)


def _load_processor(path: Path):
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(str(path))
    except Exception as first:  # noqa: BLE001 - retry without the video processor, else report
        try:
            import transformers

            cfg = json.loads((path / "processor_config.json").read_text()) if (path / "processor_config.json").exists() else {}
            cls_name = cfg.get("processor_class")
            if cls_name is None:
                tcfg = json.loads((path / "tokenizer_config.json").read_text())
                cls_name = tcfg.get("processor_class")
            cls = getattr(transformers, cls_name)
            image_processor = AutoImageProcessor.from_pretrained(str(path))
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            chat_template = None
            if (path / "chat_template.jinja").exists():
                chat_template = (path / "chat_template.jinja").read_text()
            extra = {k: v for k, v in cfg.items() if k not in ("processor_class", "image_processor", "video_processor")
                     and not isinstance(v, dict)}
            import inspect

            allowed = set(inspect.signature(cls.__init__).parameters)
            extra = {k: v for k, v in extra.items() if k in allowed}
            return make_processor(cls, image_processor=image_processor, tokenizer=tokenizer,
                                  chat_template=chat_template, **extra)
        except Exception:  # noqa: BLE001
            raise ModelError(
                f"cannot load the processor from model directory '{path}': {type(first).__name__}: {first}; "
                "fix: point --model at a directory written by save_pretrained (config.json, weights, processor "
                "and tokenizer files), e.g. one made by 'vlselect models tiny DIR'"
            ) from first


def load_processor(model_dir):
    """Only the processor of a model directory (no weights) and the model family: ``(processor, family)``.

    Used by ``pool check --model`` to put images through the model's own image processor."""
    from transformers import AutoConfig

    path = Path(model_dir)
    if not path.is_dir() or not (path / "config.json").exists():
        raise ModelError(f"model directory '{path}' does not exist or has no config.json; fix: pass a directory "
                         "written by save_pretrained, e.g. made by 'vlselect models tiny DIR'")
    try:
        config = AutoConfig.from_pretrained(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot read the config of '{path}': {type(exc).__name__}: {exc}; fix: check that the "
                         "directory holds a complete image-text-to-text checkpoint") from exc
    return _load_processor(path), family_of(config)


def model_hash(model_dir) -> str:
    """SHA-256 over ``config.json`` and the weight files' bytes (names sorted), cached by file size and mtime.

    The cache (``.vlselect_model_hash.json`` in the directory, when writable) makes repeated calls cheap.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelError(f"model directory '{path}' does not exist; fix: pass a directory written by save_pretrained, "
                         "e.g. made by 'vlselect models tiny DIR'")
    files = sorted(p for p in path.iterdir() if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    if not files:
        raise ModelError(f"model directory '{path}' has no config.json or weight files; fix: pass a directory written "
                         "by save_pretrained")
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = path / _HASH_CACHE
    try:
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp:
            return cached["hash"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    digest = "sha256:" + h.hexdigest()
    from vlselect.artifact import atomic_write_text

    try:
        atomic_write_text(cache, json.dumps({"stamp": stamp, "hash": digest}))
    except OSError:
        pass  # a read-only model folder: the hash is recomputed next time
    return digest


def family_of(config) -> str:
    """The model family name: ``"llava"`` for LLaVA-1.5, ``"qwen2-vl"`` for Qwen2-VL, else the config model_type."""
    mt = getattr(config, "model_type", "")
    return {"llava": "llava", "qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl"}.get(mt, mt.replace("_", "-"))


@dataclass
class LoadedVLM:
    """A loaded model with what the feature extractors need to know about it.

    Attributes
    ----------
    model : transformers.PreTrainedModel
        In eval mode.
    processor : transformers.ProcessorMixin
    family : str
        ``"llava"``, ``"qwen2-vl"``, or the config's model type.
    model_hash : str
        ``"sha256:…"`` of ``config.json`` + weight bytes (see :func:`model_hash`).
    num_layers : int
        Decoder layers of the language model.
    device : torch.device
    model_dir : Path
    image_token_id : int or None
        The id the processor expands into the image's tokens (replaced by vision features).
    pad_token_id : int
    image_boundary_ids : tuple of int
        Marker tokens around an image (Qwen2-VL's ``<|vision_start|>`` / ``<|vision_end|>``); neither image nor text.
    """

    model: Any
    processor: Any
    family: str
    model_hash: str
    num_layers: int
    device: Any
    model_dir: Path
    image_token_id: int | None = None
    pad_token_id: int = 0
    image_boundary_ids: tuple = ()
    extra: dict = field(default_factory=dict)

    @property
    def decoder_layers(self):
        """The language model's decoder layers (a ``ModuleList``)."""
        return decoder_layers(self.model)


def decoder_layers(model):
    """Find the language model's decoder layer list of an image-text-to-text model."""
    for path in ("model.language_model.layers", "language_model.model.layers", "model.layers",
                 "language_model.layers", "model.text_model.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise ModelError(f"cannot find the decoder layers of {type(model).__name__}; fix: use a LLaVA or Qwen2-VL "
                     "style model (language_model.layers)")


def load_vlm(model_dir, *, dtype=None, device=None, template=None) -> LoadedVLM:
    """Load an image-text-to-text model and its processor from a local directory.

    Parameters
    ----------
    model_dir : path-like
        A directory written by ``save_pretrained`` (a real checkpoint or :func:`vlselect.models.tiny.build_tiny`).
    dtype : torch.dtype or str, optional
        Weights dtype (default: as saved; float32 for tiny models).
    device : str or torch.device, optional
        Default CUDA if available else CPU.
    template : str or path, optional
        How conversations become text for this model (``"llava_v1"``, ``"chat_template"`` or a Jinja file; see
        :func:`vlselect.models.encode_sample`); stored in ``extra["template"]``. Default: ``$VLSELECT_TEMPLATE``,
        else the model's default (:func:`vlselect.models.default_template`).

    Returns
    -------
    LoadedVLM

    Raises
    ------
    ModelError
        The directory is missing or cannot be loaded (the message names it).

    Examples
    --------
    >>> loaded = load_vlm("/tmp/tiny-llava")  # doctest: +SKIP
    >>> loaded.family, loaded.num_layers  # doctest: +SKIP
    ('llava', 4)
    """
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForImageTextToText

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = Path(model_dir)
    if not path.is_dir() or not (path / "config.json").exists():
        raise ModelError(f"model directory '{path}' does not exist or has no config.json; fix: pass a directory "
                         "written by save_pretrained, e.g. made by 'vlselect models tiny DIR'")
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                 "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}.get(dtype, dtype)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    try:
        config = AutoConfig.from_pretrained(str(path))
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load the model in '{path}': {type(exc).__name__}: {exc}; fix: check that the "
                         "directory holds a complete image-text-to-text checkpoint") from exc
    model.to(device)
    model.eval()
    processor = _load_processor(path)
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    tok = processor.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    image_token_id = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    loaded = LoadedVLM(
        model=model, processor=processor, family=family_of(config), model_hash=model_hash(path),
        num_layers=int(text_cfg.num_hidden_layers), device=device, model_dir=path,
        image_token_id=image_token_id, pad_token_id=int(pad),
        image_boundary_ids=tuple(int(getattr(config, k)) for k in ("vision_start_token_id", "vision_end_token_id",
                                                                  "boi_token_index", "eoi_token_index")
                                 if getattr(config, k, None) is not None),
    )
    if template is not None:
        from vlselect.models.encode import resolve_template

        loaded.extra["template"] = resolve_template(loaded, template)  # an unknown name fails here, early
    return loaded
