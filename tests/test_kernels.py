"""The kernel boundary and the fused Pallas kernel (interpret mode on CPU) against float64.

Small shapes: Pallas' interpret mode runs every program of the grid one after another.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_ops import assert_matches_reference, output_and_grads, rel_err

from ringrl import backend
from ringrl.ops import attention, blockwise_attention, get_kernel, ring_step_counts
from ringrl.ops.kernels import PallasKernel, Side, XlaKernel, merge
from ringrl.parallel import make_mesh

B, L, D = 2, 64, 16
# blocks of 16: every test walks several query and key blocks, forward and backward
PALLAS = PallasKernel(
    dataclasses.replace(
        backend.CPU, block_q=16, block_k=16, bwd_block_q=16, bwd_block_k=16, interpret=True
    )
)


def inputs(seed, heads=4, kv_heads=2, seq=L, dtype=jnp.float32):
    kq, kk, kv, kc = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(kq, (B, seq, heads, D), dtype)
    k = jax.random.normal(kk, (B, seq, kv_heads, D), dtype)
    v = jax.random.normal(kv, (B, seq, kv_heads, D), dtype)
    return q, k, v, jax.random.normal(kc, (B, seq, heads, D), dtype)


def padded_segments(seq=L):
    """Row 0: two segments then padding; row 1: padding first, then one segment."""
    row0 = np.r_[np.zeros(23), np.ones(25), -np.ones(seq - 48)]
    row1 = np.r_[-np.ones(9), np.full(seq - 9, 4)]
    return jnp.asarray(np.stack([row0, row1]), jnp.int32)


def pallas_blockwise(causal, seg=None):
    return lambda q, k, v: blockwise_attention(
        q, k, v, causal=causal, segment_ids=seg, kernel=PALLAS
    )


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_pallas_forward_and_gradients_match_float64(causal):
    q, k, v, ct = inputs(0, heads=2, kv_heads=2)
    assert_matches_reference(pallas_blockwise(causal), q, k, v, ct, 1e-5, causal=causal)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_pallas_grouped_query_attention_matches_float64(kv_heads):
    q, k, v, ct = inputs(1, heads=4, kv_heads=kv_heads)
    assert_matches_reference(pallas_blockwise(True), q, k, v, ct, 1e-5, causal=True)


def test_pallas_segments_with_padding_match_float64():
    q, k, v, ct = inputs(2)
    seg = padded_segments()
    fn = pallas_blockwise(True, seg)
    assert_matches_reference(fn, q, k, v, ct, 1e-5, causal=True, segment_ids=seg)


def test_pallas_padding_rows_are_exactly_zero_with_zero_gradients():
    q, k, v, ct = inputs(3)
    seg = padded_segments()
    pad = np.asarray(seg < 0)
    out, grads = output_and_grads(pallas_blockwise(False, seg), q, k, v, ct)
    assert np.all(np.asarray(out)[pad] == 0.0)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
        assert np.all(np.asarray(g)[pad] == 0.0)


def test_pallas_bfloat16_matches_float64():
    q, k, v, ct = inputs(4, dtype=jnp.bfloat16)
    seg = padded_segments()
    fn = pallas_blockwise(True, seg)
    assert_matches_reference(fn, q, k, v, ct, 2e-2, causal=True, segment_ids=seg)


def _chunk_case(seed=5, causal=True):
    """A zigzag-like query chunk (two position runs) against a key chunk placed elsewhere."""
    q, k, v, ct = inputs(seed, seq=32)
    q_pos = jnp.r_[jnp.arange(16, 32), jnp.arange(96, 112)].astype(jnp.int32)
    k_pos = jnp.arange(40, 72, dtype=jnp.int32)  # after the first run, before the second
    seg = jnp.zeros((B, 32), jnp.int32).at[1, :4].set(-1)
    return q, k, v, ct, Side(q_pos, seg), Side(k_pos, seg)


def _chunk_reference(q, k, v, ct, q_side, k_side, causal):
    """float64 out, lse and (dq, dk, dv) of one chunk pair, masked by global positions."""
    with jax.enable_x64(True):
        f64 = lambda x: jnp.asarray(np.asarray(x, np.float64))  # noqa: E731
        G = q.shape[2] // k.shape[2]
        mask = (q_side.seg_BL[:, :, None] == k_side.seg_BL[:, None, :]) & (
            q_side.seg_BL[:, :, None] >= 0
        )
        if causal:
            mask &= q_side.pos_L[:, None] >= k_side.pos_L[None, :]

        def attend(q, k, v):
            k, v = jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2)
            s = jnp.einsum("bqhd,bshd->bhqs", q, k) * D**-0.5
            s = jnp.where(mask[:, None], s, -jnp.inf)
            lse = jax.nn.logsumexp(s, axis=-1)
            p = jnp.where(
                mask[:, None], jnp.exp(s - jnp.where(jnp.isfinite(lse), lse, 0)[..., None]), 0
            )
            return jnp.einsum("bhqs,bshd->bqhd", p, v), lse

        (out, lse), vjp = jax.vjp(attend, f64(q), f64(k), f64(v))
        grads = vjp((f64(ct), jnp.zeros_like(lse)))
        return np.asarray(out), np.asarray(lse), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("kernel", [XlaKernel(), PALLAS], ids=["xla", "pallas"])
def test_kernel_chunk_with_global_positions_matches_float64(kernel):
    q, k, v, ct, q_side, k_side = _chunk_case()
    ref_out, ref_lse, ref_grads = _chunk_reference(q, k, v, ct, q_side, k_side, True)

    @jax.jit
    def run(q, k, v, ct):
        q_k = kernel.prepare(q, k.shape[2])
        chunk = kernel.forward(q_k, k, v, q_side, k_side, causal=True, block=16)
        out, lse = kernel.finish(chunk)
        # the global out/lse of this one chunk are its own: the backward gives its gradients
        grads = kernel.backward(
            q_k, k, v, out, chunk.lse, ct, q_side, k_side, causal=True, block=16
        )
        return out, lse, grads

    out, lse, grads = run(q, k, v, ct)
    assert rel_err(out, ref_out) <= 1e-5
    finite = np.isfinite(ref_lse)
    assert not finite.all()  # the case has rows that see nothing in this chunk
    assert np.all(np.asarray(lse)[~finite] == -np.inf)
    np.testing.assert_allclose(np.asarray(lse)[finite], ref_lse[finite], rtol=1e-5)
    for name, g, ref in zip("qkv", grads, ref_grads, strict=True):
        assert g.dtype == jnp.float32
        assert rel_err(g, ref) <= 1e-5, f"d{name}: {rel_err(g, ref)}"


@pytest.mark.parametrize("kernel", [XlaKernel(), PALLAS], ids=["xla", "pallas"])
def test_merge_of_two_halves_equals_the_whole_and_keeps_empty_rows_empty(kernel):
    q, k, v, _, q_side, k_side = _chunk_case(6)
    halves = [slice(0, 16), slice(16, 32)]

    @jax.jit
    def run(q, k, v):
        q_k = kernel.prepare(q, k.shape[2])
        fwd = lambda s, acc=None: kernel.forward(  # noqa: E731
            q_k, k[:, s], v[:, s], q_side, Side(k_side.pos_L[s], k_side.seg_BL[:, s]),
            causal=True, block=16, acc=acc,
        )  # fmt: skip
        whole = fwd(slice(0, 32))
        first, second = (fwd(s) for s in halves)
        return whole, merge(first, second), fwd(halves[1], acc=first)

    whole, merged, continued = run(q, k, v)
    empty = np.asarray(whole.lse) == -np.inf
    assert empty.any()
    for got in (merged, continued):
        np.testing.assert_allclose(np.asarray(got.out), np.asarray(whole.out), atol=1e-6)
        assert np.all(np.asarray(got.lse)[empty] == -np.inf)
        assert not np.any(np.isnan(np.asarray(got.out)))


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_pallas_through_the_ring_matches_float64(devices):
    q, k, v, ct = inputs(10 + devices)
    seg = padded_segments()
    mesh = make_mesh(data=1, seq=devices)
    fn = lambda q, k, v: attention(  # noqa: E731
        q, k, v, impl="ring", mesh=mesh, segment_ids=seg, block_size=16, kernel=PALLAS
    )
    assert_matches_reference(fn, q, k, v, ct, 1e-5, causal=True, segment_ids=seg)


def test_pallas_ring_work_is_balanced_and_skips_hidden_blocks():
    # blocks of 8 = the zigzag halves of each device's 16 positions (4 devices, 64 tokens)
    tuning = dataclasses.replace(PALLAS.tuning, block_q=8, block_k=8)
    q, k, v, _ = inputs(7)
    counts = np.asarray(
        ring_step_counts(q, k, v, mesh=make_mesh(1, 4), block_size=8, kernel=PallasKernel(tuning))
    )
    assert np.all(counts == counts[0:1])  # zigzag: the same work on every device at every step
    n = L // 8  # blocks per row; causal: the lower triangle including the diagonal, per row
    assert counts.sum() == B * n * (n + 1) // 2


def test_auto_kernel_is_xla_off_gpu_and_unknown_names_are_errors():
    assert jax.default_backend() == "cpu"
    assert get_kernel("auto").name == "xla"
    assert get_kernel("pallas").tuning.interpret
    with pytest.raises(ValueError, match="unknown attention kernel"):
        get_kernel("flash")
    q, k, v, _ = inputs(8)
    with pytest.raises(ValueError, match="unknown attention kernel"):
        attention(q, k, v, impl="vanilla", kernel="cudnn")


def test_tuning_overrides_reach_kernels_resolved_by_name():
    with backend.overrides(query_tile=2, pass_bytes=1):
        assert get_kernel("xla").tuning.query_tile == 2
        assert get_kernel("xla").tuning.pass_bytes == 1
    assert get_kernel("xla").tuning == backend.CPU
    with pytest.raises(TypeError, match="unknown tuning fields"):
        with backend.overrides(tile=3):
            pass


def test_pallas_kernel_lowers_to_triton_for_a_gpu():
    """Lowering only (Pallas' Triton rules, on CPU): Triton compiles it on a GPU, not here."""
    kernel = PallasKernel(backend.GPU)
    q = jax.ShapeDtypeStruct((1, 512, 16, 64), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((1, 512, 4, 64), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((1, 512), jnp.int32)

    def loss(q, k, v, seg):
        return (
            blockwise_attention(q, k, v, segment_ids=seg, kernel=kernel).astype(jnp.float32).sum()
        )

    lowered = jax.jit(jax.grad(loss, (0, 1, 2))).trace(q, k, k, seg)
    text = lowered.lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 3  # forward, dK/dV, dQ
