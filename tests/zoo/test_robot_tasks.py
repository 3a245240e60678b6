"""The robot tasks (zoo/robot_tasks.py), the measurement instrument of the VLA policies: Meta-World episodes laid out
from seeds, fit and held-out seeds apart, frames rendered only when asked, the scripted expert, closed-loop rollout
of chunking policies and the cached expert dataset.

Rendering is headless with MuJoCo's OSMesa backend: MUJOCO_GL is set here before mujoco can be imported. Without
Meta-World or Debian's libosmesa6 the simulator tests skip, except under CI (``CI`` set), where they fail.
"""

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")  # before anything imports mujoco

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from robot_sim import require_simulator  # noqa: E402

from dynaccel.zoo import robot_tasks as rt  # noqa: E402



@pytest.fixture(scope="module")
def sim():
    require_simulator()
    with rt.RobotSim() as s:
        yield s


def _expert_episode(sim, task, seed, render_every_step=True, steps=None):
    obs = sim.reset(task, seed, render=render_every_step)
    frames, actions, states = [obs.frame], [], [obs.state]
    while not sim.done and (steps is None or len(actions) < steps):
        a = sim.expert_action(obs)
        actions.append(a)
        obs, _, _ = sim.step(a, render=render_every_step)
        frames.append(obs.frame)
        states.append(obs.state)
    return frames, np.stack(actions), np.stack(states)


# seeds and tasks (no simulator needed) ----------------------------------------------------------------------------
def test_fit_and_heldout_seeds_never_overlap():
    fit, held = rt.fit_seeds(500), rt.heldout_seeds(500)
    assert not set(fit) & set(held)
    assert max(fit) < rt.HELDOUT_START <= min(held)
    assert all(not rt.is_heldout(s) for s in fit) and all(rt.is_heldout(s) for s in held)
    assert rt.fit_seeds(2, start=rt.HELDOUT_START - 2) == [rt.HELDOUT_START - 2, rt.HELDOUT_START - 1]
    with pytest.raises(ValueError, match="fit seeds are 0..999999"):
        rt.fit_seeds(3, start=rt.HELDOUT_START - 2)  # would run into the held-out range
    with pytest.raises(ValueError, match="is a held-out seed"):
        rt.check_seed(rt.HELDOUT_START, "fit")
    with pytest.raises(ValueError, match="is a fit seed"):
        rt.check_seed(7, "heldout")


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, None, 2**63])
def test_bad_seed_is_refused_with_the_value(bad):
    with pytest.raises((TypeError, ValueError), match="episode seed"):
        rt.check_seed(bad)


def test_unknown_task_names_the_available_ones(tmp_path):
    msg = "unknown robot task 'pick-place'; available: reach, push, drawer-open, button-press"
    with pytest.raises(ValueError, match=msg):
        rt.task("pick-place")
    with pytest.raises(ValueError, match=msg):
        rt.layout_seed("pick-place", 0)
    with pytest.raises(ValueError, match=msg):
        rt.generate_dataset(str(tmp_path / "d"), ["reach", "pick-place"], [0])


def test_every_task_has_its_own_instruction():
    inst = rt.instructions()
    assert len(inst) >= 4 and len(set(inst.values())) == len(inst)
    assert inst["push"] == "push the puck to the goal"


def test_layout_seed_mixes_task_and_seed():
    seeds = {rt.layout_seed(t, s) for t in rt.TASK_NAMES for s in range(20)}
    assert len(seeds) == 20 * len(rt.TASK_NAMES)
    assert rt.layout_seed("push", 3) == rt.layout_seed("push", 3)


