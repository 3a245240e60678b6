"""Robot manipulation tasks for the VLA policies: Meta-World's Sawyer arm, its scripted experts, and a cached
expert dataset (the measurement instrument tiny-pi0 is trained and judged on).

Four tasks, each with one instruction; the object and goal positions are drawn per episode from a seed::

    reach          "reach the goal"              Meta-World reach-v3
    push           "push the puck to the goal"   Meta-World push-v3
    drawer-open    "open the drawer"             Meta-World drawer-open-v3
    button-press   "press the button"            Meta-World button-press-v3

Seeds: **fit seeds** are ``0 <= seed < HELDOUT_START`` (1,000,000) and **held-out seeds** are
``seed >= HELDOUT_START``; ``fit_seeds(n)`` and ``heldout_seeds(n)`` hand out the first ``n`` of each, so a training
set and an evaluation never share an episode. The per-episode layout comes from the task's name and the seed
together, so seed 3 of ``push`` and seed 3 of ``reach`` are unrelated draws.

An episode is driven through :class:`RobotSim`; a frame (64x64 RGB, uint8) is rendered only when asked for, since
a software (OSMesa) render costs far more than a physics step::

    from dynaccel.zoo import robot_tasks as rt

    sim = rt.RobotSim()
    obs = sim.reset("push", seed=rt.heldout_seeds(1)[0])      # obs.frame (64, 64, 3), obs.proprio (4,), obs.instruction
    while True:
        obs, success, done = sim.step(rt.expert_action(obs))   # no frame unless step(..., render=True)
        if done:
            break

    result = rt.rollout(my_policy, "push", seed=1_000_000)     # my_policy(obs) -> (k, 4) chunk of actions
    result.success, result.steps, result.actions               # actions: (steps, 4) as executed (for jerk)

    rt.generate_dataset("/tmp/robot-data", rt.TASK_NAMES, rt.fit_seeds(50), chunk=8)   # cached on disk

Rendering is headless through MuJoCo's OSMesa backend (Debian's ``libosmesa6``): importing this module sets
``MUJOCO_GL=osmesa`` unless the variable is already set (import it, or set the variable, before mujoco). Shadows
and multisampling are off and the goal marker is drawn larger in the rendered copy of the scene (a 64x64 frame
would show it as one pixel); for ``reach``, whose goal floats anywhere in a 3-D box, a green post joins the marker to
its foot on the table, so that one camera shows the goal's height as well as its place (without it a frame cannot
tell a high goal from a far one). The physics model is untouched: the post is drawn, never simulated. Meta-World (``pip install dynaccel[vla]``) is imported
on first use, never by ``import dynaccel``.

Run ``python -m dynaccel.zoo.robot_tasks --episodes 20`` for the expert's held-out success rate and timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import time
import warnings
import zlib
from typing import Callable, Sequence

import numpy as np

# MuJoCo picks its OpenGL backend when it is first imported: headless OSMesa unless the user chose another one.
os.environ.setdefault("MUJOCO_GL", "osmesa")

#: First held-out seed: fit seeds are 0 .. HELDOUT_START - 1, held-out seeds HELDOUT_START and up.
HELDOUT_START = 1_000_000
FRAME_SIZE = 64
#: The default camera, "front": a free camera across the table from the arm, looking down at the workspace
#: (lookat x, y, z in m, distance m, azimuth and elevation in degrees), chosen so that the goal marker, the puck,
#: the drawer and the button all show at 64x64. Meta-World's own cameras (corner, corner2, corner3, topview...)
#: also work; their images come out upside down and are flipped back.
FRONT_CAMERA = {"lookat": (0.0, 0.65, 0.05), "distance": 1.2, "azimuth": -90.0, "elevation": -60.0}
CAMERA = "front"
ACTION_DIM = 4  # end-effector dx, dy, dz (scaled by Meta-World to 1 cm per unit) and gripper effort
PROPRIO_DIM = 4  # end-effector x, y, z and gripper opening
DATASET_FORMAT = 2  # 2: reach frames show the goal post


@dataclasses.dataclass(frozen=True)
class RobotTask:
    """One task: our name, the Meta-World environment behind it, its instruction and its step limit."""

    name: str
    env_name: str
    instruction: str
    max_steps: int
    #: draw a post from the goal marker down to the table, and its foot, in the rendered copy of the scene: the
    #: goal of ``reach`` floats anywhere in a 3-D box, and one camera alone cannot tell its height from its depth
    goal_post: bool = False


TASKS: dict[str, RobotTask] = {
    t.name: t
    for t in (
        RobotTask("reach", "reach-v3", "reach the goal", 150, goal_post=True),
        RobotTask("push", "push-v3", "push the puck to the goal", 200),
        RobotTask("drawer-open", "drawer-open-v3", "open the drawer", 200),
        RobotTask("button-press", "button-press-v3", "press the button", 200),
    )
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def task(name: str) -> RobotTask:
    """The task called ``name``; raises ``ValueError`` naming the available ones."""
    if name not in TASKS:
        raise ValueError(f"unknown robot task {name!r}; available: {', '.join(TASK_NAMES)}")
    return TASKS[name]


def instructions() -> dict[str, str]:
    """Task name -> instruction."""
    return {name: t.instruction for name, t in TASKS.items()}


def check_seed(seed, split: str | None = None) -> int:
    """Validate an episode seed (a non-negative int; in ``split`` 'fit' or 'heldout' when given)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"episode seed must be an int, got {seed!r} ({type(seed).__name__})")
    seed = int(seed)
    if seed < 0 or seed >= 2**63:
        raise ValueError(f"episode seed must be in [0, 2**63), got {seed}")
    if split not in (None, "fit", "heldout"):
        raise ValueError(f"unknown seed split {split!r}; available: fit, heldout")
    if split == "fit" and seed >= HELDOUT_START:
        raise ValueError(f"seed {seed} is a held-out seed (>= {HELDOUT_START}); fit seeds are 0..{HELDOUT_START - 1}")
    if split == "heldout" and seed < HELDOUT_START:
        raise ValueError(f"seed {seed} is a fit seed; held-out seeds are >= {HELDOUT_START}")
    return seed


