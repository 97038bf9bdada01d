"""Learning histories on the task families, the data of in-context RL (Algorithm Distillation).

A *learning history* is the chronological sequence of episodes a learner plays on one task
instance while it learns; AD trains on histories that improve. Every collected episode carries
``task_id`` (the instance) and ``history_id`` (the history), written as ``infos/task_id`` /
``infos/history_id``; the dataset's metadata stores the family's train/test split
(``train_task_ids`` / ``test_task_ids``, the instances histories were collected on / held out
for evaluation) and ``num_actions``.

* ``ringrl/bandit-v0`` — :func:`thompson_histories`: Thompson sampling with Beta(1, 1) priors on
  each arm's success probability; each pull samples every arm's posterior, pulls the arm with the
  largest sample and updates that arm's Beta with the reward. 500 pulls per history (each pull is
  a one-step episode), one history per task instance ``0 .. N-1``. Split: the last 20% of the
  10,000 instance ids (8000..9999) are the test instances, whatever N is (so datasets of any size
  share them); histories are collected for ids below that.
* ``ringrl/darkroom-v0`` / ``ringrl/darkroom_hard-v0`` — :func:`darkroom_histories` with
  :class:`ExploreExploitLearner`: a learner that remembers, across the episodes of its history,
  which cells it has stood on and where it was rewarded. Each step it takes a uniformly random
  action with probability epsilon; otherwise, until it has found the goal, it walks to the
  nearest cell it has not stood on (Manhattan distance, ties to the lowest row-major index: a
  systematic sweep outwards from the start), and once it has been rewarded on a cell it walks
  straight to that cell and stays there, every episode. Epsilon decays linearly over the history
  (1.0 at the first episode to 0.0 at 60% of it, by default), so returns improve from random-walk
  level to optimal. 100 episodes per history, one history per goal of the train split. Split: a
  fixed seeded (seed 0) random 80/20 split of the goals (``task_split``): 65/16 goals (9x9),
  231/58 (17x17).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from agents.collect.common import make_env

BANDIT = "ringrl/bandit-v0"
DARKROOMS = ("ringrl/darkroom-v0", "ringrl/darkroom_hard-v0")
#: The families :func:`collect_histories` has a learner for.
FAMILIES = (BANDIT, *DARKROOMS)

BANDIT_PULLS = 500
BANDIT_TASKS = 1000
DARKROOM_EPISODES = 100
TEST_FRACTION = 0.2
SPLIT_SEED = 0

Progress = Callable[[int], Any] | None


def task_split(
    num_tasks: int, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_ids, test_ids)``, each sorted int64: a seeded random split of ``0..num_tasks-1``
    with ``round(test_fraction * num_tasks)`` test ids."""
    n_test = int(round(test_fraction * num_tasks))
    perm = np.random.default_rng(seed).permutation(num_tasks)
    return np.sort(perm[n_test:]).astype(np.int64), np.sort(perm[:n_test]).astype(np.int64)


def bandit_split(num_tasks: int, test_fraction: float = TEST_FRACTION) -> tuple[int, np.ndarray]:
    """``(first test id, test ids)`` of the bandit: the last ``test_fraction`` of the ids."""
    first = num_tasks - int(round(test_fraction * num_tasks))
    return first, np.arange(first, num_tasks, dtype=np.int64)


