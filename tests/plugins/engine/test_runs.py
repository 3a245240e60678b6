"""The run tracker every engine uses: one rule for a new generation, steps per CFG branch."""

import torch
from tiny_models import run_wan, tiny_wan_pipeline

import dynaccel
from dynaccel.plugins.engine.runs import RunTracker


def test_steps_count_per_branch_and_a_new_probe_token_starts_a_new_run():
    token = [object()]
    started = []
    t = RunTracker(lambda: (token[0], 3), on_start=started.append)
    steps = [t.observe(b).step for _ in range(3) for b in ("cond", "uncond")]
    assert steps == [0, 0, 1, 1, 2, 2] and len(started) == 1
    assert t.run.num_steps == 3 and t.run.steps == 3
    token[0] = object()  # the scheduler set new timesteps
    c = t.observe("cond")
    assert c.new_run and c.step == 0 and len(started) == 2 and started[0].finished


def test_an_explicit_step_index_back_at_zero_starts_a_new_run():
    t = RunTracker(None)
    assert [t.observe("cond", step=i).new_run for i in range(3)] == [True, False, False]
    assert t.observe("uncond", step=0).new_run is False  # another branch's first call
    c = t.observe("cond", step=0)
    assert c.new_run and c.step == 0


def test_without_step_indices_the_timestep_tells_steps_and_runs_apart():
    t = RunTracker(None)
    seen = [(c.step, c.new_step, c.new_run) for c in
            (t.observe(b, timestep=ts) for ts in (900.0, 500.0) for b in ("cond", "uncond", "cond"))]
    # a second call of a branch at the same timestep is the same step
    assert seen == [(0, True, True), (0, True, False), (0, False, False),
                    (1, True, False), (1, True, False), (1, False, False)]
    c = t.observe("cond", timestep=900.0)  # the timestep went up: a new generation
    assert c.new_run and c.step == 0


def test_reset_ends_the_run_and_sets_the_step_count_of_the_next():
    finished = []
    t = RunTracker(None, on_finish=finished.append)
    t.observe()
    t.start(7)
    assert len(finished) == 1 and t.run is None
    c = t.observe()
    assert c.new_run and c.run.num_steps == 7


def test_sparse_attention_keeps_steps_and_policy_state_per_cfg_branch():
    pipe = tiny_wan_pipeline()
    h = dynaccel.enable_accel(pipe, "pasa", density=0.3, max_density=0.6, gain=2.0, block_size=16)
    run_wan(pipe, steps=6)
    engine = next(iter(h.parts.values())).engine
    run = engine.tracker.run
    assert set(run.branches) == {"cond", "uncond"} and run.finished
    for b in run.branches.values():  # each branch followed its own trajectory over its 6 steps
        assert b.step == 5 and b.calls == 6 and len(b.data["latents"]) == 3
    assert h.stats["steps"] == 6 and list(h.stats["budget_per_step"]) == list(range(6))
    pipe.disable_accel()
