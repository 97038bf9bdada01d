"""Rematerialisation that holds on XLA's CPU backend (ringrl.ops.remat)."""

import jax
import jax.numpy as jnp

from ringrl.ops.remat import always_zero, full_after, remat

L, D = 4096, 64


def layer(w, x):
    return x + jnp.tanh(jnp.tanh(x @ w) @ w.T)


def stack_loss(f, layers=8):
    def loss(w, x):
        for _ in range(layers):
            x = f(w, x)
        return (x**2).sum()

    return loss


def temp_bytes(f) -> int:
    w = jax.ShapeDtypeStruct((D, 4 * D), jnp.float32)
    x = jax.ShapeDtypeStruct((L, D), jnp.float32)
    compiled = jax.jit(jax.grad(stack_loss(f), argnums=(0, 1))).lower(w, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_remat_gives_the_gradients_of_the_function():
    kw, kx = jax.random.split(jax.random.PRNGKey(0))
    w = jax.random.normal(kw, (D, 4 * D)) * 0.1
    x = jax.random.normal(kx, (64, D))
    plain = jax.grad(stack_loss(layer, 3), argnums=(0, 1))(w, x)
    rematted = jax.grad(stack_loss(remat(layer), 3), argnums=(0, 1))(w, x)
    for a, b in zip(plain, rematted, strict=True):  # same maths, XLA may fuse it differently
        assert float(jnp.abs(a - b).max() / jnp.abs(b).max()) < 1e-5


def test_remat_keeps_only_layer_inputs_where_jax_checkpoint_keeps_everything():
    # 8 layers: without remat every layer's [L, 4D] activations stay alive for the backward
    plain, rematted = temp_bytes(layer), temp_bytes(remat(layer))
    assert rematted < 0.5 * plain, (rematted, plain)


def test_always_zero_is_zero_for_any_value_and_full_after_fills():
    for v in (1.5, -0.0, jnp.inf, -jnp.inf, jnp.nan):
        assert float(always_zero(jnp.array([v, 2.0]))) == 0.0
    filled = full_after(jnp.array([jnp.nan]), (2, 3), -jnp.inf, jnp.float32)
    assert filled.shape == (2, 3) and bool(jnp.all(filled == -jnp.inf))
