"""The one context rule: which episodes the model sees, in which order, relabelled how.

Every place that feeds the model -- the training sampler, ``agent.act``, the recompute policy and
the KV-cache prefill -- builds its per-step arrays with :func:`build_chain` and chooses the
episodes with :meth:`ContextRule.first_kept`, so training and acting never see different kinds
of context.

**Chain.** Episodes are concatenated step after step, each relabelled to one ``target`` return
(hindsight: training uses the chain's best return; acting uses the evaluation target), so the
return-to-go at step ``t`` of an episode is ``target - (reward collected before t)``.
``order="sorted"`` puts the completed episodes in ascending order of return (the Agentic
Transformer's chain); ``"played"`` keeps them as given (chronological). A *running* (partial)
episode always comes last.

**Completion flag.** An episode's last step carries ``completion = 1`` iff the episode's return
reaches ``success_return``, a fixed level derived from the training data (by default the median
episode return, :func:`completion_level`), stored with the checkpoint and used unchanged at
evaluation. The AT paper's rule -- "the trajectory reaches the chain's target" -- flags only the
chain's best trajectory, which sorting puts *last*: no prediction could ever read it (checked on
sampled chains: 0 of 800 flags visible). With a fixed level, every earlier trajectory at or above
it carries a flag that all later predictions see, and the flag means the same in every chain and
at evaluation.

**Eviction.** When acting, the context holds the running episode and the most recent *whole*
previous episodes whose steps, plus room for a full running episode, fit in ``context_steps``;
older ones are dropped whole (a training chain never starts mid-episode). When not even one
previous episode fits (Decision Transformer's 20-step windows), the running episode is cut to
its last ``context_steps`` steps, DT's window.

Per-step arrays (``T`` steps; padding from :func:`pad_chain` has ``mask == 0``)::

    observations [T, obs_dim] float32   actions [T, act_dim] float32
    rewards      [T] float32            returns_to_go [T] float32 (unscaled)
    completions  [T] float32            timesteps [T] int32 (within the episode)
    mask         [T] float32
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

ORDERS = ("sorted", "played")
STEP_KEYS = ("observations", "actions", "rewards", "returns_to_go", "completions", "timesteps")


class EpisodeLike(Protocol):
    observations: np.ndarray  # [T, obs_dim]
    actions: np.ndarray  # [T, act_dim]
    rewards: np.ndarray  # [T]


@dataclasses.dataclass
class Steps:
    """An episode (maybe running): ``observations [T, O]``, ``actions [T, A]``, ``rewards [T]``.

    A running episode's last step is the current one: its action and reward are not known yet
    and are 0 here (no prediction can see them: the model is causal and each step's action is
    predicted before its action token).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray

    def __len__(self) -> int:
        return len(self.rewards)


def episode_return(ep: EpisodeLike) -> float:
    return float(np.sum(ep.rewards, dtype=np.float64))


def completion_level(returns: np.ndarray, quantile: float = 0.5) -> float:
    """The return at which an episode counts as *completed*: a quantile of the data's returns."""
    return float(np.quantile(np.asarray(returns, np.float64), quantile))


def data_scales(episodes: Sequence[EpisodeLike]) -> tuple[float, float]:
    """``(return_scale, reward_scale)``: 1 / the largest absolute episode return and per-step
    reward of the training data, so that returns-to-go and rewards enter the tokens at order one
    (dm_control's per-step rewards in [0, 1] and returns up to 1000 alike)."""
    returns = np.abs([episode_return(ep) for ep in episodes])
    rewards = max(float(np.max(np.abs(ep.rewards), initial=0.0)) for ep in episodes)
    return 1.0 / max(float(returns.max()), 1e-6), 1.0 / max(rewards, 1e-6)


def is_completed(ret: float, success_return: float) -> bool:
    """The completion flag of an episode with return ``ret``."""
    return bool(ret >= success_return)


