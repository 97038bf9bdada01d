"""Incremental decoding with a key/value cache, optionally sharded over the mesh's ``"seq"`` axis.

The Transformer (:mod:`ringrl.model`) has no positional encoding of its own: a token's key and
value at every layer depend only on the tokens before it. Once computed they never change, so
acting at environment step ``t`` only needs the *new* tokens of that step; the keys and values of
all earlier tokens come from the cache.

:func:`decode_step` runs the model's blocks on ``N`` new tokens per row: it writes their keys and
values into the cache at the row's next free slots and attends them (causally) to every filled
slot. With a mesh whose ``"seq"`` axis has ``R > 1`` devices, the cache's slot axis is sharded in
``R`` contiguous parts. Inside ``shard_map`` each device writes the new keys/values that fall in
its part and attends the new queries to its local slots only; the partial softmax results are
combined exactly across devices -- global max by ``pmax``, then the sums and the weighted values
by ``psum`` (the ring-attention online softmax, one step, no key/value ever leaves its device).

It reuses the model's own sub-modules (``norm1``, ``attn.q/k/v/o``, ``norm2``, ``mlp``, final
``norm``), so a change of the model's structure breaks the decode-equals-recompute tests, not
silently the results. Dropout is off (evaluation).

Shape suffixes: B batch (environments), N new tokens, C cache slots (local part inside
``shard_map``), D width, H query heads, K kv heads, G = H // K, E head dim, Y layers.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ringrl.context import Steps, build_chain, episode_return, is_completed, pad_chain
from ringrl.model import Transformer, TransformerConfig
from ringrl.ops.reference import attention_mask

SEQ_AXIS = "seq"


class KVCache(NamedTuple):
    """Keys/values of every layer for ``B`` rows of ``C`` token slots.

    ``k``: one ``[B, K, C, E]`` array per layer, ``v``: one ``[B, K, E, C]`` array per layer
    (separate arrays, so that a jitted step with the cache donated updates them in place). Each
    layout keeps the contracted axis contiguous: head dim for the scores ``q . k``, slots for
    ``p . v`` (on CPU slot-major ``[B, C, K, E]`` values made ``p . v`` 5x slower than
    ``q . k``). ``seg``: int32 ``[B, C]`` segment id of each
    slot (negative: empty or padding, never attended); ``pos``: int32 ``[B]`` the next free slot
    of each row.
    """

    k: Array
    v: Array
    seg: Array
    pos: Array


def seq_shards(mesh: Mesh | None) -> int:
    """Devices the cache is split over (1 without a mesh)."""
    return 1 if mesh is None else int(mesh.shape[SEQ_AXIS])


def cache_shardings(mesh: Mesh):
    """``cache -> NamedShardings`` of a cache whose slot axis is split over ``"seq"``."""
    k = NamedSharding(mesh, P(None, None, SEQ_AXIS, None))
    v = NamedSharding(mesh, P(None, None, None, SEQ_AXIS))
    seg = NamedSharding(mesh, P(None, SEQ_AXIS))
    return lambda cache: KVCache(
        tuple(k for _ in cache.k), tuple(v for _ in cache.v), seg, NamedSharding(mesh, P())
    )


def init_cache(
    cfg: TransformerConfig,
    batch: int,
    capacity: int,
    *,
    mesh: Mesh | None = None,
    dtype: jnp.dtype | str = jnp.float32,
) -> KVCache:
    """An empty cache of ``capacity`` slots per row (rounded up to a multiple of the shards)."""
    R = seq_shards(mesh)
    C = -(-capacity // R) * R
    E = cfg.d_model // cfg.num_heads
    cache = KVCache(
        tuple(jnp.zeros((batch, cfg.num_kv_heads, C, E), dtype) for _ in range(cfg.num_layers)),
        tuple(jnp.zeros((batch, cfg.num_kv_heads, E, C), dtype) for _ in range(cfg.num_layers)),
        jnp.full((batch, C), -1, jnp.int32),
        jnp.zeros((batch,), jnp.int32),
    )
    if R > 1:
        cache = jax.device_put(cache, cache_shardings(mesh)(cache))
    return cache


def reset_rows(cache: KVCache, rows_B: Array) -> KVCache:
    """Empty the rows where ``rows_B`` is true (slots marked free, position 0)."""
    seg = jnp.where(rows_B[:, None], -1, cache.seg)
    return cache._replace(seg=seg, pos=jnp.where(rows_B, 0, cache.pos))


# ---- attention of new tokens against the cache ------------------------------------------------


def _write(
    cache: Array, new_BN: Array, slots_BN: Array, offset: Array | int, axis: int = 1
) -> Array:
    """Write ``new`` at global slots ``slots`` (slot ``axis``) of a (local part of a) cache.

    Slots outside this part are dropped. ``new_BN`` is ``[B, N, ...]`` whatever ``axis`` is.
    """
    C = cache.shape[axis]
    local_BN = slots_BN - offset
    local_BN = jnp.where((local_BN >= 0) & (local_BN < C), local_BN, C)  # C: out of bounds
    rows_B1 = jnp.arange(cache.shape[0])[:, None]
    index = (rows_B1, *([slice(None)] * (axis - 1)), local_BN)
    return cache.at[index].set(new_BN.astype(cache.dtype), mode="drop")


def _attend_local(
    q_BNHE: Array,
    k_new_BNKE: Array,
    v_new_BNKE: Array,
    seg_new_BN: Array,
    k_BKCE: Array,
    v_BKEC: Array,
    seg_BC: Array,
    pos_B: Array,
    axis_name: str | None,
) -> tuple[Array, Array, Array, Array]:
    """Write the new keys/values and attend; combine across ``axis_name`` if given.

    Returns ``(out_BNHE, k_BKCE, v_BKEC, seg_BC)`` with the (local part of the) updated cache.
    """
    B, N, H, E = q_BNHE.shape
    K, C = k_BKCE.shape[1], k_BKCE.shape[2]
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * C
    slots_BN = pos_B[:, None] + jnp.arange(N)[None]
    k_BKCE = _write(k_BKCE, k_new_BNKE, slots_BN, offset, axis=2)
    v_BKEC = _write(v_BKEC, v_new_BNKE, slots_BN, offset, axis=3)
    seg_BC = _write(seg_BC, seg_new_BN, slots_BN, offset)

    slot_C = offset + jnp.arange(C)
    mask_BNC = attention_mask(slots_BN, slot_C, seg_new_BN, seg_BC, causal=True)
    q_BNKGE = q_BNHE.astype(jnp.float32).reshape(B, N, K, H // K, E) * (E**-0.5)
    s_BKGNC = jnp.einsum("bnkge,bkce->bkgnc", q_BNKGE, k_BKCE.astype(jnp.float32))
    s_BKGNC = jnp.where(mask_BNC[:, None, None], s_BKGNC, -jnp.inf)
    m_BKGN = s_BKGNC.max(-1)
    if axis_name is not None:
        m_BKGN = jax.lax.pmax(m_BKGN, axis_name)
    m_BKGN = jnp.where(jnp.isfinite(m_BKGN), m_BKGN, 0.0)  # a row with nothing to attend
    p_BKGNC = jnp.exp(s_BKGNC - m_BKGN[..., None])  # exp(-inf) = 0 on masked slots
    l_BKGN = p_BKGNC.sum(-1)
    o_BNKGE = jnp.einsum("bkgnc,bkec->bnkge", p_BKGNC, v_BKEC.astype(jnp.float32))
    if axis_name is not None:
        l_BKGN = jax.lax.psum(l_BKGN, axis_name)
        o_BNKGE = jax.lax.psum(o_BNKGE, axis_name)
    l_BNKG = jnp.transpose(l_BKGN, (0, 3, 1, 2))
    out_BNKGE = jnp.where(
        l_BNKG[..., None] > 0, o_BNKGE / jnp.where(l_BNKG > 0, l_BNKG, 1.0)[..., None], 0.0
    )
    return out_BNKGE.reshape(B, N, H, E).astype(q_BNHE.dtype), k_BKCE, v_BKEC, seg_BC


def cached_attention(
    q_BNHE: Array,
    k_new_BNKE: Array,
    v_new_BNKE: Array,
    seg_new_BN: Array,
    k_BKCE: Array,
    v_BKEC: Array,
    seg_BC: Array,
    pos_B: Array,
    mesh: Mesh | None = None,
) -> tuple[Array, Array, Array, Array]:
    """Attention of ``N`` new tokens to the cache (after writing them into it).

    Query ``i`` of row ``b`` sits at slot ``pos[b] + i`` and attends slot ``j`` iff ``j`` is not
    after it and both segment ids are equal and non-negative. With ``mesh`` (``"seq"`` > 1) the
    cache arrays are sharded over their slot axis and combined exactly (pmax / psum).
    """
    args = (q_BNHE, k_new_BNKE, v_new_BNKE, seg_new_BN, k_BKCE, v_BKEC, seg_BC, pos_B)
    if seq_shards(mesh) == 1:
        return _attend_local(*args, axis_name=None)
    k, v = P(None, None, SEQ_AXIS, None), P(None, None, None, SEQ_AXIS)
    seg, rep = P(None, SEQ_AXIS), P()
    return jax.shard_map(
        functools.partial(_attend_local, axis_name=SEQ_AXIS),
        mesh=mesh,
        in_specs=(rep, rep, rep, rep, k, v, seg, rep),
        out_specs=(rep, k, v, seg),
        check_vma=False,
    )(*args)


# ---- the model, one chunk of new tokens at a time ---------------------------------------------


def decode_step(
    model: Transformer,
    x_BND: Array,
    seg_BN: Array,
    cache: KVCache,
    *,
    mesh: Mesh | None = None,
    num_new_B: Array | None = None,
) -> tuple[Array, KVCache]:
    """Hidden states ``[B, N, D]`` of ``N`` new embedded tokens per row, and the updated cache.

    Equal (to float rounding) to the last ``N`` outputs of ``model`` on the row's whole token
    sequence. ``seg_BN``: the new tokens' segment ids (negative: padding, never attended, output
    meaningless). ``num_new_B``: how far each row's position advances (default ``N``); tokens
    past it must be padding -- they are written but later overwritten (a row that does not
    advance passes 0 and all-negative ``seg_BN``).
    """
    cfg = model.cfg
    B, N, _ = x_BND.shape
    H, K = cfg.num_heads, cfg.num_kv_heads
    E = cfg.d_model // H
    seg_BN = seg_BN.astype(jnp.int32)
    x_BND = x_BND.astype(jnp.float32)
    ks, vs, seg_BC = [], [], cache.seg
    for y, block in enumerate(model.blocks):
        h_BND = block.norm1(x_BND).astype(cfg.dtype)
        q_BNHE = block.attn.q(h_BND).reshape(B, N, H, E)
        k_BNKE = block.attn.k(h_BND).reshape(B, N, K, E)
        v_BNKE = block.attn.v(h_BND).reshape(B, N, K, E)
        out_BNHE, k_y, v_y, seg_new = cached_attention(
            q_BNHE, k_BNKE, v_BNKE, seg_BN, cache.k[y], cache.v[y], cache.seg, cache.pos, mesh
        )
        ks.append(k_y)
        vs.append(v_y)
        seg_BC = seg_new
        x_BND = x_BND + block.attn.o(out_BNHE.reshape(B, N, H * E)).astype(x_BND.dtype)
        x_BND = x_BND + block.mlp(block.norm2(x_BND).astype(cfg.dtype)).astype(x_BND.dtype)
    num_new_B = jnp.full((B,), N, jnp.int32) if num_new_B is None else num_new_B
    pos_B = cache.pos + num_new_B.astype(jnp.int32)
    new_cache = KVCache(tuple(ks), tuple(vs), seg_BC, pos_B)
    return model.norm(x_BND), new_cache


# ---- an agent acting from its own history, one environment step at a time ------------------


class TrialHistory:
    """The episodes of one trial so far, and the running one (for prefills and references)."""

    def __init__(self) -> None:
        self.episodes: list[Steps] = []
        self.obs: list[np.ndarray] = []
        self.act: list[np.ndarray] = []
        self.rew: list[float] = []

    def add(self, obs: np.ndarray, act: np.ndarray, rew: float) -> None:
        self.obs.append(np.asarray(obs, np.float32))
        self.act.append(np.asarray(act, np.float32))
        self.rew.append(float(rew))

    def end_episode(self) -> None:
        self.episodes.append(
            Steps(np.stack(self.obs), np.stack(self.act), np.asarray(self.rew, np.float32))
        )
        self.obs, self.act, self.rew = [], [], []

    def partial(self, obs: np.ndarray, act_dim: int) -> Steps:
        """The running episode up to observation ``obs``; its current action/reward are 0."""
        n = len(self.rew)
        acts = np.zeros((n + 1, act_dim), np.float32)
        if n:
            acts[:n] = np.stack(self.act)
        observations = np.stack([*self.obs, np.asarray(obs, np.float32)])
        return Steps(observations, acts, np.asarray([*self.rew, 0.0], np.float32))


class IncrementalPolicy:
    """An Agentic Transformer (or DT / BC) acting in ``E`` environments with a KV cache.

    Each row of the cache holds one trial's context, exactly the one the context rule
    (:func:`ringrl.context.acting_chain`) builds for ``agent.act``: the most recent whole
    previous episodes that fit, arranged by ``order`` (sorted by return, or as played), then the
    running episode, relabelled to the fixed ``target_return`` (so tokens already written never
    change within an episode). Every ``act`` embeds only the step's new tokens -- the previous
    step's action and reward tokens and the current return and state tokens (4-token layout),
    ``[a, R, s]`` (DT's 3 tokens), ``[a, s]`` without returns, one fused token in the 1-token
    layout -- and runs :func:`decode_step` on them.

    When an episode ends, the rule decides the next context; if it is not the cached one with
    the finished episode at its end (an older episode evicted, or the new one sorted before
    others), the row is emptied and prefilled again from the arranged episodes. The action then
    equals the agent's full recompute over the same history, to float rounding.
    """

    def __init__(
        self,
        agent,
        num_envs: int,
        target_return: float,
        max_episode_steps: int,
        *,
        order: str = "sorted",
        mesh: Mesh | None = None,
        prefill_chunk: int = 256,
        cache_dtype: str = "float32",
        actions: str = "sample",
        seed: int = 0,
    ):
        from agents.agentic import ActionChooser

        self.agent, self.mesh, self.E = agent, mesh, num_envs
        self.choose = ActionChooser(agent.cfg.discrete, actions, seed)
        self.target = float(target_return)
        self.max_steps = int(max_episode_steps)
        self.rule = agent.context_rule(self.max_steps, order)
        if self.rule.context_steps < self.max_steps:
            raise ValueError(
                f"a KV cache needs a context ({self.rule.context_steps} steps) that holds a whole "
                f"episode ({self.max_steps} steps); recompute windows instead"
            )
        acfg = agent.cfg
        self.K, self.A = acfg.step_tokens, acfg.action_token
        self.O, self.act_dim = acfg.obs_dim, acfg.act_dim
        self.chunk = prefill_chunk
        capacity = (self.rule.context_steps + 1) * self.K + prefill_chunk
        self.cache = init_cache(
            agent.transformer.cfg, num_envs, capacity, mesh=mesh, dtype=cache_dtype
        )
        self.capacity = self.cache.seg.shape[1]
        self.graphdef, self.state = nnx.split(agent)
        if mesh is not None:  # parameters replicated over the mesh the cache lives on
            self.state = jax.device_put(self.state, NamedSharding(mesh, P()))
        self._step = jax.jit(self._step_fn, donate_argnums=4)  # the cache, updated in place
        self._prefill = jax.jit(self._prefill_fn, donate_argnums=4)
        self._embed = jax.jit(self._embed_fn)
        self.histories = [TrialHistory() for _ in range(num_envs)]
        self.cached: list[list[int]] = [[] for _ in range(num_envs)]  # episodes in the cache
        self.kept_from = np.zeros(num_envs, int)  # oldest history episode in the context
        self.prefills = 0  # rows prefilled again (evictions or reordering)
        self._reset_prev(np.ones(num_envs, bool))
        self.pos = np.zeros(num_envs, int)  # host mirror of cache.pos

    # -- jitted pieces -------------------------------------------------------------------------

    def _step_fn(self, state, batch, seg_BN, num_new_B, cache):
        agent = nnx.merge(self.graphdef, state)
        x_BLD, _ = agent.tokens(batch)
        x_BND = x_BLD[:, self.A + 1 : self.A + 1 + self.K]
        h_BND, cache = decode_step(
            agent.transformer, x_BND, seg_BN, cache, mesh=self.mesh, num_new_B=num_new_B
        )
        return agent.head(h_BND[:, -1]), cache

    def _embed_fn(self, state, batch):
        return nnx.merge(self.graphdef, state).tokens(batch)[0]

    def _prefill_fn(self, state, x_1ND, seg_1N, num_new_1, cache, row):
        agent = nnx.merge(self.graphdef, state)
        one = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, row, 1, 0), cache)
        _, one = decode_step(
            agent.transformer, x_1ND, seg_1N, one, mesh=self.mesh, num_new_B=num_new_1
        )
        return jax.tree.map(
            lambda a, o: jax.lax.dynamic_update_slice_in_dim(a, o, row, 0), cache, one
        )

    # -- per-environment bookkeeping -----------------------------------------------------------

    def _reset_prev(self, rows: np.ndarray) -> None:
        E = self.E
        if not hasattr(self, "prev_obs"):  # the previous step of every env (tokens to add)
            self.prev_obs = np.zeros((E, self.O), np.float32)
            self.prev_act = np.zeros((E, self.act_dim), np.float32)
            self.prev_rew, self.prev_rtg = np.zeros(E, np.float32), np.zeros(E, np.float32)
            self.prev_done, self.prev_t = np.zeros(E, np.float32), np.zeros(E, np.int32)
            self.prev_exists = np.zeros(E, bool)
            self.collected, self.t = np.zeros(E, np.float64), np.zeros(E, np.int32)
            self.cur_obs = np.zeros((E, self.O), np.float32)
            self._cur_rtg = np.zeros(E, np.float32)
        self.prev_exists[rows] = False
        self.collected[rows], self.t[rows] = 0.0, 0

    def start_trial(self, rows: np.ndarray) -> None:
        """Empty the context of the environments where ``rows`` is true (a new trial)."""
        rows = np.asarray(rows, bool)
        self.cache = reset_rows(self.cache, jnp.asarray(rows))
        self.pos[rows] = 0
        self._reset_prev(rows)
        for e in np.flatnonzero(rows):
            self.histories[e] = TrialHistory()
            self.cached[e], self.kept_from[e] = [], 0

    def context_episodes(self, e: int, obs: np.ndarray) -> list[Steps]:
        """The episodes in env ``e``'s context, in context order, then the running one."""
        h = self.histories[e]
        return [*(h.episodes[i] for i in self.cached[e]), h.partial(obs, self.act_dim)]

    def act(self, obs_EO: np.ndarray, active_E: np.ndarray | None = None) -> np.ndarray:
        """Actions ``[E, act_dim]`` for the current observations: in [-1, 1], or (discrete)
        one-hot, greedy or sampled from the logits (``actions``)."""
        active_E = np.ones(self.E, bool) if active_E is None else np.asarray(active_E, bool)
        obs_EO = np.asarray(obs_EO, np.float32)
        rtg_E = (self.target - self.collected).astype(np.float32)
        batch = {
            "observations": np.stack([self.prev_obs, obs_EO], 1),
            "actions": np.stack([self.prev_act, np.zeros_like(self.prev_act)], 1),
            "rewards": np.stack([self.prev_rew, np.zeros_like(self.prev_rew)], 1),
            "returns_to_go": np.stack([self.prev_rtg, rtg_E], 1),
            "completions": np.stack([self.prev_done, np.zeros_like(self.prev_done)], 1),
            "timesteps": np.stack([self.prev_t, self.t], 1),
            "mask": np.stack([self.prev_exists, np.ones(self.E, bool)], 1).astype(np.float32),
        }
        n_prev = self.K - self.A - 1  # new tokens that belong to the previous step
        seg_EN = np.zeros((self.E, self.K), np.int32)
        seg_EN[:, :n_prev] = np.where(self.prev_exists, 0, -1)[:, None]
        seg_EN[~active_E] = -1
        num_new_E = np.where(active_E, self.K, 0).astype(np.int32)
        act_EA, self.cache = self._step(self.state, batch, seg_EN, num_new_E, self.cache)
        self.pos += num_new_E
        self.cur_obs = obs_EO
        self._cur_rtg = rtg_E
        self.last_output = np.asarray(act_EA)  # the model's outputs (discrete: logits)
        return self.choose(self.last_output)

    def record(
        self, act_EA: np.ndarray, rew_E: np.ndarray, done_E: np.ndarray, active_E: np.ndarray
    ) -> None:
        """The actions taken, rewards received and episode ends of the last ``act``."""
        for e in np.flatnonzero(active_E):
            self.histories[e].add(self.cur_obs[e], act_EA[e], rew_E[e])
            self.collected[e] += float(np.float32(rew_E[e]))
            self.prev_obs[e], self.prev_act[e] = self.cur_obs[e], act_EA[e]
            self.prev_rew[e], self.prev_rtg[e] = rew_E[e], self._cur_rtg[e]
            self.prev_t[e], self.prev_exists[e] = self.t[e], True
            self.prev_done[e] = 0.0
            self.t[e] += 1
            if done_E[e]:
                self.histories[e].end_episode()
                self.collected[e], self.t[e] = 0.0, 0
                self._next_context(e)

    # -- the next episode's context -------------------------------------------------------------

    def _next_context(self, e: int) -> None:
        """After an episode: keep the cache if the rule's context extends it, else prefill."""
        episodes = self.histories[e].episodes
        first = self.rule.first_kept([len(ep) for ep in episodes])
        arranged = [first + i for i in self.rule.arrange(episodes[first:])]
        self.kept_from[e] = first
        if arranged == [*self.cached[e], len(episodes) - 1]:
            self.cached[e] = arranged
            completed = is_completed(episode_return(episodes[-1]), self.rule.success_return)
            self.prev_done[e] = float(completed)  # the finished episode's reward token
            return
        rows = np.zeros(self.E, bool)
        rows[e] = True
        self.cache = reset_rows(self.cache, jnp.asarray(rows))
        self.pos[e], self.cached[e] = 0, arranged
        self.prev_exists[e] = False
        if arranged:
            self._prefill_row(e, [episodes[i] for i in arranged])

    def _prefill_row(self, e: int, kept: list[Steps]) -> None:
        """Write ``kept`` (in this order) into row ``e``, but the last step's trailing tokens:
        those come with the next ``act``, as after any step."""
        chain = build_chain(
            kept, target=self.target, success_return=self.rule.success_return, order="played"
        )
        n = len(chain["mask"])
        T = -(-n // self.chunk) * self.chunk  # steps, padded (fewer recompilations)
        x_1LD = self._embed(self.state, {k: v[None] for k, v in pad_chain(chain, T).items()})
        real = n * self.K - (self.K - self.A - 1)
        ch = self.chunk * self.K
        for start in range(0, real, ch):
            count = min(ch, real - start)
            seg_1N = np.where(np.arange(ch) < count, 0, -1).astype(np.int32)[None]
            x_1ND = jax.lax.dynamic_slice_in_dim(x_1LD, start, ch, 1)
            self.cache = self._prefill(
                self.state, x_1ND, seg_1N, np.asarray([count], np.int32), self.cache, e
            )
        self.pos[e] = real
        self.prefills += 1
        self.prev_obs[e], self.prev_act[e] = chain["observations"][-1], chain["actions"][-1]
        self.prev_rew[e], self.prev_rtg[e] = chain["rewards"][-1], chain["returns_to_go"][-1]
        self.prev_done[e], self.prev_t[e] = chain["completions"][-1], chain["timesteps"][-1]
        self.prev_exists[e] = True
