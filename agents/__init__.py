"""Agents: the Agentic Transformer, its baselines, and data-collection policies."""

from agents.ad import AlgorithmDistillation  # noqa: F401
from agents.agentic import AgenticTransformer  # noqa: F401
from agents.bc import BC  # noqa: F401
from agents.dt import DecisionTransformer  # noqa: F401