def is_heldout(seed: int) -> bool:
    """Whether ``seed`` is a held-out seed (never used for training data)."""
    return check_seed(seed) >= HELDOUT_START


def fit_seeds(n: int, start: int = 0) -> list[int]:
    """``n`` consecutive fit seeds from ``start`` (all below ``HELDOUT_START``)."""
    if n < 0 or start < 0 or start + n > HELDOUT_START:
        raise ValueError(f"fit seeds are 0..{HELDOUT_START - 1}; asked for {n} from {start}")
    return list(range(start, start + n))


def heldout_seeds(n: int, start: int = 0) -> list[int]:
    """``n`` consecutive held-out seeds, the ``start``-th first (all at or above ``HELDOUT_START``)."""
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    return list(range(HELDOUT_START + start, HELDOUT_START + start + n))


def layout_seed(task_name: str, seed: int) -> int:
    """The 32-bit seed Meta-World draws the episode's object and goal positions from (task name and seed mixed)."""
    task(task_name)
    ss = np.random.SeedSequence([zlib.crc32(task_name.encode()), check_seed(seed)])
    return int(ss.generate_state(1)[0])


def osmesa_available() -> bool:
    """Whether the OSMesa library MuJoCo renders with headless is installed (Debian: ``libosmesa6``)."""
    import ctypes.util

    return ctypes.util.find_library("OSMesa") is not None


def _preload_triton() -> None:
    """Import Triton before MuJoCo's OpenGL libraries when it is installed.

    PyOpenGL loads OSMesa (and Mesa's LLVM with it) with RTLD_GLOBAL; Triton imported after that resolves its
    LLVM symbols against Mesa's and the process dies with a segmentation fault (Triton 3.9 with Debian 12's
    Mesa 22.3). Imported first, Triton keeps its own. The cache kernels import Triton anyway.
    """
    import importlib.util
    import sys

    if "triton" in sys.modules or "OpenGL" in sys.modules:
        return
    try:
        if importlib.util.find_spec("triton") is not None:
            import triton  # noqa: F401
    except Exception:  # a broken Triton install must not stop the simulator
        pass


def _import_simulator():
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    _preload_triton()
    try:
        import metaworld  # noqa: F401
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        from metaworld.policies import ENV_POLICY_MAP
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            f"the robot tasks need Meta-World: pip install 'dynaccel[vla]' (metaworld>=3.1) ({e})"
        ) from e
    return mujoco, ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE, ENV_POLICY_MAP


