"""Algorithm Distillation (Laskin et al., 2022) on the Agentic Transformer pipeline.

A chain is ``N`` *consecutive* episodes of one learning history, in the order they were played
(``ringrl.sampler``'s ``chain: consecutive``), and the model predicts the source algorithm's
action at every step from the states, actions and rewards before it: no return-to-go, no
hindsight relabelling. At evaluation the context is the agent's own most recent episodes, in
the order played (whole episodes, the one context rule); the agent improves in context if it
has distilled the learning algorithm. Same model, tokens (``[s, a, (r, d)]``, or one fused
token per step), sampler and KV-cache decoder as the Agentic Transformer. Discrete actions
(bandits, Dark Room) are sampled from the policy's softmax at evaluation, as in the AD paper.
"""

from __future__ import annotations

import dataclasses

from agents.agentic import AgentConfig, AgenticTransformer


class AlgorithmDistillation(AgenticTransformer):
    """History-conditioned policy; forces ``use_returns=False`` with reward inputs."""

    FIXED_ORDER = "played"

    def __init__(self, cfg: AgentConfig, *args, **kwargs):
        cfg = dataclasses.replace(cfg, use_returns=False, use_rewards=True)
        super().__init__(cfg, *args, **kwargs)
