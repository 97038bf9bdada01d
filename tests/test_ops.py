"""Every attention path equals a float64 softmax reference, forward and gradients.

Covered: vanilla, blockwise and ring (1, 2, 4, 8 devices), causal and not, grouped-query heads,
packed segments with padding, float32 and bfloat16.
"""

import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from ringrl.ops import attention, blockwise_attention, reference_attention, ring_step_counts
from ringrl.parallel import make_mesh

B, L, H, K, D = 2, 64, 4, 2, 16
BLOCK = 4


def random_inputs(seed=0, heads=H, kv_heads=K, seq=L, dtype=jnp.float32):
    kq, kk, kv, kc = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(kq, (B, seq, heads, D), dtype)
    k = jax.random.normal(kk, (B, seq, kv_heads, D), dtype)
    v = jax.random.normal(kv, (B, seq, kv_heads, D), dtype)
    cotangent = jax.random.normal(kc, (B, seq, heads, D), dtype)
    return q, k, v, cotangent


def packed_segments(seq=L):
    """Row 0: three episodes then padding. Row 1: padding at the start, then two episodes."""
    row0 = np.r_[np.zeros(20), np.ones(17), np.full(15, 2), -np.ones(seq - 52)]
    row1 = np.r_[-np.ones(5), np.full(30, 3), np.full(seq - 35, 7)]
    return jnp.asarray(np.stack([row0, row1]), jnp.int32)


def reference_f64(q, k, v, cotangent, **kw):
    """Output and (dq, dk, dv) of plain softmax attention, computed in float64."""
    with jax.enable_x64(True):
        args = [jnp.asarray(np.asarray(x, np.float64)) for x in (q, k, v)]
        out, vjp = jax.vjp(lambda q, k, v: reference_attention(q, k, v, **kw), *args)
        grads = vjp(jnp.asarray(np.asarray(cotangent, np.float64)))
        return np.asarray(out), [np.asarray(g) for g in grads]


def output_and_grads(fn, q, k, v, cotangent):
    """Output and (dq, dk, dv) of ``fn``, compiled (eagerly the kernels' loops run op by op)."""

    def run(q, k, v, cotangent):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(cotangent)

    return jax.jit(run)(q, k, v, cotangent)


def rel_err(x, ref):
    x = np.asarray(jnp.asarray(x, jnp.float32), np.float64)
    return np.abs(x - ref).max() / np.abs(ref).max()


def assert_matches_reference(fn, q, k, v, cotangent, tol, **ref_kw):
    ref_out, ref_grads = reference_f64(q, k, v, cotangent, **ref_kw)
    out, grads = output_and_grads(fn, q, k, v, cotangent)
    assert out.dtype == q.dtype
    assert rel_err(out, ref_out) <= tol
    for name, g, ref_g in zip("qkv", grads, ref_grads, strict=True):
        assert g.dtype == q.dtype, name
        assert rel_err(g, ref_g) <= tol, f"d{name}: {rel_err(g, ref_g)}"


CASES = [
    pytest.param(True, False, id="causal"),
    pytest.param(False, False, id="full"),
    pytest.param(True, True, id="causal-packed-padded"),
    pytest.param(False, True, id="full-packed-padded"),
]


@pytest.mark.parametrize("causal,packed", CASES)
def test_vanilla_float32_matches_float64_reference(causal, packed):
    q, k, v, ct = random_inputs()
    seg = packed_segments() if packed else None
    fn = lambda q, k, v: attention(q, k, v, impl="vanilla", causal=causal, segment_ids=seg)
    assert_matches_reference(fn, q, k, v, ct, 1e-5, causal=causal, segment_ids=seg)