def versions() -> dict[str, str]:
    """Versions of the simulator stack (written into dataset manifests)."""
    from importlib.metadata import version

    _import_simulator()
    return {"metaworld": version("metaworld"), "mujoco": version("mujoco"), "numpy": np.__version__}


@dataclasses.dataclass
class RobotObservation:
    """What a policy sees at one step.

    frame: (64, 64, 3) uint8 RGB from the camera, or None when no frame was asked for.
    proprio: (4,) float32, end-effector position (m) and gripper opening.
    instruction: the task's instruction. state: Meta-World's full 39-dim observation (object and goal
    positions), which only the scripted expert reads: a policy must not.
    """

    task: str
    seed: int
    step: int
    instruction: str
    proprio: np.ndarray
    frame: np.ndarray | None
    state: np.ndarray


class RobotSim:
    """Meta-World episodes with frames rendered on demand.

    ``reset(task, seed)`` starts an episode and returns the first observation (with a frame unless
    ``render=False``); ``step(action)`` advances one control step (Meta-World's 5 physics substeps) and returns
    ``(observation, success, done)``; ``done`` is true once the task succeeded or its step limit is reached, and
    stepping past it raises. One renderer per task is kept for the life of the object.
    """

    def __init__(self, size: int = FRAME_SIZE, camera: str = CAMERA, goal_marker_size: float = 0.025):
        if int(size) < 8:
            raise ValueError(f"frame size must be >= 8 pixels, got {size}")
        self.size = int(size)
        self.camera = camera
        self.goal_marker_size = float(goal_marker_size)
        self._mujoco, self._env_classes, self._experts = _import_simulator()
        self._renderers: dict = {}
        mujoco = self._mujoco
        self._front = mujoco.MjvCamera()
        self._front.type = mujoco.mjtCamera.mjCAMERA_FREE
        self._front.lookat[:] = FRONT_CAMERA["lookat"]
        self._front.distance = FRONT_CAMERA["distance"]
        self._front.azimuth = FRONT_CAMERA["azimuth"]
        self._front.elevation = FRONT_CAMERA["elevation"]
        self._env = None
        self._task: RobotTask | None = None
        self._seed = -1
        self._steps = 0
        self._done = True
        self._state: np.ndarray | None = None
        self.physics_seconds = 0.0
        self.render_seconds = 0.0
        self.frames_rendered = 0
        self.steps_taken = 0

    # episode -------------------------------------------------------------------------------------------------
    def reset(self, task_name: str, seed: int, render: bool = True) -> RobotObservation:
        """Start an episode of ``task_name`` laid out from ``seed``; the first observation."""
        t = task(task_name)
        seed = check_seed(seed)
        if self._env is not None:
            self._env.close()
        cls = self._env_classes[f"{t.env_name}-goal-observable"]
        t0 = time.perf_counter()
        # Meta-World's goal-observable class draws the layout from the seed it is built with (and restores the
        # global numpy state afterwards); every reset of it then shows that same layout.
        self._env = cls(seed=layout_seed(task_name, seed))
        state, _ = self._env.reset()
        self.physics_seconds += time.perf_counter() - t0
        self._task, self._seed, self._steps, self._done = t, seed, 0, False
        self._state = np.asarray(state, np.float64)
        return self._observation(render)

    def step(self, action, render: bool = False) -> tuple[RobotObservation, bool, bool]:
        """Apply one action (4 values in [-1, 1], clipped); ``(observation, success, done)``."""
        if self._env is None or self._task is None:
            raise RuntimeError("call reset(task, seed) before step()")
        if self._done:
            raise RuntimeError(
                f"the episode ({self._task.name}, seed {self._seed}) is over after {self._steps} steps; call reset()"
            )
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"an action has {ACTION_DIM} values (dx, dy, dz, grip), got shape {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action has non-finite values: {action}")
        t0 = time.perf_counter()
        state, _, _, _, info = self._env.step(np.clip(action, -1.0, 1.0).astype(np.float32))
        self.physics_seconds += time.perf_counter() - t0
        self.steps_taken += 1
        self._steps += 1
        self._state = np.asarray(state, np.float64)
        success = bool(info["success"])
        self._done = success or self._steps >= self._task.max_steps
        return self._observation(render), success, self._done

    @property
    def done(self) -> bool:
        return self._done

    def render(self) -> np.ndarray:
        """The current frame, (size, size, 3) uint8."""
        if self._env is None or self._task is None:
            raise RuntimeError("call reset(task, seed) before render()")
        renderer = self._renderers.get(self._task.name)
        if renderer is None:
            renderer = self._renderers[self._task.name] = self._make_renderer(self._env.model)
        t0 = time.perf_counter()
        if self.camera == "front":
            renderer.update_scene(self._env.data, camera=self._front)
            self._draw_goal_post(renderer.scene)
            frame = renderer.render()
        else:
            renderer.update_scene(self._env.data, camera=self.camera)
            self._draw_goal_post(renderer.scene)
            frame = renderer.render()[::-1].copy()  # Meta-World's fixed cameras give the image upside down
        self.render_seconds += time.perf_counter() - t0
        self.frames_rendered += 1
        return frame

    #: the goal post: green, 1.2 cm wide, on a foot 2.5 cm in radius at the table top (z = 0 in Meta-World)
    GOAL_POST_RGBA = (0.1, 0.85, 0.1, 1.0)
    GOAL_POST_WIDTH = 0.006
    GOAL_FOOT_RADIUS = 0.025

    def _draw_goal_post(self, scene) -> None:
        """Add the goal post and its foot to the scene about to be rendered (tasks with ``goal_post`` only)."""
        assert self._task is not None and self._env is not None
        if not self._task.goal_post or scene.ngeom + 2 > scene.maxgeom:
            return
        mujoco = self._mujoco
        site = mujoco.mj_name2id(self._env.model, mujoco.mjtObj.mjOBJ_SITE, "goal")
        if site < 0:
            return
        top = np.asarray(self._env.data.site_xpos[site], np.float64).copy()
        foot = np.array([top[0], top[1], 0.0])
        rgba = np.asarray(self.GOAL_POST_RGBA, np.float32)
        post = scene.geoms[scene.ngeom]
        mujoco.mjv_initGeom(post, mujoco.mjtGeom.mjGEOM_CAPSULE, np.zeros(3), np.zeros(3), np.eye(3).ravel(), rgba)
        mujoco.mjv_connector(post, mujoco.mjtGeom.mjGEOM_CAPSULE, self.GOAL_POST_WIDTH, top, foot)
        scene.ngeom += 1
        disc = scene.geoms[scene.ngeom]
        mujoco.mjv_initGeom(disc, mujoco.mjtGeom.mjGEOM_CYLINDER, np.array([self.GOAL_FOOT_RADIUS, 0.005, 0.0]),
                            foot + np.array([0.0, 0.0, 0.005]), np.eye(3).ravel(), rgba)
        scene.ngeom += 1

    def _make_renderer(self, model):
        """A renderer on a copy of the model: no shadows and no multisampling (9x faster with OSMesa: 10 ms instead
        of 92 ms a 64x64 frame on 2 cores), and a goal marker large enough to show at 64 px."""
        import copy

        mujoco = self._mujoco
        view = copy.deepcopy(model)
        view.vis.quality.shadowsize = 0
        view.vis.quality.offsamples = 0
        if self.camera != "front" and mujoco.mj_name2id(view, mujoco.mjtObj.mjOBJ_CAMERA, self.camera) < 0:
            names = ["front"] + [view.camera(i).name for i in range(view.ncam)]
            raise ValueError(f"unknown camera {self.camera!r}; available: {', '.join(names)}")
        goal = mujoco.mj_name2id(view, mujoco.mjtObj.mjOBJ_SITE, "goal")
        if goal >= 0:
            view.site_size[goal] = np.maximum(view.site_size[goal], self.goal_marker_size)
        try:
            renderer = mujoco.Renderer(view, self.size, self.size)
        except mujoco.FatalError as e:
            raise RuntimeError(
                f"MuJoCo could not render headless with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} ({e}); set "
                "MUJOCO_GL=osmesa before mujoco is first imported and install OSMesa (Debian: apt-get install "
                "libosmesa6)"
            ) from e
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        return renderer

    def _observation(self, render: bool) -> RobotObservation:
        assert self._task is not None and self._state is not None
        return RobotObservation(
            task=self._task.name,
            seed=self._seed,
            step=self._steps,
            instruction=self._task.instruction,
            proprio=self._state[:PROPRIO_DIM].astype(np.float32),
            frame=self.render() if render else None,
            state=self._state.copy(),
        )

    def expert_action(self, observation: RobotObservation) -> np.ndarray:
        """The scripted expert's action (4,) float32 for ``observation`` (it reads the privileged state)."""
        return _expert_action(self._experts, observation)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_EXPERT_CACHE: dict = {}


