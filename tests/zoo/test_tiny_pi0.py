"""The zoo's tiny-pi0: loads offline with the stock class within the size budget, and succeeds in closed loop on a
small held-out subset (2 episodes per task, seeds 1,000,000-1,000,001) far above random actions, which succeed on
none of 80 held-out episodes (zoo/tiny-pi0/README.md)."""

import os

import numpy as np

from robot_sim import require_simulator

import dynaccel.zoo as zoo


def test_loads_offline_with_the_stock_class():
    from transformers import PI0ForConditionalGeneration

    folder = zoo.path("tiny-pi0")
    model = PI0ForConditionalGeneration.from_pretrained(folder, local_files_only=True)
    assert type(model) is PI0ForConditionalGeneration
    assert model.config.chunk_size == 8 and model.config.num_inference_steps == 10
    assert os.path.getsize(os.path.join(folder, "model.safetensors")) <= 15 * 2**20


def test_held_out_success_far_above_random_actions():
    require_simulator()
    from dynaccel.zoo import robot_tasks as rt
    from dynaccel.zoo import train_tiny_pi0 as tp

    result = tp.evaluate(zoo.path("tiny-pi0"), episodes=2)
    trained = sum(len(result[t]["successes"]) for t in rt.TASK_NAMES)
    rng = np.random.default_rng(0)
    with rt.RobotSim() as sim:
        random = sum(rt.rollout(lambda o: rng.uniform(-1, 1, (8, 4)), t, s, sim=sim, render=False).success
                     for t in rt.TASK_NAMES for s in rt.heldout_seeds(2))
    assert random <= 1
    assert trained >= 5, result  # of 8 (79% over 80 held-out episodes)
