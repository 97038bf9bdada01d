"""Reference learners for the context-scaling study: the source algorithms and memory-bounded
oracles, as evaluation policies (``ringrl.evaluate.Policy``: ``start_trial / act / record``).

An agent whose context holds ``N`` episodes sees, while it plays an episode, the ``N - 1``
whole episodes before it (the context rule keeps room for the running one). The *oracle* for
that ``N`` is the data's own learning algorithm restricted to the same memory -- it forgets
everything older than the last ``window = N - 1`` episodes -- so it is the ceiling an agent
that distils the algorithm perfectly could reach with that context. With ``window=None`` the
learner remembers the whole trial: the *source* algorithm, whose learning curve the data came
from.

* Bandit: :class:`ThompsonPolicy` -- Thompson sampling with Beta(1, 1) priors over the arms,
  posterior counts from the remembered pulls only (window 0: the prior, a uniform arm).
* Dark Room: :class:`ExplorerPolicy` -- the data's explore-then-exploit learner
  (:class:`agents.collect.families.ExploreExploitLearner`): its memory (cells stood on, the
  rewarded cell) is rebuilt from the remembered episodes and the running one; the oracle acts
  greedily (epsilon 0), the source with the data's epsilon schedule.

Actions are returned one-hot ``[E, num_actions]``, as the agents return them.
"""

from __future__ import annotations

import numpy as np

from agents.collect.families import ExploreExploitLearner, LearnerConfig
from envs.families import DARKROOM_MOVES


class _MemoryPolicy:
    """Per-environment memory of the trial's episodes: ``(observations, actions, rewards)``."""

    def __init__(self, num_envs: int, num_actions: int, window: int | None, seed: int):
        self.E, self.A, self.window = num_envs, num_actions, window
        self.rng = np.random.default_rng(seed)
        self.done: list[list[tuple]] = [[] for _ in range(num_envs)]  # completed episodes
        self.cur: list[list[tuple]] = [[] for _ in range(num_envs)]  # the running one's steps
        self._obs = np.zeros((num_envs, 1), np.float32)

    def start_trial(self, rows: np.ndarray) -> None:
        for e in np.flatnonzero(rows):
            self.done[e], self.cur[e] = [], []

    def remembered(self, e: int) -> list[list[tuple]]:
        """The completed episodes env ``e`` remembers (the last ``window``), oldest first."""
        eps = self.done[e]
        if self.window is None:
            return eps
        return eps[len(eps) - self.window :] if self.window > 0 else []

    def record(self, act_EA, rew_E, done_E, active_E) -> None:
        for e in np.flatnonzero(active_E):
            self.cur[e].append((self._obs[e].copy(), int(np.argmax(act_EA[e])), float(rew_E[e])))
            if done_E[e]:
                self.done[e].append(self.cur[e])
                self.cur[e] = []

    def _one_hot(self, idx: np.ndarray) -> np.ndarray:
        return np.eye(self.A, dtype=np.float32)[idx]


class ThompsonPolicy(_MemoryPolicy):
    """Thompson sampling over the remembered pulls (``window=None``: all of the trial's)."""

    def act(self, obs_EO: np.ndarray, active_E: np.ndarray) -> np.ndarray:
        self._obs = np.asarray(obs_EO, np.float32)
        arms = np.zeros(self.E, np.int64)
        for e in range(self.E):
            wins, losses = np.ones(self.A), np.ones(self.A)
            for episode in self.remembered(e):
                for _, a, r in episode:
                    wins[a] += r
                    losses[a] += 1.0 - r
            arms[e] = int(np.argmax(self.rng.beta(wins, losses)))
        return self._one_hot(arms)


class ExplorerPolicy(_MemoryPolicy):
    """Dark Room's explore-then-exploit learner with a bounded memory.

    Its memory -- the cells stood on and the rewarded cell -- is that of the remembered
    episodes and the running one, kept incrementally (cell counts; an episode that leaves the
    window is subtracted). ``epsilon=None``: the data's schedule (:class:`LearnerConfig` over
    ``schedule_episodes``, the length of a collected history) at the trial's episode index, as
    the source played; a number: that epsilon at every step (the oracle: 0).
    """

    def __init__(
        self,
        num_envs: int,
        size: int,
        window: int | None,
        seed: int,
        *,
        epsilon: float | None = 0.0,
        schedule_episodes: int = 100,
    ):
        super().__init__(num_envs, len(DARKROOM_MOVES), window, seed)
        self.size, self.epsilon, self.schedule = size, epsilon, schedule_episodes
        self.counts = np.zeros((num_envs, size, size), np.int64)  # remembered + running cells
        self.goals: list[list] = [[None] for _ in range(num_envs)]  # rewarded cell per episode

    def start_trial(self, rows: np.ndarray) -> None:
        super().start_trial(rows)
        for e in np.flatnonzero(rows):
            self.counts[e] = 0
            self.goals[e] = [None]

    def _moved(self, obs: np.ndarray, action: int) -> tuple[int, int]:
        """The cell a step from ``obs`` with ``action`` ends on (Dark Room's dynamics)."""
        dx, dy = DARKROOM_MOVES[action]
        x, y = (int(round(float(v))) for v in obs[:2])
        return min(max(x + dx, 0), self.size - 1), min(max(y + dy, 0), self.size - 1)

    def record(self, act_EA, rew_E, done_E, active_E) -> None:
        for e in np.flatnonzero(active_E):
            x, y = self._moved(self._obs[e], int(np.argmax(act_EA[e])))
            self.counts[e, y, x] += 1
            if rew_E[e] > 0 and self.goals[e][-1] is None:
                self.goals[e][-1] = (x, y)
        super().record(act_EA, rew_E, done_E, active_E)
        for e in np.flatnonzero(np.asarray(done_E) & np.asarray(active_E)):
            self.goals[e].append(None)  # the next episode's
            kept = len(self.done[e]) if self.window is None else self.window
            while len(self.goals[e]) - 1 > kept:  # forget the oldest episode
                old = self.done[e][len(self.done[e]) - (len(self.goals[e]) - 1)]
                for obs, action, _ in old:
                    x, y = self._moved(obs, action)
                    self.counts[e, y, x] -= 1
                self.goals[e].pop(0)

    def act(self, obs_EO: np.ndarray, active_E: np.ndarray) -> np.ndarray:
        self._obs = np.asarray(obs_EO, np.float32)
        acts = np.zeros(self.E, np.int64)
        for e in range(self.E):
            learner = ExploreExploitLearner(self.size, self.rng)
            learner.visited = self.counts[e] > 0
            learner.goal = next((g for g in self.goals[e] if g is not None), None)
            eps = self.epsilon
            if eps is None:
                eps = LearnerConfig().epsilon(len(self.done[e]), self.schedule)
            acts[e] = learner.act(self._obs[e], eps)
        return self._one_hot(acts)