def _expert_action(experts, observation: RobotObservation) -> np.ndarray:
    t = task(observation.task)
    policy = _EXPERT_CACHE.get(t.env_name)
    if policy is None:
        policy = _EXPERT_CACHE[t.env_name] = experts[t.env_name]()
    with warnings.catch_warnings():  # Meta-World's experts warn whenever a gain saturates; the env clips anyway
        warnings.filterwarnings("ignore", message="Constant.* may be too high")
        action = policy.get_action(observation.state)
    return np.clip(np.asarray(action, np.float32), -1.0, 1.0)


def expert_action(observation: RobotObservation) -> np.ndarray:
    """The scripted expert's action (4,) float32 for ``observation`` (Meta-World's policy for the task)."""
    _, _, experts = _import_simulator()
    return _expert_action(experts, observation)


def expert_policy(observation: RobotObservation) -> np.ndarray:
    """The scripted expert as a chunking policy for :func:`rollout`: a chunk of one action (1, 4)."""
    return expert_action(observation)[None]


@dataclasses.dataclass
class EpisodeResult:
    """One closed-loop episode: whether it succeeded, in how many control steps, what was executed."""

    task: str
    seed: int
    success: bool
    steps: int
    inferences: int
    actions: np.ndarray  # (steps, 4) float32, the actions as executed (clipped)
    policy_seconds: list[float]  # wall time of each policy call