def _seed(*keys: int) -> int:
    """A reset seed derived from ``keys`` (independent streams per history)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# --------------------------------------------------------------------------------------------
# Bandit: Thompson sampling
# --------------------------------------------------------------------------------------------
def thompson_histories(
    task_ids: Sequence[int],
    pulls: int = BANDIT_PULLS,
    *,
    seed: int = 0,
    task: str = BANDIT,
    first_history_id: int = 0,
    progress: Progress = None,
) -> list[dict]:
    """One Thompson-sampling history of ``pulls`` one-pull episodes on each of ``task_ids``.

    History ``h`` (``history_id = first_history_id + h``) plays task ``task_ids[h]``; the env is
    reset with ``options={"task_id": ...}`` and a seed derived from ``(seed, history_id)`` at its
    first pull, the posterior samples come from a generator seeded the same way. Returns episode
    dicts (``ringrl.data.Episode`` fields plus ``task_id`` / ``history_id``); the constant
    arrays (observations, flags) are shared, read-only, between episodes.
    """
    env = make_env(task)
    num_arms = int(env.action_space.n)
    obs, _ = env.reset(seed=seed)
    zeros = _readonly(np.zeros((1, *np.shape(obs)), np.float32))
    done, not_done = _readonly(np.ones(1, bool)), _readonly(np.zeros(1, bool))
    episodes: list[dict] = []
    for h, task_id in enumerate(task_ids):
        history_id = first_history_id + h
        rng = np.random.default_rng(_seed(seed, history_id, 1))
        wins = np.zeros(num_arms)
        losses = np.zeros(num_arms)
        actions = np.empty(pulls, np.int64)
        rewards = np.empty(pulls, np.float32)
        for t in range(pulls):
            if t == 0:
                env.reset(seed=_seed(seed, history_id), options={"task_id": int(task_id)})
            else:
                env.reset()
            arm = int(np.argmax(rng.beta(wins + 1.0, losses + 1.0)))
            _, reward, terminated, truncated, _ = env.step(arm)
            if not (terminated or truncated):
                raise RuntimeError(f"{task}: a pull did not end the episode")
            wins[arm] += reward
            losses[arm] += 1.0 - reward
            actions[t], rewards[t] = arm, reward
        for t in range(pulls):
            episodes.append(
                dict(
                    observations=zeros,
                    actions=actions[t : t + 1],
                    rewards=rewards[t : t + 1],
                    terminals=done,
                    timeouts=not_done,
                    next_observations=zeros,
                    task_id=int(task_id),
                    history_id=history_id,
                )
            )
        if progress is not None:
            progress(pulls)
    return episodes


# --------------------------------------------------------------------------------------------
# Dark Room: explore, then exploit
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LearnerConfig:
    """Epsilon schedule of :class:`ExploreExploitLearner`: linear from ``eps_start`` at the first
    episode to ``eps_end`` at episode ``decay_fraction * episodes``, constant after."""

    eps_start: float = 1.0
    eps_end: float = 0.0
    decay_fraction: float = 0.6

    def epsilon(self, episode: int, episodes: int) -> float:
        """Epsilon at ``episode`` (0-based) of a history of ``episodes``."""
        span = max(1.0, self.decay_fraction * episodes)
        frac = min(1.0, episode / span)
        return float(self.eps_start + (self.eps_end - self.eps_start) * frac)


class ExploreExploitLearner:
    """Dark Room learner: sweep unvisited cells until rewarded, then walk to the goal.

    Its memory (kept across the episodes of one history): ``visited[y, x]``, the cells it has
    stood on after a step, and ``goal``, the first cell it was rewarded on (None until then).
    :meth:`act` with probability ``epsilon`` is a uniformly random action; otherwise a step
    towards ``goal`` (staying on it once there) if known, else towards the nearest unvisited
    cell (Manhattan distance, ties to the lowest row-major index). A step towards a cell closes
    the larger of the two coordinate gaps first (x on ties). The start cell counts as unvisited
    until the learner has stood on it after a step, so its first greedy action is "stay".
    """

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = int(size)
        self.rng = rng
        self.visited = np.zeros((self.size, self.size), bool)
        self.goal: tuple[int, int] | None = None
        ys, xs = np.mgrid[0 : self.size, 0 : self.size]
        self._xs, self._ys = xs.ravel(), ys.ravel()

    def _target(self, x: int, y: int) -> tuple[int, int]:
        if self.goal is not None:
            return self.goal
        dist = np.abs(self._xs - x) + np.abs(self._ys - y)
        dist = np.where(self.visited.ravel(), np.iinfo(np.int64).max, dist)
        i = int(np.argmin(dist))  # first minimum: lowest row-major index
        return int(self._xs[i]), int(self._ys[i])

    def greedy(self, obs: np.ndarray) -> int:
        """The action towards the current target (0 stay, 1 up, 2 down, 3 left, 4 right)."""
        x, y = int(round(float(obs[0]))), int(round(float(obs[1])))
        tx, ty = self._target(x, y)
        dx, dy = tx - x, ty - y
        if dx == 0 and dy == 0:
            return 0
        if abs(dx) >= abs(dy):
            return 4 if dx > 0 else 3
        return 2 if dy > 0 else 1

    def act(self, obs: np.ndarray, epsilon: float) -> int:
        """Epsilon-greedy action."""
        if self.rng.random() < epsilon:
            return int(self.rng.integers(5))
        return self.greedy(obs)

    def observe(self, next_obs: np.ndarray, reward: float) -> None:
        """Remember the cell the step ended on, and it as the goal if it was rewarded."""
        x, y = int(round(float(next_obs[0]))), int(round(float(next_obs[1])))
        self.visited[y, x] = True
        if reward > 0 and self.goal is None:
            self.goal = (x, y)


def darkroom_histories(
    task_ids: Sequence[int],
    episodes: int = DARKROOM_EPISODES,
    *,
    seed: int = 0,
    task: str = DARKROOMS[0],
    histories_per_task: int = 1,
    learner: LearnerConfig = LearnerConfig(),
    first_history_id: int = 0,
    progress: Progress = None,
) -> list[dict]:
    """``histories_per_task`` histories of ``episodes`` episodes on each goal of ``task_ids``.

    History ids run from ``first_history_id`` in collection order (task by task); each history
    has a fresh :class:`ExploreExploitLearner` whose random actions come from a generator seeded
    by ``(seed, history_id)``. Returns episode dicts (``ringrl.data.Episode`` fields plus
    ``task_id`` / ``history_id``), history after history, in chronological order.
    """
    env = make_env(task)
    size = int(env.unwrapped.size)
    out: list[dict] = []
    history_id = first_history_id
    for task_id in task_ids:
        for _ in range(histories_per_task):
            rng = np.random.default_rng(_seed(seed, history_id, 1))
            agent = ExploreExploitLearner(size, rng)
            obs, _ = env.reset(seed=_seed(seed, history_id), options={"task_id": int(task_id)})
            for k in range(episodes):
                if k:
                    obs, _ = env.reset()
                eps = learner.epsilon(k, episodes)
                buf: dict[str, list] = {"obs": [], "act": [], "rew": [], "next": [], "trunc": []}
                terminated = truncated = False
                while not (terminated or truncated):
                    action = agent.act(obs, eps)
                    next_obs, reward, terminated, truncated, _ = env.step(action)
                    agent.observe(next_obs, reward)
                    buf["obs"].append(obs)
                    buf["act"].append(action)
                    buf["rew"].append(reward)
                    buf["next"].append(next_obs)
                    buf["trunc"].append(truncated and not terminated)
                    obs = next_obs
                T = len(buf["rew"])
                terminals = np.zeros(T, bool)
                terminals[-1] = terminated
                out.append(
                    dict(
                        observations=np.asarray(buf["obs"], np.float32),
                        actions=np.asarray(buf["act"], np.int64),
                        rewards=np.asarray(buf["rew"], np.float32),
                        terminals=terminals,
                        timeouts=np.asarray(buf["trunc"], bool),
                        next_observations=np.asarray(buf["next"], np.float32),
                        task_id=int(task_id),
                        history_id=history_id,
                    )
                )
                if progress is not None:
                    progress(T)
            history_id += 1
    return out


# --------------------------------------------------------------------------------------------
# One entry point for `ringrl collect TASK --policy history`
# --------------------------------------------------------------------------------------------
def history_plan(
    task: str, tasks: int | None = None, episodes: int | None = None, histories_per_task: int = 1
) -> dict[str, Any]:
    """What :func:`collect_histories` will collect, checked: ``task_ids`` (the instances to
    collect on), ``train_task_ids``, ``test_task_ids``, ``episodes`` per history, ``histories``
    and ``steps``. Raises ValueError for an unknown family or out-of-range counts."""
    if task not in FAMILIES:
        raise ValueError(f"no learner for {task!r}; task families with one: {', '.join(FAMILIES)}")
    env = make_env(task)
    num_tasks = int(env.unwrapped.num_tasks)
    if task == BANDIT:
        first_test, test_ids = bandit_split(num_tasks)
        n = BANDIT_TASKS if tasks is None else tasks
        if not 1 <= n <= first_test:
            raise ValueError(
                f"--tasks: expected 1..{first_test} bandit instances (ids {first_test}.."
                f"{num_tasks - 1} are held out for testing), got {n}"
            )
        task_ids = np.arange(n, dtype=np.int64)
        train_ids = task_ids
        episodes = BANDIT_PULLS if episodes is None else episodes
        steps_per_episode = 1
    else:
        train_ids, test_ids = task_split(num_tasks)
        n = len(train_ids) if tasks is None else tasks
        if not 1 <= n <= len(train_ids):
            raise ValueError(
                f"--tasks: expected 1..{len(train_ids)} goals (the train split), got {n}"
            )
        task_ids = train_ids[:n]
        episodes = DARKROOM_EPISODES if episodes is None else episodes
        steps_per_episode = int(env.unwrapped.horizon)
    if episodes < 1 or histories_per_task < 1:
        raise ValueError("expected at least one episode per history and one history per task")
    histories = len(task_ids) * histories_per_task
    return {
        "task_ids": task_ids,
        "train_task_ids": train_ids,
        "test_task_ids": test_ids,
        "num_tasks": num_tasks,
        "episodes": int(episodes),
        "histories_per_task": int(histories_per_task),
        "histories": histories,
        "steps": histories * int(episodes) * steps_per_episode,
        "num_actions": int(env.action_space.n),
    }


def collect_histories(
    task: str,
    tasks: int | None = None,
    episodes: int | None = None,
    *,
    histories_per_task: int = 1,
    seed: int = 0,
    progress: Progress = None,
) -> tuple[list[dict], dict[str, Any]]:
    """Learning histories of the family's learner: ``(episode dicts, dataset metadata)``.

    ``tasks``: how many instances (bandit: ids ``0..tasks-1``, default 1000; Dark Room: the
    first ``tasks`` goals of the train split, default all); ``episodes`` per history (bandit:
    pulls, default 500; Dark Room default 100); ``histories_per_task`` (Dark Room; the bandit
    collects one). The metadata holds ``num_actions``, ``num_tasks``, ``train_task_ids``,
    ``test_task_ids`` (lists), ``histories`` and ``episodes_per_history``, and ``learner`` (a
    description of the source algorithm).
    """
    plan = history_plan(task, tasks, episodes, histories_per_task)
    if task == BANDIT:
        if histories_per_task != 1:
            raise ValueError("the bandit collects one Thompson-sampling history per instance")
        eps = thompson_histories(plan["task_ids"], plan["episodes"], seed=seed, progress=progress)
        learner = {"algorithm": "thompson_sampling", "prior": "Beta(1, 1)"}
    else:
        cfg = LearnerConfig()
        eps = darkroom_histories(
            plan["task_ids"],
            plan["episodes"],
            seed=seed,
            task=task,
            histories_per_task=histories_per_task,
            learner=cfg,
            progress=progress,
        )
        learner = {"algorithm": "explore_exploit_sweep", **asdict(cfg)}
    metadata = {
        "num_actions": plan["num_actions"],
        "num_tasks": plan["num_tasks"],
        "train_task_ids": plan["train_task_ids"].tolist(),
        "test_task_ids": plan["test_task_ids"].tolist(),
        "histories": plan["histories"],
        "episodes_per_history": plan["episodes"],
        "learner": learner,
    }
    return eps, metadata


def improvement(episodes: Sequence[dict], window: int = 10) -> tuple[float, float]:
    """Mean return of the first and of the last ``window`` episodes of each history, averaged
    over histories (the printed check that histories improve)."""
    by_history: dict[int, list[float]] = {}
    for e in episodes:
        by_history.setdefault(int(e["history_id"]), []).append(float(np.sum(e["rewards"])))
    first = [np.mean(r[:window]) for r in by_history.values()]
    last = [np.mean(r[-window:]) for r in by_history.values()]
    return float(np.mean(first)), float(np.mean(last))