@pytest.mark.parametrize("causal,packed", CASES)
def test_blockwise_float32_matches_float64_reference(causal, packed):
    q, k, v, ct = random_inputs(1)
    seg = packed_segments() if packed else None
    fn = lambda q, k, v: blockwise_attention(
        q, k, v, causal=causal, segment_ids=seg, block_size=BLOCK
    )
    assert_matches_reference(fn, q, k, v, ct, 1e-5, causal=causal, segment_ids=seg)


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
@pytest.mark.parametrize("causal,packed", CASES)
def test_ring_float32_matches_float64_reference(devices, causal, packed):
    q, k, v, ct = random_inputs(devices)
    seg = packed_segments() if packed else None
    mesh = make_mesh(data=1, seq=devices)
    fn = lambda q, k, v: attention(
        q, k, v, impl="ring", mesh=mesh, causal=causal, segment_ids=seg, block_size=BLOCK
    )
    assert_matches_reference(fn, q, k, v, ct, 1e-5, causal=causal, segment_ids=seg)


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
def test_ring_bfloat16_matches_float64_reference(devices):
    q, k, v, ct = random_inputs(10 + devices, dtype=jnp.bfloat16)
    seg = packed_segments()
    mesh = make_mesh(data=1, seq=devices)
    fn = lambda q, k, v: attention(
        q, k, v, impl="ring", mesh=mesh, segment_ids=seg, block_size=BLOCK
    )
    assert_matches_reference(fn, q, k, v, ct, 2e-2, causal=True, segment_ids=seg)


@pytest.mark.parametrize("impl", ["vanilla", "blockwise"])
def test_single_device_paths_bfloat16_match_float64_reference(impl):
    q, k, v, ct = random_inputs(3, dtype=jnp.bfloat16)
    seg = packed_segments()
    fn = lambda q, k, v: attention(q, k, v, impl=impl, segment_ids=seg, block_size=BLOCK)
    assert_matches_reference(fn, q, k, v, ct, 2e-2, causal=True, segment_ids=seg)


def test_ring_on_data_and_seq_mesh_matches_reference():
    q, k, v, ct = random_inputs(5)
    mesh = make_mesh(data=2, seq=4)
    fn = lambda q, k, v: attention(q, k, v, impl="ring", mesh=mesh, block_size=BLOCK)
    assert_matches_reference(fn, q, k, v, ct, 1e-5, causal=True)


@pytest.mark.parametrize("impl", ["blockwise", "ring"])
def test_multi_head_attention_without_grouping_matches_reference(impl):
    q, k, v, ct = random_inputs(6, heads=4, kv_heads=4)
    fn = lambda q, k, v: attention(q, k, v, impl=impl, block_size=BLOCK)
    assert_matches_reference(fn, q, k, v, ct, 1e-5, causal=True)


def test_ring_with_block_larger_than_shard_uses_the_shard():
    q, k, v, ct = random_inputs(7)
    fn = lambda q, k, v: attention(q, k, v, impl="ring", mesh=make_mesh(1, 4), block_size=512)
    assert_matches_reference(fn, q, k, v, ct, 1e-5, causal=True)


@pytest.mark.parametrize("impl", ["vanilla", "blockwise", "ring"])
def test_padding_rows_are_exactly_zero_and_get_zero_gradient(impl):
    q, k, v, ct = random_inputs(8)
    seg = packed_segments()
    pad = np.asarray(seg < 0)
    fn = lambda q, k, v: attention(q, k, v, impl=impl, segment_ids=seg, block_size=BLOCK)
    out, grads = output_and_grads(fn, q, k, v, ct)
    assert np.all(np.asarray(out)[pad] == 0.0)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
        assert np.all(np.asarray(g)[pad] == 0.0)


@pytest.mark.parametrize("impl", ["vanilla", "blockwise", "ring"])
def test_fully_padded_sequence_gives_zeros_not_nan(impl):
    q, k, v, ct = random_inputs(9)
    seg = jnp.full((B, L), -1, jnp.int32)
    fn = lambda q, k, v: attention(q, k, v, impl=impl, segment_ids=seg, block_size=BLOCK)
    out, grads = output_and_grads(fn, q, k, v, ct)
    assert not np.any(np.asarray(out))
    assert all(not np.any(np.asarray(g)) for g in grads)


