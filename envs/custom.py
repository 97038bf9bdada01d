"""URLB/ExoRL tasks that are not part of ``dm_control.suite``, rebuilt on top of dm_control.

ExoRL (Yarats et al. 2022) takes its environments from URLB (``rll-research/url_benchmark``,
``custom_dmc_tasks/``). Four of its task families are not in ``dm_control.suite``; this module
rebuilds them from dm_control's own building blocks, reusing dm_control's physics, models and
task classes and replacing only what URLB changes.

* **quadruped stand / jump** (URLB ``custom_dmc_tasks/quadruped.py``). URLB ships a copy of
  dm_control's ``quadruped.xml`` (same bodies, joints, actuators and sensors, including the
  ``center_of_mass`` subtree-COM sensor) and builds both tasks like the suite's ``walk``: floor
  size ``20 s * 0.5 m/s = 10``, 20 s time limit, 0.02 s control step (1000 steps), random
  orientation dropped from a non-contacting height, the suite's common observations. So we reuse
  ``dm_control.suite.quadruped.make_model``/``Physics`` and subclass its ``Move`` task
  (identical ``initialize_episode`` and ``get_observation``) and override ``get_reward``:

  - ``stand``: ``_upright_reward(physics)`` alone, i.e. ``tolerance(torso_zz, bounds=(1, inf),
    sigmoid='linear', margin=2, value_at_margin=0)``. URLB's source has *no* torso-height term
    for stand (the upright term is the whole reward), so neither do we.
  - ``jump``: ``_upright_reward(physics) * tolerance(com_z, bounds=(1.0, inf), margin=1.0,
    value_at_margin=0.5, sigmoid='linear')`` where ``com_z`` is the z of the
    ``center_of_mass`` sensor (URLB's ``Physics.com_height``) and 1.0 m is URLB's
    ``_JUMP_HEIGHT``.

  Both share the state layout of ``dm_control/quadruped-walk-v0``/``run-v0`` (the floor size is
  a model parameter, not state), so ExoRL quadruped datasets can be relabelled across all four.

* **cheetah run_backward** (URLB ``custom_dmc_tasks/cheetah.py``): the suite's cheetah with the
  run reward applied to the negated speed, ``tolerance(-speed, bounds=(10, inf), margin=10,
  value_at_margin=0, sigmoid='linear')``.

* **jaco reach_{top_left, top_right, bottom_left, bottom_right}** (URLB
  ``custom_dmc_tasks/jaco.py``). URLB's ``MTReach`` is a copy of
  ``dm_control.manipulation.reach.Reach`` built the way ``reach_duplo_features`` builds it
  (``arenas.Standard``, Jaco arm + Jaco hand with the pinch site as tool centre point, a Duplo
  brick as the target prop, ``PERFECT_FEATURES`` observations, the Duplo workspace with the TCP
  spawned uniformly in ``[-0.1, 0.1]^2 x [0.2, 0.4]``, 0.04 s control step, 10 s time limit so 250
  steps), with one change: the brick is placed at a fixed corner ``(+-0.09, +-0.09, 0.001)``
  instead of uniformly in the workspace. We therefore subclass ``reach.Reach`` with the same
  arguments and swap in a ``PropPlacer`` whose position distribution is that single point
  (URLB does the same with a degenerate ``Uniform`` box, so the random stream is consumed
  identically). Reward (inherited): ``tolerance(|tcp - brick|, bounds=(0, 0.05), margin=0.05)``
  (gaussian sigmoid). Action: 9-dim (6 arm joint velocities + 3 finger velocities); observation:
  55 features (arm joints pos/torque/vel, hand joints, pinch-site pose, brick pose/velocities).

* **cartpole swingup, action repeat 8** (``ringrl/cartpole-swingup_ar8-v0``; not a URLB task:
  the Table-5 family at a horizon hundreds of episodes can reach). The suite's cartpole swingup
  with a control step of 8 physics steps (``n_sub_steps=8``, 0.08 s): the same 10 s episode in
  125 decisions. dm_control computes the reward once per decision (the suite's reward at its
  end), so returns lie in ``[0, 125]``, not the suite's ``[0, 1000]``: **not comparable to
  Table 5**.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import dm_env
import numpy as np
from dm_control import composer, suite
from dm_control.composer import initializers
from dm_control.composer.variation import distributions
from dm_control.entities import props
from dm_control.manipulation import reach
from dm_control.manipulation.shared import (
    arenas,
    constants,
    observations,
    robots,
    workspaces,
)
from dm_control.rl import control
from dm_control.suite import cheetah, quadruped
from dm_control.utils import rewards

# --- quadruped -------------------------------------------------------------------------------

QUADRUPED_TIME_LIMIT = 20.0
QUADRUPED_CONTROL_TIMESTEP = 0.02
QUADRUPED_FLOOR_SIZE = QUADRUPED_TIME_LIMIT * 0.5  # URLB: _DEFAULT_TIME_LIMIT * _WALK_SPEED
QUADRUPED_JUMP_HEIGHT = 1.0


def _com_height(physics: quadruped.Physics) -> float:
    """Height of the torso subtree's centre of mass (URLB's ``Physics.com_height``)."""
    return float(physics.named.data.sensordata["center_of_mass"][2])


class QuadrupedStand(quadruped.Move):
    """URLB quadruped ``stand``: reward is the upright term alone."""

    def __init__(self, random: int | np.random.RandomState | None = None) -> None:
        super().__init__(desired_speed=0.0, random=random)

    def get_reward(self, physics: quadruped.Physics) -> float:
        """Upright reward: 1 when the torso z-axis points up, linearly 0 when upside down."""
        return quadruped._upright_reward(physics)


class QuadrupedJump(quadruped.Move):
    """URLB quadruped ``jump``: upright times a centre-of-mass height tolerance."""

    def __init__(
        self,
        desired_height: float = QUADRUPED_JUMP_HEIGHT,
        random: int | np.random.RandomState | None = None,
    ) -> None:
        self._desired_height = desired_height
        super().__init__(desired_speed=0.0, random=random)

    def get_reward(self, physics: quadruped.Physics) -> float:
        """``upright * tolerance(com_z, (h, inf), margin=h, value_at_margin=0.5, linear)``."""
        jump_up = rewards.tolerance(
            _com_height(physics),
            bounds=(self._desired_height, float("inf")),
            margin=self._desired_height,
            value_at_margin=0.5,
            sigmoid="linear",
        )
        return quadruped._upright_reward(physics) * jump_up


def _quadruped_env(task: control.Task) -> control.Environment:
    xml = quadruped.make_model(floor_size=QUADRUPED_FLOOR_SIZE)
    physics = quadruped.Physics.from_xml_string(xml, quadruped.common.ASSETS)
    return control.Environment(
        physics,
        task,
        time_limit=QUADRUPED_TIME_LIMIT,
        control_timestep=QUADRUPED_CONTROL_TIMESTEP,
    )


def quadruped_stand(seed: int | None = None) -> control.Environment:
    """URLB/ExoRL ``quadruped_stand`` as a dm_control environment (1000 steps)."""
    return _quadruped_env(QuadrupedStand(random=seed))


def quadruped_jump(seed: int | None = None) -> control.Environment:
    """URLB/ExoRL ``quadruped_jump`` as a dm_control environment (1000 steps)."""
    return _quadruped_env(QuadrupedJump(random=seed))


# --- cheetah ---------------------------------------------------------------------------------


class CheetahRunBackward(cheetah.Cheetah):
    """URLB cheetah ``run_backward``: the run reward on the negated forward speed."""

    def get_reward(self, physics: cheetah.Physics) -> float:
        """``tolerance(-speed, bounds=(10, inf), margin=10, value_at_margin=0, linear)``."""
        return rewards.tolerance(
            -physics.speed(),
            bounds=(cheetah._RUN_SPEED, float("inf")),
            margin=cheetah._RUN_SPEED,
            value_at_margin=0,
            sigmoid="linear",
        )


def cheetah_run_backward(seed: int | None = None) -> control.Environment:
    """URLB/ExoRL ``cheetah_run_backward`` as a dm_control environment (1000 steps)."""
    physics = cheetah.Physics.from_xml_string(*cheetah.get_model_and_assets())
    return control.Environment(
        physics, CheetahRunBackward(random=seed), time_limit=cheetah._DEFAULT_TIME_LIMIT
    )


# --- jaco ------------------------------------------------------------------------------------

JACO_TIME_LIMIT = 10.0  # seconds; 250 steps at constants.CONTROL_TIMESTEP = 0.04
JACO_PROP_Z_OFFSET = 0.001  # keeps the brick off the table before settling
JACO_TARGETS: dict[str, tuple[float, float]] = {
    "reach_top_left": (-0.09, 0.09),
    "reach_top_right": (0.09, 0.09),
    "reach_bottom_left": (-0.09, -0.09),
    "reach_bottom_right": (0.09, -0.09),
}

_Workspace = collections.namedtuple("_Workspace", ["target_bbox", "tcp_bbox", "arm_offset"])
# dm_control.manipulation.reach's (and URLB's) Duplo workspace.
_JACO_WORKSPACE = _Workspace(
    target_bbox=workspaces.BoundingBox(
        lower=(-0.1, -0.1, JACO_PROP_Z_OFFSET), upper=(0.1, 0.1, JACO_PROP_Z_OFFSET)
    ),
    tcp_bbox=workspaces.BoundingBox(lower=(-0.1, -0.1, 0.2), upper=(0.1, 0.1, 0.4)),
    arm_offset=robots.ARM_OFFSET,
)


class JacoReachCorner(reach.Reach):
    """``dm_control.manipulation.reach.Reach`` (Duplo target) with the brick at a fixed corner."""

    def __init__(self, target: str) -> None:
        if target not in JACO_TARGETS:
            raise ValueError(f"unknown jaco target {target!r}; known: {sorted(JACO_TARGETS)}")
        obs = observations.PERFECT_FEATURES
        brick = props.Duplo(
            observable_options=observations.make_options(obs, observations.FREEPROP_OBSERVABLES)
        )
        super().__init__(
            arena=arenas.Standard(),
            arm=robots.make_arm(obs_settings=obs),
            hand=robots.make_hand(obs_settings=obs),
            prop=brick,
            obs_settings=obs,
            workspace=_JACO_WORKSPACE,
            control_timestep=constants.CONTROL_TIMESTEP,
        )
        corner = (*JACO_TARGETS[target], JACO_PROP_Z_OFFSET)
        self._prop_placer = initializers.PropPlacer(
            props=[brick],
            position=distributions.Uniform(corner, corner),
            quaternion=workspaces.uniform_z_rotation,
            settle_physics=True,
        )


def jaco_reach(target: str, seed: int | None = None) -> composer.Environment:
    """URLB/ExoRL ``jaco_<target>`` as a composer environment (250 steps of 0.04 s)."""
    return composer.Environment(
        JacoReachCorner(target), time_limit=JACO_TIME_LIMIT, random_state=seed
    )


def _jaco_builder(target: str) -> Callable[[int | None], dm_env.Environment]:
    return lambda seed=None: jaco_reach(target, seed)


# --- cartpole swingup at action repeat 8 ----------------------------------------------------

CARTPOLE_ACTION_REPEAT = 8
CARTPOLE_AR8_STEPS = 1000 // CARTPOLE_ACTION_REPEAT  # the suite's 10 s of 0.01 s steps: 125


def cartpole_swingup_ar8(seed: int | None = None) -> control.Environment:
    """The suite's cartpole swingup deciding every 8 physics steps (125 decisions of 0.08 s)."""
    return suite.load(
        "cartpole",
        "swingup",
        task_kwargs={"random": seed},
        environment_kwargs={"n_sub_steps": CARTPOLE_ACTION_REPEAT},
    )


#: gymnasium id -> builder ``(seed) -> dm_env.Environment`` for every task defined here.
CUSTOM_BUILDERS: dict[str, Callable[[int | None], dm_env.Environment]] = {
    "ringrl/quadruped-stand-v0": quadruped_stand,
    "ringrl/quadruped-jump-v0": quadruped_jump,
    "ringrl/cheetah-run_backward-v0": cheetah_run_backward,
    **{f"ringrl/jaco-{target}-v0": _jaco_builder(target) for target in JACO_TARGETS},
    "ringrl/cartpole-swingup_ar8-v0": cartpole_swingup_ar8,
}

#: episode lengths of the tasks here that are not the default 1000 steps (jaco: 250)
CUSTOM_EPISODE_STEPS: dict[str, int] = {"ringrl/cartpole-swingup_ar8-v0": CARTPOLE_AR8_STEPS}
