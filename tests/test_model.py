"""The Transformer: same parameters and same results whatever the attention implementation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ringrl.model import Transformer, TransformerConfig, with_attention
from ringrl.ops import blockwise_feedforward
from ringrl.ops.feedforward import blockwise_map
from ringrl.parallel import make_mesh

CFG = TransformerConfig(
    num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, block_size=4, dropout=0.0
)
B, L = 4, 64


def inputs():
    x = jax.random.normal(jax.random.PRNGKey(1), (B, L, CFG.d_model))
    seg = np.zeros((B, L), np.int32)
    seg[:, 30:] = 1
    seg[1, 50:] = -1  # padding
    return x, jnp.asarray(seg)


def loss_fn(model, x, seg, mesh=None):
    h = model(x, segment_ids=seg, mesh=mesh)
    target = jnp.sin(x)
    return jnp.mean(((h - target) ** 2).sum(-1) * (seg >= 0))


# compiled: run eagerly, the blockwise loops dispatch op by op and take tens of seconds
jit_value_and_grad = nnx.jit(nnx.value_and_grad(loss_fn))


def param_leaves(tree):
    return jax.tree.leaves(nnx.state(tree, nnx.Param))


def max_rel_diff(a_tree, b_tree):
    return max(
        float(jnp.abs(a - b).max() / jnp.abs(b).max())
        for a, b in zip(param_leaves(a_tree), param_leaves(b_tree), strict=True)
    )


def test_parameters_do_not_depend_on_attention_impl():
    shapes = {}
    for impl in ("vanilla", "blockwise", "ring"):
        cfg = dataclasses.replace(CFG, attention=impl, block_size=16)
        model = Transformer(cfg, rngs=nnx.Rngs(0))
        shapes[impl] = jax.tree.map(lambda p: (p.shape, p.dtype), nnx.state(model, nnx.Param))
        values = param_leaves(model)
    assert shapes["vanilla"] == shapes["blockwise"] == shapes["ring"]
    ref = param_leaves(Transformer(CFG, rngs=nnx.Rngs(0)))
    assert all(np.array_equal(a, b) for a, b in zip(values, ref, strict=True))


def test_ring_on_data2_seq4_mesh_matches_single_device_vanilla_loss_and_grads():
    x, seg = inputs()
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    loss0, grads0 = jit_value_and_grad(model, x, seg)
    ring = with_attention(model, "ring")
    mesh = make_mesh(data=2, seq=4)

    @nnx.jit
    def sharded_step(model, x, seg):
        return nnx.value_and_grad(loss_fn)(model, x, seg, mesh)

    loss1, grads1 = sharded_step(ring, x, seg)
    np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-5)
    assert max_rel_diff(grads1, grads0) <= 1e-4


def test_ring_model_on_input_already_in_ring_order_returns_output_in_that_order():
    from ringrl.ops import to_ring_layout

    x, seg = inputs()
    mesh = make_mesh(data=1, seq=4)
    ring = Transformer(dataclasses.replace(CFG, attention="ring"), rngs=nnx.Rngs(0))
    assert ring.ring_layout(mesh) == "zigzag"
    run = nnx.jit(  # compiled: eagerly the ring's loops take ~1 min
        lambda m, x, seg, sequence_order: m(
            x, segment_ids=seg, mesh=mesh, sequence_order=sequence_order
        ),
        static_argnames="sequence_order",
    )
    natural = run(ring, x, seg, sequence_order="natural")
    order = lambda a: to_ring_layout(a, mesh, "zigzag")  # noqa: E731
    laid_out = run(ring, order(x), order(seg), sequence_order="ring")
    np.testing.assert_allclose(laid_out, order(natural), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="sequence_order"):
        ring(x, segment_ids=seg, mesh=mesh, sequence_order="zigzag")


def test_blockwise_model_matches_vanilla_loss_and_grads():
    x, seg = inputs()
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    loss0, grads0 = jit_value_and_grad(model, x, seg)
    loss1, grads1 = jit_value_and_grad(with_attention(model, "blockwise"), x, seg)
    np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-5)
    assert max_rel_diff(grads1, grads0) <= 1e-4


def test_rematerialisation_does_not_change_gradients():
    x, seg = inputs()
    with_remat = Transformer(CFG, rngs=nnx.Rngs(0))
    without = Transformer(dataclasses.replace(CFG, remat=False), rngs=nnx.Rngs(0))
    _, g0 = jit_value_and_grad(with_remat, x, seg)
    _, g1 = jit_value_and_grad(without, x, seg)
    assert max_rel_diff(g0, g1) <= 1e-5


def test_parameters_do_not_depend_on_feedforward():
    trees = [
        nnx.state(
            Transformer(dataclasses.replace(CFG, feedforward=ff), rngs=nnx.Rngs(0)), nnx.Param
        )
        for ff in ("blockwise", "full")
    ]
    shapes = [jax.tree.map(lambda p: (p.shape, p.dtype), t) for t in trees]
    assert shapes[0] == shapes[1]
    leaves = [jax.tree.leaves(t) for t in trees]
    assert all(np.array_equal(a, b) for a, b in zip(*leaves, strict=True))


@pytest.mark.parametrize("impl", ["vanilla", "blockwise"])
def test_full_feedforward_matches_blockwise_outputs_and_grads(impl):
    x, seg = inputs()  # two segments and padding
    blockwise = Transformer(dataclasses.replace(CFG, attention=impl), rngs=nnx.Rngs(0))
    full = Transformer(dataclasses.replace(blockwise.cfg, feedforward="full"), rngs=nnx.Rngs(0))
    run = nnx.jit(lambda m, x, seg: m(x, segment_ids=seg))
    np.testing.assert_allclose(run(full, x, seg), run(blockwise, x, seg), rtol=1e-5, atol=1e-5)
    loss0, grads0 = jit_value_and_grad(blockwise, x, seg)
    loss1, grads1 = jit_value_and_grad(full, x, seg)
    np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-5)
    assert max_rel_diff(grads1, grads0) <= 1e-5


def test_bfloat16_compute_keeps_float32_parameters_and_stays_close():
    x, seg = inputs()
    cfg = dataclasses.replace(CFG, compute_dtype="bfloat16")
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    assert all(p.dtype == jnp.float32 for p in param_leaves(model))
    h16 = model(x, segment_ids=seg)
    h32 = Transformer(CFG, rngs=nnx.Rngs(0))(x, segment_ids=seg)
    assert h16.dtype == jnp.float32
    assert float(jnp.abs(h16 - h32).max()) < 0.1


def test_padding_positions_do_not_affect_real_tokens():
    x, seg = inputs()
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    noisy = x.at[1, 50:].set(100.0)
    h0, h1 = model(x, segment_ids=seg), model(noisy, segment_ids=seg)
    np.testing.assert_array_equal(np.asarray(h0[1, :50]), np.asarray(h1[1, :50]))


def test_blockwise_feedforward_equals_direct_application_with_gradients():
    w = jax.random.normal(jax.random.PRNGKey(0), (8, 16))
    fn = lambda h: jax.nn.gelu(h @ w)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 8))
    for shards in (1, 4):
        y = blockwise_feedforward(fn, x, block_size=4, num_shards=shards)
        np.testing.assert_allclose(y, fn(x), rtol=1e-6, atol=1e-6)
        g = jax.grad(lambda x: blockwise_feedforward(fn, x, block_size=4).sum())(x)
        ref = jax.grad(lambda x: fn(x).sum())(x)
        # each entry sums 16 terms of up to ~5: float32 rounding is ~1e-5 of the largest entry
        atol = 1e-5 * float(jnp.abs(ref).max())
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=atol)


def test_blockwise_map_matches_direct_application_for_inputs_and_closed_over_parameters():
    kw, kx, ka = jax.random.split(jax.random.PRNGKey(3), 3)
    w = jax.random.normal(kw, (8, 6))
    x = jax.random.normal(kx, (2, 32, 8))
    a = jax.random.normal(ka, (2, 32, 6))

    def direct(w, x, a):  # two inputs, two outputs, a parameter closed over
        h = jnp.tanh(x @ w)
        return h * a, (h + a).sum(-1)

    def loss(outs):
        return (outs[0] ** 2).sum() + jnp.sin(outs[1]).sum()

    for shards in (1, 4):

        def blocked(w, x, a, shards=shards):
            fn = lambda xb, ab: direct(w, xb, ab)  # noqa: E731
            return blockwise_map(fn, x, a, block_size=4, num_shards=shards)

        for got, want in zip(blocked(w, x, a), direct(w, x, a), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        g_got = jax.grad(lambda *args: loss(blocked(*args)), argnums=(0, 1, 2))(w, x, a)
        g_want = jax.grad(lambda *args: loss(direct(*args)), argnums=(0, 1, 2))(w, x, a)
        for got, want in zip(g_got, g_want, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_blockwise_map_passes_each_block_its_index():
    x = jnp.ones((1, 12, 2))
    idx = blockwise_map(lambda xb, i: xb * i, x, block_size=4, with_index=True)
    np.testing.assert_array_equal(idx[0, :, 0], np.repeat(np.arange(3.0), 4))


def test_config_rejects_unknown_attention_and_feedforward():
    with pytest.raises(ValueError, match="attention: expected one of"):
        TransformerConfig(attention="flash")
    with pytest.raises(ValueError, match="feedforward: expected one of"):
        TransformerConfig(feedforward="chunked")


def test_make_mesh_takes_remaining_devices_and_names_axes():
    mesh = make_mesh(data=2)
    assert mesh.axis_names == ("data", "seq")
    assert dict(mesh.shape) == {"data": 2, "seq": 4}
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh(data=2, seq=8)


def test_training_mode_dropout_is_seeded_and_differs_between_blocks():
    cfg = dataclasses.replace(CFG, num_layers=1, dropout=0.5, attention="blockwise")
    x = jnp.broadcast_to(jax.random.normal(jax.random.PRNGKey(2), (1, 1, CFG.d_model)), (1, 16, 32))
    run = lambda: Transformer(cfg, rngs=nnx.Rngs(0))(x, deterministic=False)  # noqa: E731
    out, again = run(), run()
    quiet = Transformer(cfg, rngs=nnx.Rngs(0))(x)
    np.testing.assert_array_equal(out, again)  # same seed, same masks
    # identical tokens: without dropout every position's output is the same ...
    np.testing.assert_allclose(quiet[0, 0], quiet[0, 4], rtol=1e-5)
    # ... with it, the same offset in two blocks (block 4) must get different masks
    assert not np.allclose(out[0, 0], out[0, 4])
    assert not np.allclose(out, quiet)
