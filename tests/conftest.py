"""Test configuration: 8 emulated host CPU devices."""

import os

from ringrl.cli import emulate_host_devices  # jax-free: must run before jax is imported

emulate_host_devices(8)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUJOCO_GL", "egl")
