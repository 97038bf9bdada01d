"""Chain-of-hindsight sampler: batches of relabelled trajectory chains, built on the host.

One *chain* is ``num_trajectories`` episodes of one dataset, arranged, relabelled and flagged by
the one context rule (:mod:`ringrl.context`: sorted by return ascending for the Agentic
Transformer, every trajectory's target the chain's best return, completion flags at a fixed
data-derived level). With one trajectory per chain the target is the episode's own return:
Decision Transformer's return-to-go.

Batches are :mod:`ringrl.context`'s per-step arrays with a batch axis ``[B, T, ...]``, padded at
the end to a length the attention implementation accepts; padded steps have ``mask == 0``.

Determinism: the chain in row ``r`` of step ``s`` comes from ``np.random.default_rng([seed, s,
r])``, so a batch depends only on ``(seed, step)``; the sampler's whole state is the next step.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from ringrl.context import ContextRule, EpisodeLike, build_chain, pad_chain  # noqa: F401


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


def _valid_length(L: int, block_size: int, seq_shards: int, ring: bool) -> bool:
    """Whether attention and the blockwise feed-forward accept ``L`` tokens (see ringrl.ops)."""
    if ring:
        if L % (2 * seq_shards):
            return False
        chunk = L // (2 * seq_shards)
        local = L // seq_shards
        return chunk % min(block_size, chunk) == 0 and local % min(block_size, local) == 0
    return L % min(block_size, L) == 0


def padded_steps(
    steps: int, tokens_per_step: int, block_size: int, seq_shards: int = 1, ring: bool = False
) -> int:
    """The smallest ``T >= steps`` whose ``T * tokens_per_step`` tokens the model accepts.

    ``T`` is also a multiple of ``seq_shards`` so that the step arrays shard over ``"seq"``.
    """
    T = max(steps, 1)
    while not (
        T % seq_shards == 0 and _valid_length(T * tokens_per_step, block_size, seq_shards, ring)
    ):
        T += 1
    return T


class ChainSampler:
    """Deterministic chain batches from one dataset's episodes; ``sample(step)`` is pure."""

    def __init__(self, episodes: Sequence[EpisodeLike], cfg: SamplerConfig, seed: int = 0):
        if not episodes:
            raise ValueError("the sampler needs at least one episode")
        self.episodes = list(episodes)
        self.cfg = cfg
        self.seed = seed
        self.lengths = np.array([len(ep.rewards) for ep in self.episodes])
        # DT/BC sample timesteps uniformly (episodes by length); AT samples whole episodes.
        w = self.lengths if cfg.random_window_start else np.ones(len(self.episodes))
        self.probs = w / w.sum()
        max_steps = cfg.num_trajectories * min(cfg.steps_per_trajectory, int(self.lengths.max()))
        self.num_steps = padded_steps(
            max_steps, cfg.tokens_per_step, cfg.block_size, cfg.seq_shards, cfg.ring
        )

    @property
    def num_tokens(self) -> int:
        """Tokens per chain after padding."""
        return self.num_steps * self.cfg.tokens_per_step

    def sample_chain(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        cfg, n = self.cfg, len(self.episodes)
        idx = rng.choice(n, cfg.num_trajectories, replace=n < cfg.num_trajectories, p=self.probs)
        starts = []
        for i in idx:
            T = int(self.lengths[i])
            hi = T if cfg.random_window_start else max(T - cfg.steps_per_trajectory, 0) + 1
            starts.append(int(rng.integers(0, hi)))
        chain = build_chain(
            [self.episodes[i] for i in idx],
            success_return=cfg.success_return,
            order=cfg.order,
            starts=starts,
            window=cfg.steps_per_trajectory,
        )
        return pad_chain(chain, self.num_steps)

    def sample(self, step: int, rows: range | None = None) -> dict[str, np.ndarray]:
        """The batch of training step ``step``: rows ``rows`` (this process's slice) of it."""
        rows = rows if rows is not None else range(self.cfg.batch_size)
        chains = [self.sample_chain(np.random.default_rng([self.seed, step, r])) for r in rows]
        return {k: np.stack([c[k] for c in chains]) for k in chains[0]}


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
