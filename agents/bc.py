"""Behaviour cloning with the same Transformer: no return, reward or completion inputs.

``BC`` reads only states and actions (``[s_t, a_t]`` tokens, or one fused token per step) over a
window of one episode. *Filtered* BC (``BC-10%``, ExoRL's baseline) is the same agent trained on
the top 10% of the dataset's episodes by return (``data.top_fraction: 0.1`` in the config).
"""

from __future__ import annotations

import dataclasses

from agents.agentic import AgentConfig, AgenticTransformer


class BC(AgenticTransformer):
    """Return-free policy; forces ``use_returns=False``."""

    def __init__(self, cfg: AgentConfig, *args, **kwargs):
        super().__init__(dataclasses.replace(cfg, use_returns=False), *args, **kwargs)