def test_importing_the_module_imports_no_simulator():
    code = ("import sys; import dynaccel.zoo.robot_tasks\n"
            "assert not {'mujoco', 'metaworld', 'gymnasium'} & {m.split('.')[0] for m in sys.modules}, 'imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_triton_still_imports_after_the_simulator(sim):
    """PyOpenGL loads OSMesa's LLVM globally; a Triton imported after it used to crash the process."""
    pytest.importorskip("triton")
    code = ("from dynaccel.zoo import robot_tasks as rt\n"
            "rt.RobotSim().reset('reach', 0)\n"
            "import triton, dynaccel; print(triton.__version__, len(dynaccel.list_strategies()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])


# episodes ---------------------------------------------------------------------------------------------------------
def test_observation_has_a_frame_only_when_asked(sim):
    obs = sim.reset("push", rt.heldout_seeds(1)[0])
    assert obs.frame.shape == (64, 64, 3) and obs.frame.dtype == np.uint8 and obs.frame.std() > 10
    assert obs.proprio.shape == (4,) and obs.proprio.dtype == np.float32
    assert obs.instruction == "push the puck to the goal" and obs.task == "push" and obs.step == 0
    obs, success, done = sim.step(np.zeros(4))
    assert obs.frame is None and obs.step == 1 and not success and not done
    assert sim.render().shape == (64, 64, 3)


def test_same_task_and_seed_give_bitwise_the_same_frames_and_expert_actions(sim):
    seed = rt.heldout_seeds(1, start=3)[0]
    frames_a, actions_a, states_a = _expert_episode(sim, "push", seed, steps=8)
    _expert_episode(sim, "reach", 5, steps=3)  # another episode in between changes nothing
    sim.reset("button-press", 5)  # the button's body moves with the layout: its renderer was made for seed 5
    button_a = sim.reset("button-press", seed).frame
    with rt.RobotSim() as other:  # nor does a fresh simulator (its own renderer)
        frames_b, actions_b, states_b = _expert_episode(other, "push", seed, steps=8)
        assert np.array_equal(other.reset("button-press", seed).frame, button_a)
    assert all(np.array_equal(a, b) for a, b in zip(frames_a, frames_b))
    assert np.array_equal(actions_a, actions_b) and np.array_equal(states_a, states_b)
    assert not np.array_equal(frames_a[0], frames_a[-1])  # the arm moved on screen


def test_layouts_differ_between_seeds_and_the_goal_is_on_screen(sim):
    goals = {tuple(sim.reset("reach", s, render=False).state[-3:].round(4)) for s in rt.heldout_seeds(5)}
    assert len(goals) == 5
    a = sim.reset("reach", rt.HELDOUT_START).frame
    b = sim.reset("reach", rt.HELDOUT_START + 1).frame
    assert np.abs(a.astype(int) - b.astype(int)).sum() > 0  # only the goal marker moved


def _green_pixels(frame):
    f = frame.astype(int)
    return int(((f[..., 1] > 150) & (f[..., 0] < 100) & (f[..., 2] < 100)).sum())


def test_reach_frames_show_how_high_the_goal_floats(sim):
    """The reach goal floats in a 3-D box; the green post from the marker down to the table makes its height visible:
    the higher the goal, the longer the post on screen. Only reach draws it, and drawing it changes no physics."""
    heights, lengths = [], []
    for s in rt.heldout_seeds(10):
        obs = sim.reset("reach", s)
        heights.append(obs.state[-1])
        lengths.append(_green_pixels(obs.frame))
    assert min(lengths) > 0
    assert np.corrcoef(heights, lengths)[0, 1] > 0.6, (heights, lengths)
    assert rt.task("reach").goal_post and not any(rt.task(t).goal_post for t in rt.TASK_NAMES if t != "reach")
    state = sim.reset("reach", rt.HELDOUT_START, render=True).state
    assert np.array_equal(state, sim.reset("reach", rt.HELDOUT_START, render=False).state)


def test_expert_succeeds_on_heldout_seeds_of_every_task(sim):
    for task in rt.TASK_NAMES:
        for seed in rt.heldout_seeds(2, start=10):
            result = rt.rollout(rt.expert_policy, task, seed, sim=sim, render=False)
            assert result.success, (task, seed, result.steps)
            assert 0 < result.steps < rt.task(task).max_steps


def test_random_actions_rarely_succeed(sim):
    rng = np.random.default_rng(0)
    successes = episodes = 0
    for task in rt.TASK_NAMES:
        for seed in rt.heldout_seeds(2):
            result = rt.rollout(lambda obs: rng.uniform(-1, 1, (10, 4)), task, seed, sim=sim, render=False)
            successes += result.success
            episodes += 1
    assert successes <= 1, f"{successes} of {episodes} random episodes succeeded"


def test_rollout_executes_whole_chunks_and_renders_once_per_inference(sim):
    calls = []

    def policy(obs):
        calls.append(obs)
        assert obs.frame is not None and obs.frame.shape == (64, 64, 3)
        return np.tile(np.array([[0.2, 0.0, 0.0, 2.0]], np.float32), (5, 1))  # grip 2.0 is clipped to 1

    before = sim.frames_rendered
    result = rt.rollout(policy, "reach", rt.HELDOUT_START, sim=sim, max_steps=12)
    assert result.steps == 12 and result.inferences == 3 == len(calls) == len(result.policy_seconds)
    assert sim.frames_rendered - before == 3  # one per inference, none for the steps in between
    assert [c.step for c in calls] == [0, 5, 10]
    assert result.actions.shape == (12, 4) and result.actions.dtype == np.float32
    assert np.all(result.actions[:, 3] == 1.0) and np.all(result.actions[:, 0] == np.float32(0.2))


def test_rollout_refuses_a_policy_that_returns_no_chunk(sim):
    with pytest.raises(ValueError, match=r"action chunk of shape \(k >= 1, 4\), got \(0, 4\)"):
        rt.rollout(lambda obs: np.zeros((0, 4)), "reach", 0, sim=sim, render=False)
    with pytest.raises(ValueError, match=r"got \(3, 7\)"):
        rt.rollout(lambda obs: np.zeros((3, 7)), "reach", 0, sim=sim, render=False)


def test_episode_misuse_is_explained(sim):
    sim.reset("reach", 0, render=False)
    with pytest.raises(ValueError, match=r"an action has 4 values .* got shape \(3,\)"):
        sim.step(np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        sim.step(np.array([0, np.nan, 0, 0]))
    with pytest.raises(ValueError, match="unknown robot task 'reacher'; available: reach"):
        sim.reset("reacher", 0)
    with pytest.raises(ValueError, match="episode seed must be in"):
        sim.reset("reach", -4)
    with pytest.raises(ValueError, match="unknown camera 'side'; available: front, topview, corner"), \
            rt.RobotSim(camera="side") as side:
        side.reset("reach", 0)
    while not sim.done:
        sim.step(np.zeros(4))
    with pytest.raises(RuntimeError, match=r"the episode \(reach, seed 0\) is over after 150 steps; call reset"):
        sim.step(np.zeros(4))


# dataset ----------------------------------------------------------------------------------------------------------
def test_dataset_holds_the_expert_episodes_and_is_reused_or_regenerated(sim, tmp_path):
    out = str(tmp_path / "robot-data")
    seeds, steps = [4], 9  # a short cut of one episode (the expert's successes are tested above)
    manifest = rt.generate_dataset(out, ["reach"], seeds, chunk=4, progress=False, max_steps=steps)
    data, saved = rt.load_dataset(out)
    assert saved == manifest and manifest["key"]["seeds"] == seeds and manifest["key"]["tasks"] == ["reach"]
    assert manifest["key"]["versions"]["metaworld"] == "3.1.1" and manifest["seconds"] > 0
    n = manifest["samples"]
    assert n == steps and manifest["key"]["max_steps"] == [steps]
    assert data["frames"].shape == (n, 64, 64, 3) and data["frames"].dtype == np.uint8
    assert data["actions"].shape == (n, 4, 4) and data["proprio"].shape == (n, 4)
    assert data["episode_success"].tolist() == [False] and data["episode_steps"].tolist() == [n]

    # the labels are the expert's own actions, as a rollout of the same seed executes them
    expert = rt.rollout(rt.expert_policy, "reach", 4, sim=sim, render=False, max_steps=steps)
    assert np.array_equal(data["actions"][:, 0], expert.actions)
    assert np.array_equal(data["actions"][:-1, 1], expert.actions[1:])
    assert data["action_mask"][-1].tolist() == [True, False, False, False]
    assert np.array_equal(data["actions"][-1, 3], expert.actions[-1])  # past the end: the last action repeats
    # the frame of step 0 is the one reset renders
    assert np.array_equal(data["frames"][0], sim.reset("reach", 4).frame)

    stamp = os.stat(os.path.join(out, "data.npz")).st_mtime_ns
    assert rt.generate_dataset(out, ["reach"], seeds, chunk=4, progress=False, max_steps=steps) == manifest  # reused
    assert os.stat(os.path.join(out, "data.npz")).st_mtime_ns == stamp

    with open(os.path.join(out, "manifest.json")) as f:
        stale = json.load(f)
    stale["key"]["versions"]["mujoco"] = "0.0.0"  # e.g. made with another MuJoCo
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(stale, f)
    regenerated = rt.generate_dataset(out, ["reach"], seeds, chunk=4, progress=False, max_steps=steps)
    assert regenerated["key"] == manifest["key"]
    assert np.array_equal(rt.load_dataset(out)[0]["frames"], data["frames"])  # deterministic

    other = rt.generate_dataset(out, ["reach"], seeds, chunk=2, progress=False, max_steps=steps)  # other settings
    assert other["key"]["chunk"] == 2 and rt.load_dataset(out)[0]["actions"].shape == (n, 2, 4)
    assert not os.path.exists(out + ".tmp")


def test_dataset_refuses_heldout_seeds_and_bad_settings(tmp_path):
    out = str(tmp_path / "d")
    with pytest.raises(ValueError, match="is a held-out seed"):
        rt.generate_dataset(out, ["reach"], [rt.HELDOUT_START])
    with pytest.raises(ValueError, match="no seeds given"):
        rt.generate_dataset(out, ["reach"], [])
    with pytest.raises(ValueError, match="chunk must be >= 1, got 0"):
        rt.generate_dataset(out, ["reach"], [0], chunk=0)
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        rt.generate_dataset(out, ["reach"], [0], max_steps=0)
    assert not os.path.exists(out)


@pytest.mark.slow
def test_expert_heldout_success_rate_per_task(sim):
    """The rate docs/zoo.md reports: 20 held-out episodes per task."""
    rates = rt.expert_success(rt.TASK_NAMES, rt.heldout_seeds(20), sim=sim)
    assert all(r["success_rate"] >= 0.95 for r in rates.values()), rates