@dataclasses.dataclass(frozen=True)
class ContextRule:
    """How much, and in which order, the model sees (see the module docstring)."""

    context_steps: int  # steps the model holds: N episodes x steps per episode
    max_episode_steps: int  # room kept for a whole running episode
    order: str = "sorted"  # sorted (by return, as training) | played (chronological)
    success_return: float = float("inf")  # completion-flag level (completion_level)

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"context order must be one of {ORDERS}, got {self.order!r}")

    def first_kept(self, lengths: Sequence[int]) -> int:
        """Index of the oldest previous episode kept, given every previous episode's length."""
        room = self.context_steps - self.max_episode_steps
        first, total = len(lengths), 0
        while first > 0 and total + lengths[first - 1] <= room:
            first -= 1
            total += lengths[first]
        return first

    def arrange(self, episodes: Sequence[EpisodeLike]) -> list[int]:
        """The order (indices into ``episodes``) in which completed episodes enter the chain."""
        if self.order == "played":
            return list(range(len(episodes)))
        returns = [episode_return(ep) for ep in episodes]
        return [int(i) for i in np.argsort(returns, kind="stable")]


def build_chain(
    episodes: Sequence[EpisodeLike],
    *,
    target: float | None = None,
    success_return: float = float("inf"),
    order: str = "sorted",
    running: EpisodeLike | None = None,
    starts: Sequence[int] | None = None,
    window: int | None = None,
    memo: dict | None = None,
) -> dict[str, np.ndarray]:
    """The (unpadded) per-step arrays of completed ``episodes`` then the ``running`` one.

    ``target``: the return every episode is relabelled to (None: the best return among the
    completed episodes, the hindsight target of training). ``starts``/``window``: train on the
    steps ``[start, start + window)`` of each completed episode (random windows of DT/BC);
    return-to-go and timesteps stay those of the whole episode. ``memo``: a dict kept across
    calls on the same completed episodes (an acting policy's trial): each episode's arrays are
    prepared once (the result is the same with or without it).
    """
    if order not in ORDERS:
        raise ValueError(f"context order must be one of {ORDERS}, got {order!r}")
    starts = [0] * len(episodes) if starts is None else list(starts)
    prepared = [
        _prepared(ep, start, window, success_return, memo)
        for ep, start in zip(episodes, starts, strict=True)
    ]
    returns = [p["return"] for p in prepared]
    if target is None:
        target = max(returns, default=0.0)
    idx = list(range(len(episodes)))
    if order == "sorted":
        idx = [int(i) for i in np.argsort(returns, kind="stable")]
    pieces = [prepared[j] for j in idx]
    if running is not None:
        pieces.append(_prepared(running, 0, None, float("inf"), None))
    if not pieces:
        raise ValueError("a chain needs at least one episode")
    chain = {k: np.concatenate([p[k] for p in pieces]) for k in (*STEP_KEYS[:3], "collected")}
    chain["returns_to_go"] = (target - chain.pop("collected")).astype(np.float32)
    chain["completions"] = np.concatenate([p["completions"] for p in pieces])
    chain["timesteps"] = np.concatenate([p["timesteps"] for p in pieces])
    chain["mask"] = np.ones(len(chain["rewards"]), np.float32)
    return {k: chain[k] for k in (*STEP_KEYS, "mask")}


def _prepared(ep, start: int, window: int | None, success_return: float, memo) -> dict:
    """One episode's steps ``[start, start + window)`` ready to concatenate: observations,
    actions, rewards, reward collected before each step (float64), completion flags (on the
    last step, at ``success_return``), timesteps; and the episode's return."""
    key = (id(ep), start, window, success_return)
    if memo is not None and key in memo and memo[key]["episode"] is ep:
        return memo[key]
    T = len(ep.rewards)
    stop = T if window is None else min(T, start + window)
    rewards = np.asarray(ep.rewards, np.float32)
    collected = np.concatenate([[0.0], np.cumsum(rewards, dtype=np.float64)[:-1]])
    ret = episode_return(ep)
    completion = np.zeros(T, np.float32)
    completion[-1] = float(is_completed(ret, success_return))
    sl = slice(start, stop)
    out = {
        "episode": ep,
        "return": ret,
        "observations": np.asarray(ep.observations, np.float32)[sl],
        "actions": np.asarray(ep.actions, np.float32).reshape(T, -1)[sl],
        "rewards": rewards[sl],
        "collected": collected[sl],
        "completions": completion[sl],
        "timesteps": np.arange(start, stop, dtype=np.int32),
    }
    if memo is not None:
        memo[key] = out
    return out


