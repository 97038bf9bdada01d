"""Attention and feed-forward computed block by block, on one device or on a ring of devices."""

from ringrl.ops.api import (
    IMPLS,
    attention,
    from_ring_layout,
    ring_attention_laid_out,
    ring_step_counts,
    to_ring_layout,
)
from ringrl.ops.blockwise import blockwise_attention
from ringrl.ops.feedforward import blockwise_feedforward
from ringrl.ops.kernels import KERNELS, get_kernel
from ringrl.ops.layouts import layout_positions, padded_steps, ring_layout, valid_length
from ringrl.ops.reference import reference_attention
from ringrl.ops.ring import ring_attention

__all__ = [
    "IMPLS",
    "KERNELS",
    "attention",
    "blockwise_attention",
    "blockwise_feedforward",
    "from_ring_layout",
    "get_kernel",
    "layout_positions",
    "padded_steps",
    "reference_attention",
    "ring_attention",
    "ring_attention_laid_out",
    "ring_layout",
    "ring_step_counts",
    "to_ring_layout",
    "valid_length",
]
