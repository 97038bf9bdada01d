"""Platform tuning: everything chosen for one machine, in one place.

The attention kernels (:mod:`ringrl.ops.kernels`) and the ring schedule read no module globals:
they get a :class:`Tuning` (a frozen dataclass, hashable, so it can be a static argument) from
the kernel object they are given, and :func:`tuning` picks the platform's defaults. This module
also owns the XLA-CPU flags the command line sets before jax starts (emulated host devices,
collective timeouts, vector width); it imports no jax at module level, so it can run first.

What was measured where (docs/benchmarks.md [A5]-[A7]): the CPU tiles and pass size on 2-core
Xeon and EPYC hosts. Nothing here was measured on a GPU: the GPU values are the kernel's design
defaults (FlashAttention-2-like tiles for H100/H200) and are marked as such.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import sys
from collections.abc import Iterator

# ---- kernel and ring parameters ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tuning:
    """Parameters of the attention kernels and of the ring schedule on one platform.

    XLA tile kernel (``kernel="xla"``):
      query_tile, key_tile: most query rows / key positions per tile pair; the largest divisor
        of the block under each cap is used (:func:`ringrl.ops.kernels.xla.query_tile`).
      tile_scores: most float32 scores in one ``[heads x query tile x key tile]`` tile: keeps
        a tile's score-sized arrays in a core's L2 (512 KiB; [A6]).
      late_buffers: create zero-initialised accumulators from a value of the data they
        accumulate (:func:`ringrl.ops.remat.full_after`), the workaround for XLA's CPU
        scheduler, which otherwise allocates them at program start (every layer's at once).
    Ring schedule:
      pass_bytes: most bytes of keys, values and segment ids in one ``ppermute`` (4 MiB: on CPU
        every pass is a rendezvous of all devices, so fewer, larger passes cost less; [A5]).
    Pallas kernel (``kernel="pallas"``):
      block_q, block_k: forward tile (query rows x keys); bwd_block_q, bwd_block_k: backward
        tiles; num_warps (None: 4 for head dim <= 64, else 8), num_stages: Triton's.
      interpret: run the Pallas kernel in interpret mode (any platform without a GPU).
    """

    query_tile: int = 128
    key_tile: int = 256
    tile_scores: int = 1 << 17
    late_buffers: bool = True
    pass_bytes: int = 4 << 20
    block_q: int = 128
    block_k: int = 64
    bwd_block_q: int = 64
    bwd_block_k: int = 64
    num_warps: int | None = None
    num_stages: int = 2
    interpret: bool = True


CPU = Tuning()  # measured on 2-core Xeon / EPYC hosts (docs/benchmarks.md [A6], [A7])
GPU = dataclasses.replace(CPU, interpret=False)  # Pallas tiles: design defaults, not measured

_OVERRIDES: contextvars.ContextVar[tuple] = contextvars.ContextVar("ringrl_tuning", default=())


def platform() -> str:
    """The default jax backend's platform: ``"cpu"``, ``"gpu"`` or ``"tpu"``."""
    import jax

    return jax.default_backend()


def tuning(on: str | None = None) -> Tuning:
    """The tuning for platform ``on`` (default: jax's default backend), with the fields set by
    an enclosing :func:`overrides`."""
    base = GPU if (on or platform()) == "gpu" else CPU
    return dataclasses.replace(base, **dict(_OVERRIDES.get()))


@contextlib.contextmanager
def overrides(**fields) -> Iterator[None]:
    """Within the block, kernels resolved by name (``kernel="xla"``, a model config's
    ``kernel``) get these :class:`Tuning` fields, e.g. ``overrides(query_tile=512)`` for a
    benchmark of other tiles. Code that calls attention directly passes a kernel object
    instead (``XlaKernel(dataclasses.replace(tuning(), ...))``)."""
    bad = set(fields) - {f.name for f in dataclasses.fields(Tuning)}
    if bad:
        raise TypeError(f"unknown tuning fields {sorted(bad)}")
    token = _OVERRIDES.set(tuple({**dict(_OVERRIDES.get()), **fields}.items()))
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


# ---- XLA-CPU flags, set before jax starts ---------------------------------------------------

HOST_DEVICES = os.environ.get("RINGRL_HOST_DEVICES", "8")

# Emulated host devices share a few cores, so one device can reach a collective (a ring
# ppermute) long before the others: XLA's CPU runtime aborts the process when a collective waits
# more than 40 s by default. Long ring steps (128K tokens on 2 cores) need far more.
COLLECTIVE_TIMEOUTS = {
    "xla_cpu_collective_call_terminate_timeout_seconds": 24 * 3600,
    "xla_cpu_collective_call_warn_stuck_timeout_seconds": 600,
}

VECTOR_WIDTH_FLAG = "xla_cpu_prefer_vector_width"


def emulate_host_devices(n: int | str = HOST_DEVICES) -> None:
    """Give the CPU backend ``n`` devices (ring attention on one host) before jax loads.

    Only the CPU platform is affected; an existing device count in ``XLA_FLAGS`` is kept. Also
    raises the CPU collectives' stuck/terminate timeouts (see ``COLLECTIVE_TIMEOUTS``).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    extra = []
    if "xla_force_host_platform_device_count" not in flags:
        extra.append(f"--xla_force_host_platform_device_count={n}")
    extra += [f"--{k}={v}" for k, v in COLLECTIVE_TIMEOUTS.items() if k not in flags]
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


def has_avx512(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this (Linux) host's CPU has AVX-512F; False where that cannot be read."""
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and "avx512f" in line.split() for line in f)
    except OSError:
        return False


def prefer_wide_vectors() -> None:
    """Let XLA's CPU backend emit 512-bit vector code on AVX-512 hosts (before jax loads).

    XLA's own element-wise code (``exp``, the softmax's other passes, the attention kernel's
    slicing) is emitted for 256-bit vectors by default, even where the CPU has AVX-512; the
    matmuls, which run in YNNPACK, already use 512-bit vectors. On the 2-core Xeon of
    docs/benchmarks.md, 512-bit vectors make the attention kernel's ``exp`` passes 1.4-1.6x
    faster and ring attention's forward+backward 5% faster. Nothing changes on other CPUs, and
    a width already set in ``XLA_FLAGS`` is kept.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if VECTOR_WIDTH_FLAG not in flags and has_avx512():
        os.environ["XLA_FLAGS"] = f"{flags} --{VECTOR_WIDTH_FLAG}=512".strip()


def set_cpu_flags(host_devices: int | str = HOST_DEVICES) -> None:
    """``host_devices`` CPU devices and wide vectors on AVX-512 hosts, unless jax is already
    imported (flags set after that would be ignored)."""
    if "jax" not in sys.modules:
        emulate_host_devices(host_devices)
        prefer_wide_vectors()
