"""The tiny-pi0 training script (zoo/train_tiny_pi0.py): a stock PI0ForConditionalGeneration trained on the robot
tasks' expert data. Retraining from a seed is bit-identical (another seed differs), a saved folder loads offline
with the stock class and gives the same actions, the processor turns an observation into inputs the model takes and
a chunk into actions in [-1, 1], and the policy wrapper drives a closed-loop rollout.

Needs Meta-World and OSMesa like tests/zoo/test_robot_tasks.py: they skip without them, except under CI.
"""

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")  # before anything imports mujoco


import numpy as np  # noqa: E402
import pytest  # noqa: E402
from robot_sim import require_simulator  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("transformers")

from dynaccel.zoo import robot_tasks as rt  # noqa: E402
from dynaccel.zoo import train_tiny_pi0 as tp  # noqa: E402

try:
    from transformers import PI0ForConditionalGeneration  # noqa: E402
except ImportError:  # pragma: no cover - older transformers
    pytest.skip("transformers has no PI0ForConditionalGeneration", allow_module_level=True)


def _quiet(*a, **k):
    pass



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    require_simulator()
    folder = str(tmp_path_factory.mktemp("pi0-data"))
    return tp.load_data(folder, rt.fit_seeds(1), max_steps=12, progress=False)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    torch.set_num_threads(1)
    arrays, manifest = data
    model, processor, info, losses = tp.train(arrays, manifest, steps=100, batch_size=4, seed=3, stop_after=3,
                                              log=_quiet)
    folder = str(tmp_path_factory.mktemp("tiny-pi0"))
    tp.save(model, processor, folder, info)
    return model, processor, info, losses, folder


@pytest.fixture(scope="module")
def sim(data):
    with rt.RobotSim() as s:
        yield s


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_data_is_fit_seeds_only(data):
    arrays, manifest = data
    assert manifest["key"]["seeds"] == [0] and manifest["key"]["tasks"] == list(rt.TASK_NAMES)
    assert arrays["actions"].shape[1:] == (tp.CHUNK, rt.ACTION_DIM)
    with pytest.raises(ValueError, match="held-out"):
        tp.load_data("/nonexistent-never-written", rt.heldout_seeds(1), progress=False)


def test_training_is_bit_reproducible(data, trained):
    arrays, manifest = data
    a, _, info_a, la = trained[:4]
    b, _, info_b, lb = tp.train(arrays, manifest, steps=100, batch_size=4, seed=3, stop_after=3, log=_quiet)
    c, _, _, lc = tp.train(arrays, manifest, steps=100, batch_size=4, seed=4, stop_after=3, log=_quiet)
    assert info_a["steps"] == 3 and len(la) == 3 and all(np.isfinite(la))
    assert la == lb and la != lc
    assert _same(a, b) and not _same(a, c)
    # the steps changed the weights: a fresh model from the same seed differs from the trained one
    torch.manual_seed(3)
    fresh = tp.build_model(len(tp.vocabulary()))
    assert not _same(a, fresh)
    assert not torch.are_deterministic_algorithms_enabled()  # the global switch is restored


def test_save_and_offline_round_trip(trained, sim, monkeypatch):
    model, processor, _, _, folder = trained
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    loaded = PI0ForConditionalGeneration.from_pretrained(folder).eval()
    assert _same(model, loaded)
    size = os.path.getsize(os.path.join(folder, "model.safetensors"))
    assert size < 15e6
    proc2 = tp.TinyPi0Processor.from_pretrained(folder)
    obs = sim.reset("push", rt.heldout_seeds(1)[0])
    a = tp.Pi0Policy(model.eval(), processor, seed=5)(obs)
    b = tp.Pi0Policy(loaded, proc2, seed=5)(obs)
    c = tp.Pi0Policy(loaded, proc2, seed=6)(obs)
    assert a.shape == (tp.CHUNK, rt.ACTION_DIM)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    for k, v in processor(obs).items():
        assert torch.equal(v, proc2(obs)[k]), k