def rollout(
    policy: Callable[[RobotObservation], np.ndarray],
    task_name: str,
    seed: int,
    sim: RobotSim | None = None,
    max_steps: int | None = None,
    render: bool = True,
) -> EpisodeResult:
    """Run ``policy`` in closed loop on one episode: ask for a chunk, execute all of it, ask again.

    ``policy(observation)`` returns an action chunk (k, 4) (or one action (4,)); the observation it gets carries
    a frame (unless ``render=False``): one render per inference, none for the steps in between. The episode ends
    at the first success or after ``max_steps`` (the task's limit by default).
    """
    own = sim is None
    sim = sim or RobotSim()
    try:
        limit = task(task_name).max_steps if max_steps is None else int(max_steps)
        obs = sim.reset(task_name, seed, render=render)
        actions: list[np.ndarray] = []
        times: list[float] = []
        success = done = False
        while not done and len(actions) < limit:
            t0 = time.perf_counter()
            chunk = np.asarray(policy(obs), dtype=np.float32)
            times.append(time.perf_counter() - t0)
            if chunk.ndim == 1:
                chunk = chunk[None]
            if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM or chunk.shape[0] == 0:
                raise ValueError(
                    f"the policy must return an action chunk of shape (k >= 1, {ACTION_DIM}), got {chunk.shape}"
                )
            for action in chunk:
                obs, success, done = sim.step(action)
                actions.append(np.clip(action, -1.0, 1.0))
                if done or len(actions) >= limit:
                    break
            if render and not done and len(actions) < limit:
                obs.frame = sim.render()  # only the frame the next inference sees
        executed = np.stack(actions).astype(np.float32) if actions else np.zeros((0, ACTION_DIM), np.float32)
        return EpisodeResult(task_name, int(seed), bool(success), len(actions), len(times), executed, times)
    finally:
        if own:
            sim.close()


def expert_success(
    tasks: Sequence[str] = TASK_NAMES, seeds: Sequence[int] | None = None, sim: RobotSim | None = None
) -> dict[str, dict]:
    """The scripted expert's success rate per task on ``seeds`` (default: 20 held-out seeds), no frames."""
    seeds = list(heldout_seeds(20) if seeds is None else seeds)
    own = sim is None
    sim = sim or RobotSim()
    out = {}
    try:
        for name in tasks:
            results = [rollout(expert_policy, name, s, sim=sim, render=False) for s in seeds]
            out[name] = {
                "episodes": len(results),
                "success_rate": sum(r.success for r in results) / max(len(results), 1),
                "mean_steps": float(np.mean([r.steps for r in results])) if results else 0.0,
                "failed_seeds": [r.seed for r in results if not r.success],
            }
    finally:
        if own:
            sim.close()
    return out


