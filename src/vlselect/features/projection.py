"""Seeded Johnson-Lindenstrauss projections of per-sample gradients, generated block by block from the seed.

ICONS, TIVE and LESS project each sample's LoRA gradient (hundreds of millions of numbers for a 7B model) to a few
thousand dimensions with a random sign matrix (icons.md §2.4, tive.md §4.5, survey.md §5.1). The official code uses
TRAK's CUDA kernel ``fast_jl``, which does not run on CPU and whose matrix depends on the GPU's SM count. Here the
matrix is defined by the seed alone:

* ``R`` has shape ``(D, k)``. Its rows are cut into canonical tiles of :data:`TILE_ROWS` rows, laid out column by
  column. Every entry comes from a counter-based generator: the SplitMix64 finaliser of a 64-bit counter built
  from ``(tile, column, position)``, mixed with the seed. Rademacher: each 64-bit output gives the signs of 64
  consecutive entries of a column (bit ``i`` set -> -1). Gaussian: one output per entry, Box-Muller on its two
  32-bit halves in float64. Column ``c`` does not depend on ``k``, so the projection to ``k' < k`` dimensions is
  the first ``k'`` columns of the one to ``k``.
* Rademacher tiles are generated with integer tensor operations on the device that multiplies (CPU or GPU): the
  integer arithmetic (wrapping 64-bit multiply, masked shifts) and a table lookup give bit-identical matrices on
  every device, so a GPU run does not wait for the CPU. Gaussian tiles are generated on the CPU (float64
  ``log``/``cos`` are not guaranteed bit-identical across devices) and moved. Either way ``R`` is identical across
  ranks, shards, batch sizes, block sizes and devices for one seed.
* The output is scaled by ``1/sqrt(k)``, so that ``E <Rx, Ry> = <x, y>`` (TRAK does not scale; every consumer
  L2-normalises rows, so the scale does not change any selection).
* The full ``D x k`` matrix never exists: :meth:`Projection.project` walks the rows it needs in chunks of at most
  ``block_bytes`` bytes, generating each chunk, multiplying and dropping it.

:class:`FactoredProjection` is the fast option (LoGra, arXiv 2405.13954): for a linear layer the per-sample gradient
is ``sum_t delta_t x_t^T``; projecting ``x_t`` and ``delta_t`` separately with small matrices and taking the outer
product gives a Kronecker-structured sketch without ever forming the gradient. It preserves inner products in
expectation too, but it is a **different sketch** from the dense one: features from the two are not comparable.

References
----------
icons.md §2.4 (5,120-d Rademacher, seed 0), tive.md §4.5 (8,192-d Rademacher), survey.md §5.1 and §5.3 (fast_jl,
LoGra).

Examples
--------
>>> import torch
>>> proj = Projection(1000, 64, seed=0)
>>> x = torch.randn(3, 1000)
>>> proj.project(x).shape
torch.Size([3, 64])
"""

from __future__ import annotations

import math
from typing import Iterable, Literal, Sequence

import numpy as np
import torch

from vlselect.errors import ConfigError

#: Rows per canonical tile. Part of the definition of the matrix: changing it changes every projection.
TILE_ROWS = 1024

#: Per-method default projection dimensions (icons.md §2.4, tive.md §4.5, LESS README via survey.md §5.2).
DEFAULT_DIMS = {"icons": 5120, "tive": 8192, "less": 8192}

Kind = Literal["rademacher", "gaussian"]
KINDS = ("rademacher", "gaussian")

_SIGN_LUT = np.array([[1.0 - 2.0 * ((v >> i) & 1) for i in range(8)] for v in range(256)], dtype=np.float32)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"projection type {kind!r} is unknown; use one of {', '.join(KINDS)} (or 'factored')")
    return kind


def _seed_key(seed: int) -> int:
    seed = int(seed)
    if seed < 0 or seed >= 2**63:
        raise ConfigError(f"projection seed {seed} must be a non-negative integer below 2**63")
    return seed


_M64 = (1 << 64) - 1


def _s64(x: int) -> int:
    """An unsigned 64-bit constant as the signed int64 torch stores."""
    x &= _M64
    return x - (1 << 64) if x >= (1 << 63) else x


_GOLDEN, _MIX1, _MIX2 = _s64(0x9E3779B97F4A7C15), _s64(0xBF58476D1CE4E5B9), _s64(0x94D049BB133111EB)
_GAUSS_STREAM = 0x6761757373  # "gauss": a separate stream for Gaussian entries