def test_causal_output_ignores_future_keys():
    q, k, v, _ = random_inputs(11)
    ring = jax.jit(
        lambda q, k, v: attention(q, k, v, impl="ring", mesh=make_mesh(1, 4), block_size=BLOCK)
    )
    out = ring(q, k, v)
    k2 = k.at[:, 40:].set(jax.random.normal(jax.random.PRNGKey(99), k[:, 40:].shape))
    out2 = ring(q, k2, v)
    np.testing.assert_array_equal(np.asarray(out[:, :40]), np.asarray(out2[:, :40]))
    assert not np.allclose(np.asarray(out[:, 40:]), np.asarray(out2[:, 40:]))


def test_ring_causal_work_is_balanced_across_devices_at_every_step():
    q, k, v, _ = random_inputs()
    counts = np.asarray(ring_step_counts(q, k, v, mesh=make_mesh(1, 4), block_size=BLOCK))
    assert counts.shape == (4, 4)
    assert np.all(counts == counts[0:1])  # same work on every device at every step


def test_ring_causal_skips_hidden_block_pairs():
    q, k, v, _ = random_inputs()
    counts = np.asarray(ring_step_counts(q, k, v, mesh=make_mesh(1, 4), block_size=BLOCK))
    n = L // BLOCK  # blocks in the whole sequence
    visible = n * (n + 1) // 2  # lower triangle including the diagonal
    assert counts.sum() == visible