# dataset ---------------------------------------------------------------------------------------------------------
def _dataset_key(tasks, seeds, chunk, size, camera, max_steps) -> dict:
    return {
        "format": DATASET_FORMAT,
        "tasks": list(tasks),
        "instructions": [task(t).instruction for t in tasks],
        "max_steps": [min(task(t).max_steps, max_steps or task(t).max_steps) for t in tasks],
        "seeds": [int(s) for s in seeds],
        "chunk": int(chunk),
        "frame_size": int(size),
        "camera": camera,
        "goal_post": [task(t).goal_post for t in tasks],
        "versions": versions(),
    }


def load_dataset(out_dir: str) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays (``data.npz``) and the manifest (``manifest.json``) of a generated dataset."""
    with open(os.path.join(out_dir, "manifest.json")) as f:
        manifest = json.load(f)
    with np.load(os.path.join(out_dir, "data.npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, manifest


def generate_dataset(
    out_dir: str,
    tasks: Sequence[str] = TASK_NAMES,
    seeds: Sequence[int] = (),
    chunk: int = 8,
    size: int = FRAME_SIZE,
    camera: str = CAMERA,
    progress: bool = True,
    allow_heldout: bool = False,
    max_steps: int | None = None,
) -> dict:
    """Expert demonstrations for every (task, seed), cached in ``out_dir``; returns the manifest.

    One sample per control step of the expert's episode: ``frames`` (N, size, size, 3) uint8, ``proprio`` (N, 4)
    float32, ``task_index`` (N,) into the manifest's tasks/instructions, ``actions`` (N, chunk, 4) float32 (the
    expert's actions from this step on, as executed; past the episode's end the last action repeats) with
    ``action_mask`` (N, chunk) (false on the repeats), ``episode`` and ``step`` (N,) int32. Per episode:
    ``episode_task``, ``episode_seed``, ``episode_success``, ``episode_steps``. Saved as ``data.npz`` (no pickles)
    with ``manifest.json`` (tasks, seeds, chunk, camera, Meta-World/MuJoCo versions, time taken). When the folder
    already holds a dataset whose manifest matches these settings it is reused; otherwise it is regenerated.
    Only fit seeds are accepted unless ``allow_heldout``; ``max_steps`` cuts episodes shorter than the tasks'
    limits (smoke runs).
    """
    tasks = [task(t).name for t in tasks]
    if not tasks:
        raise ValueError(f"no tasks given; available: {', '.join(TASK_NAMES)}")
    seeds = [check_seed(s, None if allow_heldout else "fit") for s in seeds]
    if not seeds:
        raise ValueError("no seeds given (e.g. seeds=fit_seeds(50))")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if max_steps is not None and int(max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1 (or None for the tasks' limits), got {max_steps}")
    key = _dataset_key(tasks, seeds, chunk, size, camera, max_steps)
    manifest_path = os.path.join(out_dir, "manifest.json")
    if os.path.isfile(manifest_path) and os.path.isfile(os.path.join(out_dir, "data.npz")):
        try:
            with open(manifest_path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = {}
        if old.get("key") == key:
            return old

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    cols: dict[str, list] = {k: [] for k in ("frames", "proprio", "task_index", "actions", "action_mask",
                                             "episode", "step")}
    episodes: dict[str, list] = {k: [] for k in ("episode_task", "episode_seed", "episode_success",
                                                 "episode_steps")}
    with RobotSim(size=size, camera=camera) as sim, tqdm(
        total=len(tasks) * len(seeds), desc="expert episodes", unit="ep", disable=not progress
    ) as bar:
        for ti, name in enumerate(tasks):
            for seed in seeds:
                ep = len(episodes["episode_seed"])
                obs = sim.reset(name, seed, render=True)
                frames, proprio, acts = [], [], []
                done = success = False
                limit = key["max_steps"][ti]
                while not done and len(acts) < limit:
                    frames.append(obs.frame)
                    proprio.append(obs.proprio)
                    action = sim.expert_action(obs)
                    acts.append(action)
                    obs, success, done = sim.step(action)
                    if not done and len(acts) < limit:
                        obs.frame = sim.render()
                acts_arr = np.stack(acts)
                n = len(acts_arr)
                idx = np.minimum(np.arange(n)[:, None] + np.arange(chunk)[None, :], n - 1)
                cols["frames"].append(np.stack(frames))
                cols["proprio"].append(np.stack(proprio))
                cols["task_index"].append(np.full(n, ti, np.int32))
                cols["actions"].append(acts_arr[idx])
                cols["action_mask"].append(np.arange(n)[:, None] + np.arange(chunk)[None, :] < n)
                cols["episode"].append(np.full(n, ep, np.int32))
                cols["step"].append(np.arange(n, dtype=np.int32))
                episodes["episode_task"].append(ti)
                episodes["episode_seed"].append(seed)
                episodes["episode_success"].append(success)
                episodes["episode_steps"].append(n)
                bar.update(1)
        render_s, physics_s = sim.render_seconds, sim.physics_seconds
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    arrays["episode_task"] = np.asarray(episodes["episode_task"], np.int32)
    arrays["episode_seed"] = np.asarray(episodes["episode_seed"], np.int64)
    arrays["episode_success"] = np.asarray(episodes["episode_success"], bool)
    arrays["episode_steps"] = np.asarray(episodes["episode_steps"], np.int32)
    elapsed = time.perf_counter() - t0
    manifest = {
        "key": key,
        "samples": int(len(arrays["step"])),
        "episodes": int(len(arrays["episode_seed"])),
        "expert_success_rate": float(arrays["episode_success"].mean()),
        "seconds": round(elapsed, 2),
        "render_seconds": round(render_s, 2),
        "physics_seconds": round(physics_s, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
                   f"{platform.python_version()}, MUJOCO_GL={os.environ.get('MUJOCO_GL')}",
        "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()},
    }
    # write into a temporary folder beside out_dir, then swap it in: a crash never leaves a half-written cache
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.abspath(out_dir) + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.savez(os.path.join(tmp, "data.npz"), **arrays)
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return manifest


def timings(task_name: str = "push", seed: int = HELDOUT_START, steps: int = 50, frames: int = 20) -> dict:
    """Median wall time of one control step (physics) and of one frame render, on this machine."""
    with RobotSim() as sim:
        obs = sim.reset(task_name, seed, render=True)  # first render builds the renderer
        step_t, render_t = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            obs, _, done = sim.step(sim.expert_action(obs))
            step_t.append(time.perf_counter() - t0)
            if done:
                obs = sim.reset(task_name, seed, render=False)
        for _ in range(frames):
            t0 = time.perf_counter()
            sim.render()
            render_t.append(time.perf_counter() - t0)
    return {"step_ms": 1e3 * float(np.median(step_t)), "render_ms": 1e3 * float(np.median(render_t))}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Meta-World robot tasks: the scripted expert's held-out success "
                                             "rate and timings, or an expert dataset")
    ap.add_argument("--episodes", type=int, default=20, help="held-out episodes per task for the success rate")
    ap.add_argument("--tasks", nargs="*", default=list(TASK_NAMES), help=f"tasks ({', '.join(TASK_NAMES)})")
    ap.add_argument("--dataset", help="write the expert dataset of --fit-seeds fit seeds per task to this folder")
    ap.add_argument("--fit-seeds", type=int, default=50)
    ap.add_argument("--chunk", type=int, default=8)
    args = ap.parse_args(argv)
    if args.dataset:
        m = generate_dataset(args.dataset, args.tasks, fit_seeds(args.fit_seeds), chunk=args.chunk)
        print(json.dumps({k: v for k, v in m.items() if k != "key"}, indent=1))
        return
    t0 = time.perf_counter()
    rates = expert_success(args.tasks, heldout_seeds(args.episodes))
    print(json.dumps({"expert_heldout": rates, "seconds": round(time.perf_counter() - t0, 1),
                      "timings": timings(), "versions": versions(),
                      "machine": f"{platform.machine()}, {os.cpu_count()} cores"}, indent=1))


if __name__ == "__main__":
    main()
