"""Chain-of-hindsight sampler: batches of relabelled trajectory chains, built on the host.

One *chain* is ``num_trajectories`` episodes of one dataset, arranged, relabelled and flagged by
the one context rule (:mod:`ringrl.context`: sorted by return ascending for the Agentic
Transformer, every trajectory's target the chain's best return, completion flags at a fixed
data-derived level). With one trajectory per chain the target is the episode's own return:
Decision Transformer's return-to-go.

Batches are :mod:`ringrl.context`'s per-step arrays with a batch axis ``[B, T, ...]``, padded at
the end to a length the attention implementation accepts; padded steps have ``mask == 0``.

**Groups.** With ``groups`` (lists of episode indices: the episodes of one task id, or one
learning history), a chain never mixes two groups: ``chain="random"`` (AT, DT, BC) draws a
group with probability proportional to its episodes, then the chain's episodes within it;
``chain="consecutive"`` (Algorithm Distillation) draws a run of ``num_trajectories``
consecutive episodes of one history (every run equally likely), kept in the order played.

Determinism: the chains of step ``s`` come from ``np.random.default_rng([seed, s])`` (every
process draws the whole batch's episodes and gathers its own rows), so a batch depends only on
``(seed, step)``; the sampler's whole state is the next step.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from ringrl.context import (  # noqa: F401
    ContextRule,
    EpisodeLike,
    EpisodeTable,
    build_chain,
    pad_chain,
)
from ringrl.ops.layouts import padded_steps


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    num_trajectories: int = 1  # N episodes per chain (AT paper runs: 32 and 128)
    steps_per_trajectory: int = 1000  # window length per trajectory (ExoRL episodes: 1000)
    random_window_start: bool = False  # DT/BC: window starts anywhere in the episode
    batch_size: int = 8  # chains per batch (global)
    tokens_per_step: int = 4  # only used for padding: tokens = steps * tokens_per_step
    block_size: int = 512  # attention / feed-forward block
    seq_shards: int = 1  # devices on the mesh's "seq" axis
    ring: bool = False  # ring attention: zigzag layout needs 2 * seq_shards chunks
    order: str = "sorted"  # context order (ringrl.context): sorted by return | played
    success_return: float = float("inf")  # completion-flag level (ringrl.context)
    chain: str = "random"  # random episodes of a group (AT) | consecutive ones of a history (AD)


class ChainSampler:
    """Deterministic chain batches from one dataset's episodes; ``sample(step)`` is pure."""

    def __init__(
        self,
        episodes: Sequence[EpisodeLike],
        cfg: SamplerConfig,
        seed: int = 0,
        groups: Sequence[Sequence[int]] | None = None,
        num_actions: int | None = None,
    ):
        """``num_actions``: the episodes' actions are integers ``[T]``; chains hold them
        one-hot ``[T, num_actions]`` (the model's discrete input)."""
        if not episodes:
            raise ValueError("the sampler needs at least one episode")
        if cfg.chain not in ("random", "consecutive"):
            raise ValueError(f"chain must be 'random' or 'consecutive', got {cfg.chain!r}")
        self.episodes = list(episodes)
        self.cfg = cfg
        self.seed = seed
        self.lengths = np.array([len(ep.rewards) for ep in self.episodes])
        self.table = EpisodeTable(self.episodes, cfg.success_return, num_actions)
        if groups is None:
            groups = [np.arange(len(self.episodes))]
        self.groups = [np.asarray(g, np.int64) for g in groups if len(g)]
        if sum(len(g) for g in self.groups) != len(self.episodes):
            raise ValueError("groups must partition the episodes")
        # DT/BC sample timesteps uniformly (episodes by length); AT samples whole episodes.
        w = self.lengths if cfg.random_window_start else np.ones(len(self.episodes))
        self.probs = w / w.sum()
        if cfg.chain == "random":  # a group by its weight, then episodes within it
            gw = np.array([w[g].sum() for g in self.groups], np.float64)
        else:  # every run of N consecutive episodes (a whole short history: one run)
            gw = np.array([max(len(g) - cfg.num_trajectories + 1, 1) for g in self.groups], float)
        self.group_probs = gw / gw.sum()
        max_steps = cfg.num_trajectories * min(cfg.steps_per_trajectory, int(self.lengths.max()))
        self.num_steps = padded_steps(
            max_steps, cfg.tokens_per_step, cfg.block_size, cfg.seq_shards, cfg.ring
        )

    @property
    def num_tokens(self) -> int:
        """Tokens per chain after padding."""
        return self.num_steps * self.cfg.tokens_per_step

    def chain_episodes(self, rng: np.random.Generator) -> np.ndarray:
        """Indices of one chain's episodes (before the context rule arranges them)."""
        cfg, N = self.cfg, self.cfg.num_trajectories
        if len(self.groups) == 1 and cfg.chain == "random":  # the whole dataset, as before
            n = len(self.episodes)
            return rng.choice(n, N, replace=n < N, p=self.probs)
        g = self.groups[rng.choice(len(self.groups), p=self.group_probs)]
        if cfg.chain == "consecutive":
            start = int(rng.integers(0, max(len(g) - N, 0) + 1))
            return g[start : start + N]
        p = self.probs[g] / self.probs[g].sum()
        return g[rng.choice(len(g), N, replace=len(g) < N, p=p)]

    def sample_chain(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One padded chain (see :meth:`chain`)."""
        return pad_chain(self.chain(rng), self.num_steps)

    def chain(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One chain, unpadded: :func:`ringrl.context.build_chain` of the drawn episodes
        (through :class:`ringrl.context.EpisodeTable`, which gives the same arrays by
        gathering)."""
        idx, starts = self.draw(rng)
        return self.table.chain(
            idx, order=self.cfg.order, starts=starts, window=self.cfg.steps_per_trajectory
        )

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(episode indices, window starts)`` of one chain."""
        cfg = self.cfg
        idx = self.chain_episodes(rng)
        T = self.lengths[idx]
        hi = T if cfg.random_window_start else np.maximum(T - cfg.steps_per_trajectory, 0) + 1
        return idx, rng.integers(0, hi)

    def draw_batch(self, step: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``(episode indices, window starts)`` of every chain of step ``step``'s batch, from
        one generator seeded ``(seed, step)`` and vectorised where the draw allows it."""
        cfg, B, N = self.cfg, self.cfg.batch_size, self.cfg.num_trajectories
        rng = np.random.default_rng([self.seed, step])
        if len(self.groups) == 1 and cfg.chain == "random":
            n = len(self.episodes)
            p = None if not cfg.random_window_start else self.probs
            idx = [rng.choice(n, N, replace=n < N, p=p) for _ in range(B)]
        else:
            picks = rng.choice(len(self.groups), B, p=self.group_probs)
            u = rng.random(B)
            idx = []
            for g_i, u_b in zip(picks, u, strict=True):
                g = self.groups[g_i]
                if cfg.chain == "consecutive":
                    start = int(u_b * (max(len(g) - N, 0) + 1))
                    idx.append(g[start : start + N])
                else:
                    p = self.probs[g] / self.probs[g].sum() if cfg.random_window_start else None
                    if p is None and (N == 1 or len(g) < N):  # with replacement: fast
                        idx.append(g[rng.integers(0, len(g), N)])
                    else:
                        idx.append(g[rng.choice(len(g), N, replace=len(g) < N, p=p)])
        T = self.lengths[np.concatenate(idx)]
        hi = T if cfg.random_window_start else np.maximum(T - cfg.steps_per_trajectory, 0) + 1
        starts = np.split(rng.integers(0, hi), np.cumsum([len(i) for i in idx])[:-1])
        return idx, starts

    def sample(self, step: int, rows: range | None = None) -> dict[str, np.ndarray]:
        """The batch of training step ``step``: rows ``rows`` (this process's slice) of it."""
        rows = rows if rows is not None else range(self.cfg.batch_size)
        idx, starts = self.draw_batch(step)
        return self.table.batch(
            [idx[r] for r in rows],
            length=self.num_steps,
            order=self.cfg.order,
            starts=[starts[r] for r in rows],
            window=self.cfg.steps_per_trajectory,
        )


class Prefetcher:
    """Builds batches ``start, start + 1, ...`` in a background thread into a bounded queue.

    Iterating yields ``(step, batch)``. The training loop never waits on batch construction as
    long as the host keeps ahead of the device; ``state_dict()`` is the next step to yield.
    """

    def __init__(
        self, sampler: ChainSampler, start_step: int = 0, size: int = 4, rows: range | None = None
    ):
        self.sampler, self.rows, self.next_step = sampler, rows, start_step
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(start_step,), daemon=True)
        self._thread.start()

    def _work(self, step: int) -> None:
        try:
            while not self._stop.is_set():
                item = (step, self.sampler.sample(step, self.rows))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                step += 1
        except BaseException as e:  # surfaced to the consumer
            self._queue.put((None, e))

    def __iter__(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        return self

    def __next__(self) -> tuple[int, dict[str, np.ndarray]]:
        step, batch = self._queue.get()
        if step is None:
            raise batch
        self.next_step = step + 1
        return step, batch

    def state_dict(self) -> dict[str, int]:
        return {"step": self.next_step}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