class EpisodeTable:
    """A dataset's episodes as flat per-step arrays: :func:`build_chain`'s chains by gathering.

    ``table.chain(idx, ...)`` equals ``build_chain([episodes[i] for i in idx], ...)`` exactly
    (same arrangement, relabelling, flags, windows; checked by the tests) without a Python loop
    over the chain's episodes -- what makes chains of hundreds of short episodes (bandit pulls)
    cheap to sample.
    """

    def __init__(
        self,
        episodes: Sequence[EpisodeLike],
        success_return: float = float("inf"),
        num_actions: int | None = None,
    ):
        """``num_actions``: integer actions ``[T]``, held one-hot ``[T, num_actions]``."""
        lengths = np.array([len(ep.rewards) for ep in episodes], np.int64)
        self.lengths, self.begin = lengths, np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.returns = np.array([episode_return(ep) for ep in episodes], np.float64)
        self.observations = np.concatenate(
            [np.asarray(ep.observations, np.float32) for ep in episodes]
        )
        if num_actions is None:
            self.actions = np.concatenate(
                [np.asarray(ep.actions, np.float32).reshape(len(ep.rewards), -1) for ep in episodes]
            )
        else:
            flat = np.concatenate([np.asarray(ep.actions).reshape(-1) for ep in episodes])
            bad = (flat < 0) | (flat >= num_actions)
            if bad.any():
                raise ValueError(f"discrete action {flat[bad][0]} is outside 0..{num_actions - 1}")
            self.actions = np.zeros((len(flat), num_actions), np.float32)
            self.actions[np.arange(len(flat)), flat.astype(np.int64)] = 1.0
        self.rewards = np.concatenate([np.asarray(ep.rewards, np.float32) for ep in episodes])
        step_ep = np.repeat(np.arange(len(lengths)), lengths)
        self.timesteps = (np.arange(len(step_ep)) - self.begin[step_ep]).astype(np.int32)
        self.collected = self._collected()
        self.completions = np.zeros(len(step_ep), np.float32)
        done = self.returns >= success_return
        self.completions[(self.begin + lengths - 1)[done & (lengths > 0)]] = 1.0

    def _collected(self) -> np.ndarray:
        """The reward collected before each step, summed within its episode in the order
        build_chain sums it (a dataset-wide cumulative sum would differ in the last bits):
        one row-wise cumulative sum over the episodes padded to the longest one, or a loop
        when padding would cost more than 4x the steps."""
        lengths, total = self.lengths, int(self.lengths.sum())
        rewards = self.rewards.astype(np.float64)
        T = int(lengths.max(initial=0))
        if len(lengths) * T <= 4 * total:
            grid = np.zeros((len(lengths), T))
            cols = np.arange(total) - np.repeat(self.begin, lengths)
            rows = np.repeat(np.arange(len(lengths)), lengths)
            grid[rows, cols] = rewards
            before = np.zeros_like(grid)
            before[:, 1:] = np.cumsum(grid, axis=1)[:, :-1]
            return before[rows, cols]
        parts = [
            np.concatenate([[0.0], np.cumsum(rewards[b : b + n])[:-1]])
            for b, n in zip(self.begin, lengths, strict=True)
        ]
        return np.concatenate(parts) if parts else np.zeros(0)

    def chain(
        self,
        idx: Sequence[int] | np.ndarray,
        *,
        order: str = "sorted",
        starts: Sequence[int] | np.ndarray | None = None,
        window: int | None = None,
        target: float | None = None,
    ) -> dict[str, np.ndarray]:
        """The chain of episodes ``idx`` (see :func:`build_chain`; no running episode)."""
        batch = self.batch(
            [idx],
            length=None,
            order=order,
            starts=None if starts is None else [starts],
            window=window,
            targets=None if target is None else [target],
        )
        return {k: v[0] for k, v in batch.items()}

    def batch(
        self,
        idx: Sequence[Sequence[int]],
        *,
        length: int | None,
        order: str = "sorted",
        starts: Sequence[Sequence[int]] | None = None,
        window: int | None = None,
        targets: Sequence[float] | None = None,
    ) -> dict[str, np.ndarray]:
        """Chains ``[len(idx), length, ...]`` of the episodes ``idx[b]`` (each as :meth:`chain`),
        zero-padded to ``length`` steps (None: exactly the one chain's length; one chain only),
        all gathered at once."""
        if order not in ORDERS:
            raise ValueError(f"context order must be one of {ORDERS}, got {order!r}")
        eps, sts, tgt = [], [], []
        for b, row in enumerate(idx):
            row = np.asarray(row, np.int64)
            if not len(row):
                raise ValueError("a chain needs at least one episode")
            st = np.zeros(len(row), np.int64) if starts is None else np.asarray(starts[b], np.int64)
            returns = self.returns[row]
            tgt.append(float(returns.max()) if targets is None else float(targets[b]))
            if order == "sorted":
                arrange = np.argsort(returns, kind="stable")
                row, st = row[arrange], st[arrange]
            eps.append(row)
            sts.append(st)
        ep_row = np.repeat(np.arange(len(eps)), [len(r) for r in eps])
        ep, st = np.concatenate(eps), np.concatenate(sts)
        T = self.lengths[ep]
        n = (T if window is None else np.minimum(T, st + window)) - st
        total = int(n.sum())
        ends = np.cumsum(n)
        src = np.repeat(self.begin[ep] + st - (ends - n), n) + np.arange(total)
        row_steps = np.bincount(ep_row, weights=n, minlength=len(eps)).astype(np.int64)
        row_first = np.concatenate([[0], np.cumsum(row_steps)[:-1]])
        r = np.repeat(ep_row, n)
        pos = np.arange(total) - row_first[r]
        L = int(row_steps.max()) if length is None else int(length)
        if row_steps.max() > L:
            raise ValueError(f"a chain of {row_steps.max()} steps does not fit in {L}")
        columns = {
            "observations": self.observations[src],
            "actions": self.actions[src],
            "rewards": self.rewards[src],
            "returns_to_go": (np.asarray(tgt)[r] - self.collected[src]).astype(np.float32),
            "completions": self.completions[src],
            "timesteps": self.timesteps[src],
            "mask": np.ones(total, np.float32),
        }
        out = {}
        for k, x in columns.items():
            out[k] = np.zeros((len(eps), L, *x.shape[1:]), x.dtype)
            out[k][r, pos] = x
        return out


