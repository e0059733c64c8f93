"""Loading Hugging Face VLMs, turning samples into tensors with answer-only labels, collation, tiny models.

Public API: :func:`load_vlm` / :class:`LoadedVLM`, :func:`encode_sample` (templates: ``llava_v1``,
``chat_template`` or a Jinja file), :func:`render_sample`, :func:`generation_prompt`, :func:`load_image` /
:func:`model_image` (the one image loader), :func:`collate`, :func:`vlselect.models.tiny.build_tiny`.
"""

from vlselect.models.encode import (IGNORE_INDEX, ImageRejectedError, RenderedChat, TemplateWarning, collate,
                                    default_template, encode_sample, generation_prompt, load_image, model_image,
                                    render_sample, resolve_template)
from vlselect.models.load import LoadedVLM, decoder_layers, load_vlm, model_hash

__all__ = ["IGNORE_INDEX", "ImageRejectedError", "LoadedVLM", "RenderedChat", "TemplateWarning", "collate",
           "decoder_layers", "default_template", "encode_sample", "generation_prompt", "load_image", "load_vlm",
           "model_hash", "model_image", "render_sample", "resolve_template"]
