"""Test configuration: 8 emulated host CPU devices."""

import os

from ringrl.cli import emulate_host_devices, prefer_wide_vectors  # jax-free: before jax loads

emulate_host_devices(8)
prefer_wide_vectors()  # the code the CLI runs: 512-bit vectors on AVX-512 hosts
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUJOCO_GL", "egl")