def acting_chain(
    previous: Sequence[EpisodeLike],
    running: EpisodeLike,
    rule: ContextRule,
    target: float,
    memo: dict | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """``(chain, first)``: the context for the running episode's current step.

    ``previous`` are the trial's completed episodes (oldest first); ``first`` is the index of the
    oldest one kept. The chain's last step is the current one. ``memo``: see
    :func:`build_chain` (a policy keeps one per trial).
    """
    first = rule.first_kept([len(ep.rewards) for ep in previous])
    chain = build_chain(
        previous[first:],
        target=target,
        success_return=rule.success_return,
        order=rule.order,
        running=running,
        memo=memo,
    )
    if len(chain["mask"]) > rule.context_steps:  # only the running episode is left: a window
        chain = {k: v[-rule.context_steps :] for k, v in chain.items()}
    return chain, first


def pad_chain(chain: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """Zero-pad every array of a chain at the end to ``length`` steps (``mask`` 0 there)."""
    out = {}
    for k, x in chain.items():
        if len(x) > length:
            raise ValueError(f"a chain of {len(x)} steps does not fit in {length}")
        out[k] = np.zeros((length, *x.shape[1:]), x.dtype)
        out[k][: len(x)] = x
    return out


def stack_chains(chains: Sequence[dict[str, np.ndarray]], length: int) -> dict[str, np.ndarray]:
    """Chains zero-padded to ``length`` steps and stacked: ``[len(chains), length, ...]``."""
    out = {}
    for k, x in chains[0].items():
        out[k] = np.zeros((len(chains), length, *x.shape[1:]), x.dtype)
    for i, chain in enumerate(chains):
        for k, x in chain.items():
            if len(x) > length:
                raise ValueError(f"a chain of {len(x)} steps does not fit in {length}")
            out[k][i, : len(x)] = x
    return out


def has_visible_completion(chain: dict[str, np.ndarray]) -> bool:
    """Whether a positive completion flag of ``chain`` sits before its last real step, where
    the predictions of every later real step read it."""
    real = np.flatnonzero(chain["mask"] > 0)
    flags = np.flatnonzero(chain["completions"][real] > 0)
    return bool(len(flags) and flags[0] < len(real) - 1)


def visible_completion_fraction(chains: Sequence[dict[str, np.ndarray]]) -> float:
    """Fraction of chains with a positive completion flag that a later prediction can read."""
    return sum(map(has_visible_completion, chains)) / max(len(chains), 1)
