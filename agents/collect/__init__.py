"""Data-collection agents: random, SAC (replay / medium / expert) and RND exploration.

Entry point: ``ringrl collect`` (:mod:`agents.collect.cli`). Building blocks:
:mod:`agents.collect.sac` (Soft Actor-Critic), :mod:`agents.collect.explore` (RND),
:mod:`agents.collect.common` (envs, episode recording, rollouts),
:mod:`agents.collect.output` (D4RL file, summary JSON, plots).
"""
