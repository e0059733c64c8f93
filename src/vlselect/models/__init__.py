"""Loading Hugging Face VLMs, turning samples into tensors with answer-only labels, collation, tiny models.

Public API: :func:`load_vlm` / :class:`LoadedVLM`, :func:`encode_sample`, :func:`collate`,
:func:`vlselect.models.tiny.build_tiny`.
"""

from vlselect.models.encode import IGNORE_INDEX, collate, encode_sample
from vlselect.models.load import LoadedVLM, decoder_layers, load_vlm, model_hash

__all__ = ["IGNORE_INDEX", "LoadedVLM", "collate", "decoder_layers", "encode_sample", "load_vlm", "model_hash"]