def test_non_causal_ring_computes_every_block_pair():
    q, k, v, _ = random_inputs()
    counts = ring_step_counts(q, k, v, mesh=make_mesh(1, 4), causal=False, block_size=BLOCK)
    assert np.asarray(counts).sum() == (L // BLOCK) ** 2


def test_ring_sends_each_group_of_blocks_on_before_computing_it():
    from ringrl.ops import ring_attention

    q, k, v, _ = random_inputs()
    mesh = make_mesh(1, 4)
    fn = jax.shard_map(
        lambda q, k, v: ring_attention(q, k, v, axis_name="seq", block_size=BLOCK),
        mesh=mesh,
        in_specs=(jax.P(None, "seq"),) * 3,
        out_specs=jax.P(None, "seq"),
        check_vma=False,
    )
    jaxpr = jax.make_jaxpr(jax.grad(lambda q, k, v: fn(q, k, v).sum(), (0, 1, 2)))(q, k, v)
    loops = [e for e in _walk(jaxpr.jaxpr) if e.primitive.name in ("scan", "while")]
    bodies = [
        e.params["jaxpr" if e.primitive.name == "scan" else "body_jaxpr"].jaxpr for e in loops
    ]
    sends_before_compute = []
    for body in bodies:  # loops over groups of key blocks: a ppermute, then the block loop
        names = [e.primitive.name for e in body.eqns]
        if "ppermute" in names:
            query_loop = next(i for i, n in enumerate(names) if n in ("scan", "while"))
            sends_before_compute.append(names.index("ppermute") < query_loop)
    # forward ring steps, backward ring steps (K/V leave before their block is computed) and
    # the backward's last step, which only sends the finished dK/dV blocks home
    assert sends_before_compute == [True, True, False]


def _walk(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _walk(sub)


def test_sequence_not_divisible_by_ring_chunks_is_a_clear_error():
    q, k, v, _ = random_inputs(seq=60)
    with pytest.raises(ValueError, match="multiple of 16"):
        attention(q, k, v, impl="ring", mesh=make_mesh(1, 8), block_size=BLOCK)


def test_unknown_impl_is_a_clear_error():
    q, k, v, _ = random_inputs()
    with pytest.raises(ValueError, match="unknown attention impl"):
        attention(q, k, v, impl="flash")


def test_heads_not_multiple_of_kv_heads_is_rejected():
    q, k, v, _ = random_inputs(heads=3, kv_heads=2)
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        reference_attention(q, k, v)


def test_contiguous_layout_is_imbalanced_where_zigzag_is_not():
    q, k, v, _ = random_inputs()
    counts = np.asarray(
        ring_step_counts(q, k, v, mesh=make_mesh(1, 4), block_size=BLOCK, layout="contiguous")
    )
    assert counts[0, 1:].sum() == 0  # device 0 holds the first positions: nothing after step 0
    assert np.all(counts[3] > 0)  # the last device computes at every step
    assert counts.sum() == (L // BLOCK) * (L // BLOCK + 1) // 2


def test_zigzag_round_trip_restores_natural_order():
    from ringrl.ops.layouts import from_zigzag, to_zigzag

    mesh = make_mesh(1, 4)
    x = jnp.arange(2 * L, dtype=jnp.float32).reshape(2, L)
    spec = jax.P(None, "seq")
    zig = jax.shard_map(lambda x: to_zigzag(x, "seq"), mesh=mesh, in_specs=spec, out_specs=spec)
    laid_out = zig(x)
    chunk = L // 8
    np.testing.assert_array_equal(laid_out[0, chunk : 2 * chunk], x[0, 7 * chunk : 8 * chunk])
    back = jax.shard_map(lambda x: from_zigzag(x, "seq"), mesh=mesh, in_specs=spec, out_specs=spec)
    np.testing.assert_array_equal(back(laid_out), x)


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
@pytest.mark.parametrize("causal,packed", CASES)
def test_ring_on_inputs_already_in_ring_order_matches_float64_reference(devices, causal, packed):
    from ringrl.ops import from_ring_layout, ring_attention_laid_out, ring_layout, to_ring_layout

    q, k, v, ct = random_inputs(20 + devices)
    seg = packed_segments() if packed else None
    mesh = make_mesh(data=1, seq=devices)
    layout = ring_layout(causal)
    order = lambda x: to_ring_layout(x, mesh, layout)  # noqa: E731

    def fn(q, k, v):  # natural order in and out, so the reference applies unchanged
        out = ring_attention_laid_out(
            order(q),
            order(k),
            order(v),
            mesh=mesh,
            layout=layout,
            causal=causal,
            segment_ids=None if seg is None else order(seg),
            block_size=BLOCK,
        )
        return from_ring_layout(out, mesh, layout)

    assert_matches_reference(fn, q, k, v, ct, 1e-5, causal=causal, segment_ids=seg)


def test_to_ring_layout_puts_zigzag_chunks_on_devices_and_back():
    from ringrl.ops import from_ring_layout, layout_positions, to_ring_layout

    mesh = make_mesh(1, 4)
    x = jnp.arange(2 * L * 3, dtype=jnp.float32).reshape(2, L, 3)  # any trailing axes
    laid_out = to_ring_layout(x, mesh, "zigzag")
    C = L // 4
    for r in range(4):
        positions = np.asarray(layout_positions("zigzag", r, 4, C))
        np.testing.assert_array_equal(laid_out[:, r * C : (r + 1) * C], x[:, positions])
    np.testing.assert_array_equal(from_ring_layout(laid_out, mesh, "zigzag"), x)


def xla_kernel(**tuning):
    """The xla kernel with these :class:`ringrl.backend.Tuning` fields (passed, not patched)."""
    from ringrl.backend import CPU
    from ringrl.ops.kernels import XlaKernel

    return XlaKernel(dataclasses.replace(CPU, **tuning))


@pytest.mark.parametrize("impl", ["blockwise", "ring"])
@pytest.mark.parametrize("tiles", [(2, 4), (4, 2), (2, 1)])
def test_tiles_smaller_than_the_block_match_float64_reference(impl, tiles):
    # block 4 walked as tiles of (query rows, key positions)
    kernel = xla_kernel(query_tile=tiles[0], key_tile=tiles[1])
    assert kernel.tiles(BLOCK, H) == tiles
    q, k, v, ct = random_inputs()
    seg = packed_segments()
    mesh = make_mesh(1, 4) if impl == "ring" else None
    fn = lambda q, k, v: attention(  # noqa: E731
        q, k, v, impl=impl, mesh=mesh, block_size=BLOCK, segment_ids=seg, kernel=kernel
    )
    assert_matches_reference(fn, q, k, v, ct, 1e-5, causal=True, segment_ids=seg)


@pytest.mark.parametrize("blocks_per_pass, key_tile", [(1, 4), (2, 4), (4, 4), (2, 2)])
def test_ring_passing_several_blocks_at_a_time_matches_float64_reference(blocks_per_pass, key_tile):
    from ringrl.ops import ring

    # 4 devices, zigzag: a shard of 16 positions = 4 blocks of 4; each block of k, v (2 kv
    # heads x 16) and segment ids is 2 x 4 x (2 x 2 x 16 x 4 + 4) bytes; key tile 2: each
    # block is two key tiles
    block_bytes = B * BLOCK * (2 * K * D * 4 + 4)
    kernel = xla_kernel(key_tile=key_tile, pass_bytes=blocks_per_pass * block_bytes)
    q, k, v, ct = random_inputs(20 + blocks_per_pass)
    assert ring.pass_blocks(k[:, : L // 4], BLOCK, kernel.tuning.pass_bytes) == blocks_per_pass
    seg = packed_segments()
    mesh = make_mesh(1, 4)
    fn = lambda q, k, v: attention(  # noqa: E731
        q, k, v, impl="ring", mesh=mesh, block_size=BLOCK, segment_ids=seg, kernel=kernel
    )
    assert_matches_reference(fn, q, k, v, ct, 1e-5, causal=True, segment_ids=seg)


def test_blocks_per_pass_fill_the_byte_budget_and_divide_the_shard():
    from ringrl.backend import CPU
    from ringrl.ops.ring import pass_blocks

    budget = CPU.pass_bytes
    block_bytes = 512 * (2 * 4 * 32 * 4 + 4)  # batch 1, 4 kv heads x 32, float32
    assert budget // block_bytes == 7
    assert pass_blocks(jnp.zeros((1, 2048, 4, 32)), 512, budget) == 4  # the whole shard fits
    assert pass_blocks(jnp.zeros((1, 8192, 4, 32)), 512, budget) == 4  # largest divisor <= 7
    assert pass_blocks(jnp.zeros((1, 7 * 512, 4, 32)), 512, budget) == 7
    assert pass_blocks(jnp.zeros((1, 2048, 64, 128)), 512, budget) == 1  # one block > budget


def test_tiles_divide_the_block_and_bound_the_score_tile():
    from ringrl.ops.kernels.xla import key_tile, query_tile

    assert (query_tile(512, heads=4), key_tile(512)) == (128, 256)  # [4 x 128 x 256] = 512 KiB
    assert (query_tile(1024, heads=8), key_tile(1024)) == (64, 256)  # bounded by the tile's size
    assert (query_tile(125, heads=4), key_tile(125)) == (125, 125)  # a small block is one tile
    assert (query_tile(375, heads=4), key_tile(375)) == (125, 125)  # largest divisors under caps
    assert (query_tile(4), key_tile(4)) == (4, 4)


def test_ring_counts_computed_tile_pairs_when_tiles_are_smaller_than_blocks():
    q, k, v, _ = random_inputs()
    kernel = xla_kernel(query_tile=2, key_tile=2)
    counts = np.asarray(
        ring_step_counts(q, k, v, mesh=make_mesh(1, 4), block_size=BLOCK, kernel=kernel)
    )
    n = L // 2  # 2 x 2 tiles: the causal mask hides every pair above the diagonal tile
    assert counts.sum() == n * (n + 1) // 2
    assert np.all(counts == counts[0:1])


def test_key_tile_kinds_are_the_columns_of_the_tile_pair_table():
    from ringrl.ops.kernels import Side
    from ringrl.ops.kernels.xla import key_tile_kinds, span_stats, tile_kinds

    seg = packed_segments()[:1]  # three segments, then padding
    side = Side(jnp.arange(L, dtype=jnp.int32), seg)
    q, k = span_stats(side, 2), span_stats(side, 4)
    for causal in (True, False):
        table = np.asarray(tile_kinds(q, k, causal))
        assert len(np.unique(table)) == 3  # the inputs exercise skip, full and masked pairs
        for j in range(L // 4):
            np.testing.assert_array_equal(key_tile_kinds(q, k, jnp.int32(j), causal), table[:, j])