def _lsr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _splitmix(z: torch.Tensor) -> torch.Tensor:
    z = z + _GOLDEN
    z = (z ^ _lsr(z, 30)) * _MIX1
    z = (z ^ _lsr(z, 27)) * _MIX2
    return z ^ _lsr(z, 31)


def splitmix64(x: int) -> int:
    """Pure-Python SplitMix64 finaliser (the reference the tensor version is tested against)."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


_LUTS: dict[torch.device, torch.Tensor] = {}


def _sign_lut(device: torch.device) -> torch.Tensor:
    if device not in _LUTS:
        _LUTS[device] = torch.from_numpy(_SIGN_LUT).to(device)
    return _LUTS[device]


def generate_tile(seed: int, tile: int, dim: int, kind: Kind = "rademacher", *, device: str | torch.device = "cpu",
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``[tile*TILE_ROWS, (tile+1)*TILE_ROWS)`` of the unscaled matrix, transposed: shape ``(dim, TILE_ROWS)``.

    Parameters
    ----------
    seed:
        The projection seed (ICONS and TIVE use 0).
    tile:
        Tile index (``< 2**35``).
    dim:
        Number of columns ``k`` of the matrix (``< 2**24``). Column ``c`` of a tile is the same for every
        ``dim > c``.
    kind:
        ``"rademacher"`` (entries +-1, what TRAK's ``proj_type=rademacher`` draws) or ``"gaussian"`` (N(0, 1)).
    device:
        Where to generate (Rademacher; bit-identical everywhere). Gaussian tiles are generated on the CPU and moved.
    out:
        Optional contiguous float32 ``(dim, TILE_ROWS)`` tensor on ``device`` to fill.

    Returns
    -------
    torch.Tensor
        float32 ``(dim, TILE_ROWS)`` on ``device``; entry ``[c, i]`` is ``R[tile*TILE_ROWS + i, c]``.
    """
    device = torch.device(device)
    seed_mix = splitmix64(_seed_key(seed))
    if kind == "rademacher":
        words = TILE_ROWS // 64
        col = torch.arange(dim, dtype=torch.int64, device=device)
        ctr = (((int(tile) << 24) + col)[:, None] << 4) | torch.arange(words, dtype=torch.int64, device=device)
        h = _splitmix(ctr ^ _s64(seed_mix))  # (dim, 16): bit i of word w -> row 64*w + i
        idx = h.view(torch.uint8).reshape(-1).long()  # little-endian bytes, on CPU and CUDA alike
        if out is not None and out.is_contiguous() and out.dtype == torch.float32 and out.device == device:
            # straight into the caller's buffer: a fresh 32 MiB tensor per tile costs more in page faults than
            # the lookup itself on a CPU
            torch.index_select(_sign_lut(device), 0, idx, out=out.view(dim * (TILE_ROWS // 8), 8))
            return out
        res = torch.index_select(_sign_lut(device), 0, idx).reshape(dim, TILE_ROWS)
    else:
        col = torch.arange(dim, dtype=torch.int64)
        ctr = (((int(tile) << 24) + col)[:, None] << 10) | torch.arange(TILE_ROWS, dtype=torch.int64)
        h = _splitmix(ctr ^ _s64(splitmix64(seed_mix ^ _GAUSS_STREAM)))
        u1 = (_lsr(h, 32).double() + 0.5) / 2.0**32
        u2 = ((h & 0xFFFFFFFF).double() + 0.5) / 2.0**32
        res = (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).float().to(device)
    if out is not None:
        out.copy_(res)
        return out
    return res


class Projection:
    """A seeded dense JL projection ``R^D -> R^k``, generated in blocks, never held whole.

    Parameters
    ----------
    dim_in:
        ``D``, the length of the vectors to project (the number of trainable LoRA parameters).
    dim:
        ``k``, the output dimension. Defaults: 5,120 for ICONS (icons.md §2.4), 8,192 for TIVE and LESS
        (tive.md §4.5); see :data:`DEFAULT_DIMS`.
    kind:
        ``"rademacher"`` (default, as ICONS and TIVE) or ``"gaussian"``.
    seed:
        The seed; the matrix depends on nothing else (not on the device, the batch or the block size).
    block_bytes:
        Memory for the generated tiles kept at once (float32), default 64 MiB (at least one tile). Changes speed
        and memory only, never the result's matrix.
    device:
        Where the multiplication runs; Rademacher tiles are generated there (bit-identical on every device),
        Gaussian ones on the CPU and moved.
    scale:
        Multiply outputs by ``1/sqrt(k)`` (default) so inner products are preserved in expectation.

    Examples
    --------
    >>> import torch
    >>> p = Projection(5000, 128, seed=0)
    >>> x = torch.randn(2, 5000)
    >>> torch.allclose(p.project(x), x @ p.matrix(0, 5000) / 128 ** 0.5, atol=1e-4)
    True
    """

    def __init__(
        self,
        dim_in: int,
        dim: int = 8192,
        *,
        kind: Kind = "rademacher",
        seed: int = 0,
        block_bytes: int = 64 * 2**20,
        device: str | torch.device = "cpu",
        scale: bool = True,
    ) -> None:
        if int(dim_in) < 1:
            raise ConfigError(f"projection input dimension {dim_in} must be at least 1")
        if not 1 <= int(dim) < 2**24:
            raise ConfigError(f"projection dimension {dim} must be at least 1 and below 2**24 (e.g. 5120 or 8192)")
        if int(dim_in) >= 2**35 * TILE_ROWS:
            raise ConfigError(f"projection input dimension {dim_in} is too large (at most 2**45)")
        self.dim_in = int(dim_in)
        self.dim = int(dim)
        self.kind = _check_kind(kind)
        self.seed = _seed_key(seed)
        self.tiles_per_block = max(1, int(block_bytes) // (4 * self.dim * TILE_ROWS))
        self.device = torch.device(device)
        self.scale = 1.0 / math.sqrt(self.dim) if scale else 1.0
        self._buffer: torch.Tensor | None = None  # generated tiles, reused across calls (at most block_bytes)

    def __repr__(self) -> str:
        return f"Projection(dim_in={self.dim_in}, dim={self.dim}, kind={self.kind!r}, seed={self.seed})"

    @property
    def num_tiles(self) -> int:
        return -(-self.dim_in // TILE_ROWS)

    def _tiles(self, first_tile: int, n_tiles: int) -> list[torch.Tensor]:
        """Unscaled transposed tiles ``first_tile ..``, each ``(k, TILE_ROWS)`` on the device, generated into one
        buffer that is kept and reused by the next call (valid until then)."""
        buf = self._buffer
        if buf is None or buf.shape[0] < n_tiles:
            n_buf = max(n_tiles, min(self.tiles_per_block, self.num_tiles))
            buf = self._buffer = torch.empty(n_buf, self.dim, TILE_ROWS, dtype=torch.float32, device=self.device)
        return [generate_tile(self.seed, first_tile + j, self.dim, self.kind, device=self.device, out=buf[j])
                for j in range(n_tiles)]

    def matrix(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows ``[start, stop)`` of the unscaled matrix ``R`` as a ``(stop-start, k)`` float32 tensor (for tests and
        small cases; the projection itself never calls this for the whole range)."""
        stop = self.dim_in if stop is None else stop
        if not 0 <= start <= stop <= self.dim_in:
            raise ConfigError(f"rows [{start}, {stop}) are outside the projection's {self.dim_in} input rows")
        if start == stop:
            return torch.zeros(0, self.dim)
        t0, t1 = start // TILE_ROWS, (stop - 1) // TILE_ROWS + 1
        blk = torch.cat([generate_tile(self.seed, t, self.dim, self.kind) for t in range(t0, t1)], dim=1)
        return blk[:, start - t0 * TILE_ROWS : stop - t0 * TILE_ROWS].T.contiguous()

    def project_into(self, out: torch.Tensor, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Add ``x @ R[offset:offset+n] * scale`` to ``out`` in place and return it.

        ``x`` is ``(b, n)``: a slice of the gradient vector starting at coordinate ``offset`` (one parameter tensor,
        say). Summing over slices that cover ``[0, D)`` gives the projection of the whole vector, which is how the
        gradient engine projects module by module without concatenating the gradient.
        """
        n = x.shape[1]
        if offset < 0 or offset + n > self.dim_in:
            raise ConfigError(f"slice [{offset}, {offset + n}) is outside the projection's {self.dim_in} input rows")
        if n == 0:
            return out
        x = x.to(device=self.device, dtype=torch.float32)
        stop = offset + n
        t = offset // TILE_ROWS
        t_end = (stop - 1) // TILE_ROWS + 1
        while t < t_end:
            nt = min(self.tiles_per_block, t_end - t)
            tiles = self._tiles(t, nt)  # nt x (k, TILE_ROWS)
            for j in range(nt):
                base = (t + j) * TILE_ROWS
                lo, hi = max(offset, base), min(stop, base + TILE_ROWS)
                out.addmm_(x[:, lo - offset : hi - offset], tiles[j][:, lo - base : hi - base].T, alpha=self.scale)
            t += nt
        return out

    def project(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Project ``x`` (``(b, n)`` or ``(n,)``, rows ``[offset, offset+n)`` of the input space) to ``(b, k)``
        float32 on :attr:`device`.

        Parameters
        ----------
        x:
            Vectors to project, one per row.
        offset:
            Where ``x``'s first coordinate sits in the full gradient vector (0 for a whole vector).

        Returns
        -------
        torch.Tensor
            ``(b, k)`` float32.
        """
        squeeze = x.dim() == 1
        x2 = x.reshape(1, -1) if squeeze else x
        out = torch.zeros(x2.shape[0], self.dim, dtype=torch.float32, device=self.device)
        self.project_into(out, x2, offset)
        return out[0] if squeeze else out


def _derived_seed(seed: int, *parts: int) -> int:
    """A seed for a side matrix of the factored sketch: a function of ``(seed, parts)`` only."""
    state = np.random.SeedSequence([_seed_key(seed), 0x4C6F477261, *[int(p) for p in parts]]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class FactoredProjection:
    """LoGra's factored sketch (arXiv 2405.13954) for per-sample gradients of linear layers, then a dense JL step.

    For a linear layer ``y = W x`` the per-sample gradient is ``G = sum_t d_t x_t^T`` (``d_t``: output gradient of
    token ``t``). Each side longer than ``factor_dim`` is projected by its own seeded Gaussian (or Rademacher) matrix
    (``P_in: in -> f``, ``P_out: out -> f``, scaled by ``1/sqrt(f)``), and the layer's sketch is
    ``sum_t (P_out d_t)(P_in x_t)^T``: at most ``f x f`` numbers, computed from the token activations without forming
    ``G``. For a LoRA ``A`` (``r x in``) only the input side is long, for ``B`` (``out x r``) only the output side.
    The per-layer sketches are concatenated (length :attr:`dim_factored`) and, if that is longer than ``dim``,
    projected to ``dim`` with a dense :class:`Projection` (same seed).

    This is a **different sketch** from :class:`Projection` of the full gradient: both preserve inner products in
    expectation, but their outputs are not interchangeable. Adam preconditioning needs the full gradient and so is
    not available with it. In matrix form the layer's sketch is ``vec(G) @ (P_out (x) P_in)`` (Kronecker product;
    tested against it written out). When one layer's per-sample gradient is smaller than its token factors (a LoRA
    layer, ``r x in``, over many tokens) the engine forms that one layer's gradient and applies
    :meth:`sketch_gradient` instead (the same sketch up to float rounding; see :meth:`route_costs`); the gradient of
    the whole model is never formed.

    Parameters
    ----------
    shapes:
        ``(out_features, in_features)`` of each linear layer, in gradient order.
    dim:
        Final dimension ``k``.
    factor_dim:
        ``f``, the per-side dimension (LoGra's per-layer rank).
    kind, seed, block_bytes, device:
        As for :class:`Projection`.
    """

    def __init__(
        self,
        shapes: Sequence[tuple[int, int]],
        dim: int = 8192,
        *,
        factor_dim: int = 64,
        kind: Kind = "rademacher",
        seed: int = 0,
        block_bytes: int = 64 * 2**20,
        device: str | torch.device = "cpu",
    ) -> None:
        if int(factor_dim) < 1:
            raise ConfigError(f"factor dimension {factor_dim} must be at least 1")
        self.kind = _check_kind(kind)
        self.seed = _seed_key(seed)
        self.factor_dim = int(factor_dim)
        self.device = torch.device(device)
        self.shapes = [(int(o), int(i)) for o, i in shapes]
        self._sides: dict[tuple[int, int], torch.Tensor] = {}
        self.out_shapes: list[tuple[int, int]] = []
        for o, i in self.shapes:
            self.out_shapes.append((min(o, self.factor_dim), min(i, self.factor_dim)))
        self.offsets = np.concatenate([[0], np.cumsum([a * b for a, b in self.out_shapes])]).astype(np.int64)
        self.dim_factored = int(self.offsets[-1])
        self.dim = int(dim)
        self.final = (
            Projection(self.dim_factored, self.dim, kind=self.kind, seed=self.seed, block_bytes=block_bytes, device=device)
            if self.dim_factored > self.dim
            else None
        )
        self.out_dim = self.dim if self.final is not None else self.dim_factored
        for layer in range(len(self.shapes)):  # side matrices made once here (setup), not in the first batch
            self.side(layer, 0)
            self.side(layer, 1)

    def side(self, layer: int, which: int) -> torch.Tensor | None:
        """The side matrix (``(n, f)``, scaled by ``1/sqrt(f)``) of layer ``layer``: ``which=0`` output, 1 input;
        ``None`` if that side is not longer than ``factor_dim``."""
        n = self.shapes[layer][which]
        if n <= self.factor_dim:
            return None
        key = (layer, which)
        if key not in self._sides:
            p = Projection(n, self.factor_dim, kind=self.kind, seed=_derived_seed(self.seed, layer, which), scale=False)
            self._sides[key] = (p.matrix() / math.sqrt(self.factor_dim)).to(self.device)
        return self._sides[key]

    def sketch_layer(self, layer: int, d: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The factored sketch of one layer for a batch: ``d`` ``(b, T, out)`` output gradients, ``x`` ``(b, T, in)``
        inputs (padding already zeroed) -> ``(b, f_out * f_in)``, row-major like the weight."""
        po, pi = self.side(layer, 0), self.side(layer, 1)
        d = d.to(self.device, torch.float32)
        x = x.to(self.device, torch.float32)
        if po is not None:
            d = d @ po
        if pi is not None:
            x = x @ pi
        return torch.einsum("bto,bti->boi", d, x).reshape(d.shape[0], -1)

    def sketch_gradient(self, layer: int, grad: torch.Tensor) -> torch.Tensor:
        """The same sketch from formed per-sample gradients ``grad`` ``(b, out, in)``: ``P_out^T G P_in`` ->
        ``(b, f_out * f_in)``. Equal to :meth:`sketch_layer` of the token factors up to float rounding (the sketch
        is linear in ``G = sum_t d_t x_t^T``); cheaper when the gradient is smaller than the token factors, as for
        a LoRA layer (``r x in``) over many tokens."""
        po, pi = self.side(layer, 0), self.side(layer, 1)
        g = grad.to(self.device, torch.float32)
        if pi is not None:
            g = g @ pi
        if po is not None:
            g = po.T @ g
        return g.reshape(g.shape[0], -1)

    def route_costs(self, layer: int, tokens: int) -> tuple[int, int]:
        """Multiply-adds per sample of the two ways to get a layer's sketch **and** the exact norm of its gradient,
        for ``tokens`` tokens: ``(token factors + Gram matrices, formed gradient)``."""
        o, i = self.shapes[layer]
        fo, fi = self.out_shapes[layer]
        side = (o * fo if o > self.factor_dim else 0) + (i * fi if i > self.factor_dim else 0)
        via_tokens = tokens * side + tokens * fo * fi + tokens * tokens * (o + i)
        via_grad = tokens * o * i + (o * i * fi if i > self.factor_dim else 0) + (o * fo * fi if o > self.factor_dim else 0)
        return via_tokens, via_grad

    def finish(self, factored: torch.Tensor) -> torch.Tensor:
        """Concatenated layer sketches ``(b, dim_factored)`` -> final features ``(b, out_dim)``."""
        return self.final.project(factored) if self.final is not None else factored


def project_rows(
    rows: Iterable[torch.Tensor] | torch.Tensor, dim: int = 8192, *, kind: Kind = "rademacher", seed: int = 0
) -> torch.Tensor:
    """Project a ``(n, D)`` tensor (or an iterable of ``(b, D)`` batches) with the seeded dense projection.

    A convenience for small inputs; see :class:`Projection`.
    """
    batches = [rows] if isinstance(rows, torch.Tensor) else list(rows)
    proj = Projection(batches[0].shape[1], dim, kind=kind, seed=seed)
    return torch.cat([proj.project(b) for b in batches])
