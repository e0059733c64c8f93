"""Wrapping a transformers model with PEFT without transformers 5's ``is_gradient_checkpointing`` FutureWarning.

PEFT (0.17 - 0.21) reads ``model.is_gradient_checkpointing`` when it wraps a model; transformers 5 deprecated that
property in favour of ``is_activation_checkpointing`` and warns on every read. The warning is about PEFT's code,
not ours or the user's, so it is filtered here, at the calls that trigger it, and nowhere else.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def quiet_peft_wrap() -> Iterator[None]:
    """Silence exactly transformers' ``is_gradient_checkpointing`` FutureWarning inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        yield