def test_processor_maps_observation_and_chunk(trained, sim):
    model, processor = trained[:2]
    vocab = tp.vocabulary()
    obs = sim.reset("drawer-open", rt.heldout_seeds(1)[0])
    inputs = processor(obs)
    ids = inputs["input_ids"]
    assert ids.shape == (1, tp.IMAGE_TOKENS + tp.TEXT_LEN)
    image_id = model.config.vlm_config.image_token_index
    assert image_id == len(vocab) - 1 and int((ids == image_id).sum()) == tp.IMAGE_TOKENS
    text = [vocab[int(i)] for i, m in zip(ids[0], inputs["attention_mask"][0]) if m and int(i) != image_id]
    assert text == ["<bos>"] + obs.instruction.split()
    assert "<unk>" not in text and int(inputs["attention_mask"].sum()) == tp.IMAGE_TOKENS + len(text)
    px = inputs["pixel_values"]
    assert px.shape == (1, 1, 3, 64, 64) and px.min() >= -1 and px.max() <= 1
    assert torch.allclose(px[0, 0, :, 10, 20], torch.from_numpy(obs.frame[10, 20].astype(np.float32)) / 127.5 - 1)
    state = inputs["state"]
    assert state.shape == (1, tp.STATE_DIM) and torch.all(state[0, rt.PROPRIO_DIM:] == 0)
    assert np.allclose(state[0, : rt.PROPRIO_DIM].numpy() * processor.state_std + processor.state_mean,
                       obs.proprio, atol=1e-5)
    chunk = model.sample_actions(**inputs)
    assert chunk.shape == (1, tp.CHUNK, rt.ACTION_DIM)
    actions = processor.actions(chunk[0])
    assert actions.shape == (tp.CHUNK, rt.ACTION_DIM) and actions.dtype == np.float32
    assert np.all(np.abs(actions) <= 1)
    wide = processor.actions(torch.tensor([[3.0, -2.0, 0.5, -0.25]]))
    assert wide.tolist() == [[1.0, -1.0, 0.5, -0.25]]
    two = processor([obs, sim.reset("reach", rt.heldout_seeds(1)[0])])  # a batch of 2
    assert two["input_ids"].shape[0] == 2 and not torch.equal(two["input_ids"][0], two["input_ids"][1])
    with pytest.raises(ValueError, match="no frame"):
        processor(sim.reset("reach", rt.heldout_seeds(1)[0], render=False))


def test_policy_drives_a_rollout(trained, sim):
    model, processor = trained[:2]
    policy = tp.Pi0Policy(model, processor, seed=0)
    seed = rt.heldout_seeds(1)[0]
    r1 = rt.rollout(policy, "reach", seed, sim=sim, max_steps=2 * tp.CHUNK + 3)
    r2 = rt.rollout(policy, "reach", seed, sim=sim, max_steps=2 * tp.CHUNK + 3)
    assert r1.steps == 2 * tp.CHUNK + 3 and r1.inferences == 3
    assert r1.actions.shape == (r1.steps, rt.ACTION_DIM) and np.all(np.abs(r1.actions) <= 1)
    assert np.array_equal(r1.actions, r2.actions)  # the episode's noise is reseeded per episode
    assert not np.allclose(r1.actions[: tp.CHUNK], r1.actions[tp.CHUNK: 2 * tp.CHUNK])  # new frame, new chunk


def test_evaluate_rejects_fit_seeds(trained):
    folder = trained[4]
    with pytest.raises(ValueError, match="fit seed"):
        tp.evaluate(folder, tasks=["reach"], heldout_seeds=[3])


def test_evaluate_scores_held_out_episodes(trained):
    folder = trained[4]
    result = tp.evaluate(folder, tasks=["reach", "button-press"], episodes=1)
    assert set(result) == {"reach", "button-press", "mean"}
    for name in ("reach", "button-press"):
        assert result[name]["episodes"] == 1 and 0 <= result[name]["success_rate"] <= 1
        assert 1 <= result[name]["mean_steps"] <= rt.task(name).max_steps
    assert result["mean"] == (result["reach"]["success_rate"] + result["button-press"]["success_rate"]) / 2
