"""One process of the 2-process ring-attention test (run by tests/test_multiprocess.py).

Usage: python multiprocess_ring.py COORDINATOR_PORT PROCESS_ID
Each process has 2 CPU devices; together they form a 4-device ("seq",) mesh.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from ringrl import parallel  # noqa: E402
from ringrl.ops import attention, reference_attention  # noqa: E402


def main(port: int, process_id: int) -> None:
    parallel.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    mesh = parallel.make_mesh(data=1, seq=4)
    B, L, H, K, D = 2, 64, 4, 2, 8
    rng = np.random.default_rng(0)  # same full inputs in every process
    q = rng.standard_normal((B, L, H, D), np.float32)
    k = rng.standard_normal((B, L, K, D), np.float32)
    v = rng.standard_normal((B, L, K, D), np.float32)
    ct = rng.standard_normal((B, L, H, D), np.float32)
    seg = np.zeros((B, L), np.int32)
    seg[:, 40:] = 1
    seg[0, 56:] = -1

    # process-local slices of the sequence -> global arrays sharded over "seq"
    local = slice(process_id * L // 2, (process_id + 1) * L // 2)
    sharding = parallel.batch_sharding(mesh, 4)
    gq, gk, gv, gct = (
        jax.make_array_from_process_local_data(sharding, x[:, local]) for x in (q, k, v, ct)
    )
    gseg = jax.make_array_from_process_local_data(parallel.batch_sharding(mesh, 2), seg[:, local])

    @jax.jit
    def out_and_grads(q, k, v, seg, ct):
        fn = lambda q, k, v: attention(
            q, k, v, impl="ring", mesh=mesh, segment_ids=seg, block_size=4
        )
        out, vjp = jax.vjp(fn, q, k, v)
        return (out, *vjp(ct))

    results = [
        np.asarray(multihost_utils.process_allgather(x, tiled=True))
        for x in out_and_grads(gq, gk, gv, gseg, gct)
    ]

    with jax.enable_x64(True):
        args = [jnp.asarray(x, jnp.float64) for x in (q, k, v)]
        fn = lambda q, k, v: reference_attention(q, k, v, segment_ids=jnp.asarray(seg))
        ref_out, vjp = jax.vjp(fn, *args)
        refs = [ref_out, *vjp(jnp.asarray(ct, jnp.float64))]
    for name, got, ref in zip(["out", "dq", "dk", "dv"], results, refs, strict=True):
        ref = np.asarray(ref)
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err <= 1e-5, f"{name}: relative error {err}"
    print(f"process {process_id}: ring over 4 devices in 2 processes matches the reference")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
