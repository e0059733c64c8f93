"""Seeded block-generated JL projections (issue 4; icons.md §2.4, tive.md §4.5, survey.md §5.1/5.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlselect.errors import ConfigError
from vlselect.features.projection import (
    DEFAULT_DIMS,
    TILE_ROWS,
    FactoredProjection,
    Projection,
    generate_tile,
    project_rows,
    splitmix64,
)


def test_defaults_per_method():
    assert DEFAULT_DIMS == {"icons": 5120, "tive": 8192, "less": 8192}


def test_matrix_is_pinned_by_the_seed():
    """The definition (SplitMix64 of (tile, column, word) xor the mixed seed; bit i -> row 64w+i; bit set -> -1)
    must never drift silently: checked against a pure-Python reference."""
    r = Projection(3000, 16, seed=0).matrix()
    assert set(np.unique(r.numpy()).tolist()) == {-1.0, 1.0}
    for seed, tile, col, word in [(0, 0, 0, 0), (0, 2, 7, 5), (12345, 1, 15, 15)]:
        h = splitmix64((((tile << 24) + col) << 4 | word) ^ splitmix64(seed))
        expected = [1.0 - 2.0 * ((h >> i) & 1) for i in range(64)]
        t = generate_tile(seed, tile, 16)
        assert t[col, 64 * word : 64 * word + 64].tolist() == expected
    assert torch.equal(r[TILE_ROWS * 2 : TILE_ROWS * 2 + 64, 7], generate_tile(0, 2, 16)[7, :64])
    # Gaussian entry (tile 1, column 3, position 9): Box-Muller on the two halves of its hash, float64
    h = splitmix64((((1 << 24) + 3) << 10 | 9) ^ splitmix64(splitmix64(0) ^ 0x6761757373))
    u1, u2 = ((h >> 32) + 0.5) / 2**32, ((h & 0xFFFFFFFF) + 0.5) / 2**32
    z = math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
    assert float(generate_tile(0, 1, 8, "gaussian")[3, 9]) == float(np.float32(z))
    assert not torch.equal(Projection(3000, 16, seed=1).matrix(), r)


def test_matrix_independent_of_block_size_and_prefix_consistent():
    a = Projection(5000, 96, seed=7, block_bytes=1).matrix()
    b = Projection(5000, 96, seed=7, block_bytes=1 << 30).matrix()
    assert torch.equal(a, b)
    # rows [s, e) generated alone equal the same rows of the whole matrix (shards/ranks generate their own rows)
    assert torch.equal(Projection(5000, 96, seed=7).matrix(1500, 3100), a[1500:3100])
    # k' < k gives the first k' columns; a larger D extends the matrix
    assert torch.equal(Projection(5000, 40, seed=7).matrix(), a[:, :40])
    assert torch.equal(Projection(9000, 96, seed=7).matrix(0, 5000), a)


def test_projection_is_x_times_r_scaled():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2500, generator=g)
    for kind in ("rademacher", "gaussian"):
        p = Projection(2500, 64, kind=kind, seed=2)
        torch.testing.assert_close(p.project(x), x @ p.matrix() / 8.0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(p.project(x[0]), p.project(x)[0])


def test_deterministic_across_batch_size_block_size_and_slices():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 4100, generator=g)
    ref = Projection(4100, 128, seed=0).project(x)
    # batch size: rows projected alone or in other groupings
    per_row = torch.cat([Projection(4100, 128, seed=0).project(x[i : i + 1]) for i in range(12)])
    torch.testing.assert_close(per_row, ref, rtol=1e-5, atol=1e-5)
    halves = torch.cat([Projection(4100, 128, seed=0).project(x[:5]), Projection(4100, 128, seed=0).project(x[5:])])
    torch.testing.assert_close(halves, ref, rtol=1e-5, atol=1e-5)
    # block size: memory knob only
    torch.testing.assert_close(Projection(4100, 128, seed=0, block_bytes=1).project(x), ref, rtol=1e-5, atol=1e-5)
    # the vector in slices (layer by layer) sums to the projection of the whole vector
    p = Projection(4100, 128, seed=0)
    out = torch.zeros(12, 128)
    for lo, hi in [(0, 100), (100, 1500), (1500, 1024 * 3 + 7), (1024 * 3 + 7, 4100)]:
        p.project_into(out, x[:, lo:hi], lo)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # convenience wrapper, given in two batches
    torch.testing.assert_close(project_rows([x[:7], x[7:]], 128, seed=0), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_inner_products_preserved_within_jl_bound(kind):
    """Gradient-like vectors (low-rank plus noise, D = 20,000); k = 2,048. JL: for n points, with probability
    1 - delta every pairwise |<Px,Py> - <x,y>| <= eps ||x|| ||y|| for eps ~ sqrt(8 log(n^2/delta) / k)."""
    g = torch.Generator().manual_seed(4)
    n, D, k = 20, 20_000, 2048
    basis = torch.randn(4, D, generator=g)
    x = torch.randn(n, 4, generator=g) @ basis + 0.5 * torch.randn(n, D, generator=g)
    px = Projection(D, k, kind=kind, seed=11).project(x)
    exact = x @ x.T
    approx = px @ px.T
    nrm = x.norm(dim=1)
    rel = (approx - exact).abs() / (nrm[:, None] * nrm[None, :])
    eps = math.sqrt(8 * math.log(n * n / 0.01) / k)
    assert float(rel.max()) < eps
    assert float(rel.mean()) < 3 / math.sqrt(k)
    # squared norms: relative error
    sq_err = ((px.norm(dim=1) ** 2 - nrm**2).abs() / nrm**2).max()
    assert float(sq_err) < eps


def test_gaussian_tile_statistics_and_kind_streams_differ():
    t = generate_tile(0, 0, 256, "gaussian")
    assert t.shape == (256, TILE_ROWS) and t.dtype == torch.float32
    assert abs(float(t.mean())) < 0.01 and abs(float(t.std()) - 1) < 0.01
    kurt = float((t.double() ** 4).mean())
    assert abs(kurt - 3) < 0.1
    r = generate_tile(0, 0, 256, "rademacher")
    assert abs(float(r.mean())) < 0.01 and not torch.equal(torch.sign(t), r)


def test_factored_sketch_shapes_and_inner_products():
    """A single linear layer (out 300, in 200): the factored sketch of sum_t d_t x_t^T preserves inner products
    of the gradients in expectation (LoGra), without forming them."""
    g = torch.Generator().manual_seed(3)
    b, T, o, i = 6, 10, 300, 200
    d = torch.randn(b, T, o, generator=g)
    common = torch.randn(1, T, i, generator=g)
    x = common + 0.7 * torch.randn(b, T, i, generator=g)
    full = torch.einsum("bto,bti->boi", d, x).reshape(b, -1)
    fp = FactoredProjection([(o, i)], dim=10_000, factor_dim=64, seed=0)
    assert fp.dim_factored == 64 * 64 and fp.final is None and fp.out_dim == 4096
    sk = fp.finish(fp.sketch_layer(0, d, x))
    assert sk.shape == (b, 4096)
    exact, approx = full @ full.T, sk @ sk.T
    nrm = full.norm(dim=1)
    rel = (approx - exact).abs() / (nrm[:, None] * nrm[None, :])
    assert float(rel.max()) < 0.5
    # a LoRA A (r=4 x in=200): only the input side is projected
    fa = FactoredProjection([(4, 200), (300, 4)], dim=64, factor_dim=16, seed=0)
    assert fa.out_shapes == [(4, 16), (16, 4)] and fa.dim_factored == 128 and fa.out_dim == 64
    assert fa.side(0, 0) is None and fa.side(0, 1).shape == (200, 16) and fa.side(1, 0).shape == (300, 16)
    # deterministic from the seed
    fb = FactoredProjection([(4, 200), (300, 4)], dim=64, factor_dim=16, seed=0)
    assert torch.equal(fa.side(1, 0), fb.side(1, 0))


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="projection type 'sparse'"):
        Projection(10, 8, kind="sparse")
    with pytest.raises(ConfigError, match="dimension 0"):
        Projection(10, 0)
    with pytest.raises(ConfigError, match="seed -1"):
        Projection(10, 8, seed=-1)
    with pytest.raises(ConfigError, match="outside"):
        Projection(10, 8).project(torch.zeros(1, 11))


def _kron_matrix(fp: FactoredProjection, layer: int) -> torch.Tensor:
    """The dense matrix of a layer's factored sketch, materialised: vec_r(P_out^T G P_in) = vec_r(G) @ (P_out (x) P_in)
    (identity on a side that is not projected)."""
    o, i = fp.shapes[layer]
    po = fp.side(layer, 0)
    pi = fp.side(layer, 1)
    po = torch.eye(o) if po is None else po
    pi = torch.eye(i) if pi is None else pi
    return torch.kron(po, pi)


def test_factored_sketch_equals_dense_projection_with_kronecker_matrix():
    """Hand-size case (issue 14 item 2): the factored sketch of a per-sample gradient, from the token factors or
    from the formed gradient, equals the dense projection of the flattened gradient with the Kronecker matrix
    P_out (x) P_in written out; the final dense step then projects the concatenation."""
    g = torch.Generator().manual_seed(8)
    # LoRA-like A (r=3 x in=10: only the input side projected), B (out=12 x r=3), a small layer with both sides
    fp = FactoredProjection([(3, 10), (12, 3), (5, 6)], dim=20, factor_dim=4, seed=5)
    assert fp.out_shapes == [(3, 4), (4, 3), (4, 4)] and fp.dim_factored == 12 + 12 + 16 and fp.final is not None
    b, T = 3, 7
    parts_tok, flat = [], []
    for layer, (o, i) in enumerate(fp.shapes):
        d = torch.randn(b, T, o, generator=g)
        x = torch.randn(b, T, i, generator=g)
        grad = torch.einsum("bto,bti->boi", d, x)  # the per-sample gradient sum_t d_t x_t^T
        K = _kron_matrix(fp, layer)
        assert K.shape == (o * i, fp.out_shapes[layer][0] * fp.out_shapes[layer][1])
        dense = grad.reshape(b, -1).double() @ K.double()
        torch.testing.assert_close(fp.sketch_layer(layer, d, x).double(), dense, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fp.sketch_gradient(layer, grad).double(), dense, rtol=1e-5, atol=1e-5)
        parts_tok.append(fp.sketch_layer(layer, d, x))
        flat.append(grad.reshape(b, -1))
    # whole vector: block-diagonal Kronecker matrix, then the final dense JL step (scaled by 1/sqrt(dim))
    blocks = torch.block_diag(*[_kron_matrix(fp, k).double() for k in range(3)])
    final = Projection(fp.dim_factored, 20, seed=5).matrix().double() / math.sqrt(20)
    expected = torch.cat(flat, 1).double() @ blocks @ final
    torch.testing.assert_close(fp.finish(torch.cat(parts_tok, 1)).double(), expected, rtol=1e-5, atol=1e-5)
    # a side matrix is the seeded Projection matrix of that side, scaled by 1/sqrt(f)
    assert fp.side(0, 0) is None and fp.side(1, 1) is None
    assert fp.side(0, 1).shape == (10, 4) and set(np.unique((fp.side(0, 1) * 2).numpy()).tolist()) == {-1.0, 1.0}
