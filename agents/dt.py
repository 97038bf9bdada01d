"""Decision Transformer (Chen et al. 2021) on the Agentic Transformer pipeline.

One trajectory per context (N = 1), so the hindsight target is the episode's own return and the
return-to-go is DT's. The data config samples a random window of ``K = 20`` steps (the DT
paper's context for MuJoCo) starting anywhere in an episode.
"""

from __future__ import annotations

from agents.agentic import AgenticTransformer


class DecisionTransformer(AgenticTransformer):
    """Return-conditioned policy over a window of one episode (same model and token layout)."""
