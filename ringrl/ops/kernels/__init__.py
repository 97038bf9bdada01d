"""Per-chunk attention kernels behind blockwise and ring attention (:mod:`.base`: the boundary).

``"xla"``: the XLA-level tile kernel (:mod:`.xla`); ``"pallas"``: the fused flash-attention
kernel in Pallas (:mod:`.pallas`; Triton on GPU, interpret mode elsewhere); ``"auto"``:
``"pallas"`` on GPU, ``"xla"`` elsewhere. Names resolve to kernel objects carrying the
platform's :class:`ringrl.backend.Tuning`; a kernel object may be passed wherever a name is.
"""

from __future__ import annotations

from ringrl import backend
from ringrl.ops.kernels.base import Chunk, Kernel, Side, backward_lse, empty_chunk, merge
from ringrl.ops.kernels.pallas import PallasKernel
from ringrl.ops.kernels.xla import XlaKernel

KERNELS = ("auto", "xla", "pallas")


def get_kernel(kernel: str | Kernel = "auto") -> Kernel:
    """The kernel object for ``kernel`` (a name in :data:`KERNELS`, or a kernel object, returned
    as it is). Names are resolved for jax's default backend, with its :func:`backend.tuning`."""
    if not isinstance(kernel, str):
        return kernel
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; expected one of {KERNELS}")
    on = backend.platform()
    if kernel == "auto":
        kernel = "pallas" if on == "gpu" else "xla"
    tuning = backend.tuning(on)
    return PallasKernel(tuning) if kernel == "pallas" else XlaKernel(tuning)


__all__ = [
    "KERNELS",
    "Chunk",
    "Kernel",
    "PallasKernel",
    "Side",
    "XlaKernel",
    "backward_lse",
    "empty_chunk",
    "get_kernel",
    "merge",
]
