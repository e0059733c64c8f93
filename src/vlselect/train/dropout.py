"""LoRA's input dropout on CPU, with the mask drawn by NumPy's PCG64 instead of torch's Mersenne Twister.

LLaVA-1.5's LoRA recipe drops 5% of every LoRA layer's input (``lora_dropout=0.05``). On a CPU, torch draws the
mask element by element from its MT19937 generator; for the tiny models of the bench that made dropout as costly
as every linear layer's forward together (``cProfile`` of a 20-step run: 1.7 s in ``torch.dropout`` against 1.7 s
in ``linear``). :class:`PcgDropout` is the same inverted dropout — each element kept independently and scaled by
1/(1 - p) — with the mask made from 16 random bits per element (``Generator.bytes``, then one comparison and a
float mask): about 4x faster on one thread (``benchmarks/train_throughput.py`` prints both in one run).

Two differences, both documented and tested: the drop probability is rounded to a multiple of 1/65536
(``k = round(p * 65536)``: 0.05 becomes 0.0500031), and the keep scale is the exact 65536 / (65536 - k), so the
expectation of the output is still the input. Randomness comes from torch's default generator (one 63-bit draw
per call seeds the PCG64 stream), so ``torch.manual_seed`` fixes the masks, and a training checkpoint, which saves
torch's generator state, resumes the same masks. On other devices :func:`torch.nn.functional.dropout` is used
unchanged (CUDA's Philox is fast).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

RESOLUTION = 1 << 16


def drop_threshold(p: float) -> int:
    """``k``: an element is dropped when its 16 random bits (0..65535) are below ``k`` (``p`` rounded to k/65536)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability {p} is not in [0, 1]")
    return int(round(p * RESOLUTION))


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """A float32 mask of ``shape``: 0 where dropped, ``65536 / (65536 - k)`` where kept (see the module notes).

    Seeded by one draw from torch's default CPU generator."""
    k = drop_threshold(p)
    n = int(np.prod(shape, dtype=np.int64))
    if k >= RESOLUTION:
        return torch.zeros(shape, dtype=torch.float32)
    seed = int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64))
    bits = np.frombuffer(np.random.Generator(np.random.PCG64(seed)).bytes(2 * n), dtype=np.uint16)
    mask = np.empty(n, dtype=np.float32)
    np.copyto(mask, bits >= k)  # bool -> 0.0 / 1.0 (faster than astype on this path)
    mask *= np.float32(RESOLUTION / (RESOLUTION - k))
    return torch.from_numpy(mask).view(shape)


class PcgDropout(nn.Module):
    """Inverted dropout with :func:`keep_mask` on CPU; identity in eval mode or at ``p == 0``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        drop_threshold(p)  # validate
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, True)
        mask = keep_mask(x.shape, self.p)
        return x * (mask if x.dtype == torch.float32 else mask.to(x.dtype))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_pcg_dropout(model: nn.Module) -> int:
    """Replace every PEFT LoRA input dropout (an ``nn.Dropout`` in a ``lora_dropout`` dict) of ``model`` by a
    :class:`PcgDropout` of the same probability; return how many were replaced. Parameters are untouched."""
    n = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, nn.ModuleDict):
            continue
        for name, d in list(drops.items()):
            if isinstance(d, nn.Dropout):
                drops[name] = PcgDropout(d.p)
                n += 1
    return n
