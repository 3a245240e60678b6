"""reflow and perflow: the training pairs they derive from teacher trajectories (the conventions of
dynaccel.core.distiller: states[:, 0] is the noise at sigma 1, states[:, N] the teacher's output at sigma 0)."""

import pytest
import torch

import dynaccel
from dynaccel.core.registry import get_registry
from dynaccel.plugins.distillation.flow import Perflow, Reflow

SIGMAS = torch.tensor([1.0, 0.75, 0.4, 0.0])


def curved_trajectories(b=64, seed=0):
    """States on a curved path per sample (not a straight line), at SIGMAS."""
    g = torch.Generator().manual_seed(seed)
    noise, out, bend = (torch.randn(b, 2, 3, generator=g) for _ in range(3))
    s = SIGMAS.view(1, -1, 1, 1)
    return (1 - s) * out[:, None] + s * noise[:, None] + s * (1 - s) * bend[:, None]


def test_both_are_registered_with_paper_and_ranged_options():
    reg = get_registry()
    assert reg.distiller("reflow") is Reflow and reg.distiller("perflow") is Perflow
    for cls in (Reflow, Perflow):
        assert "arXiv" in cls.paper and cls.__doc__
        [spec] = cls.Config.fields_info()
        assert (spec.name, spec.min, spec.max) == ("grid_share", 0.0, 1.0)
        with pytest.raises(dynaccel.ConfigError, match="grid_share"):
            cls(grid_share=1.5)


def test_perflow_at_a_window_start_is_the_step_that_lands_on_the_teachers_next_state():
    states = curved_trajectories()
    x, s, v = Perflow(grid_share=1.0).pairs(states, SIGMAS, torch.Generator().manual_seed(1))
    for i in range(states.shape[0]):
        k = int((SIGMAS[:-1] == s[i]).nonzero())  # every pair sits at a window's start
        assert torch.equal(x[i], states[i, k])
        landed = x[i] + (SIGMAS[k + 1] - SIGMAS[k]) * v[i]  # the student's Euler step with the target velocity
        assert torch.allclose(landed, states[i, k + 1], atol=1e-6)


def test_perflow_inside_a_window_is_on_the_secant_with_the_same_velocity():
    states = curved_trajectories()
    x, s, v = Perflow(grid_share=0.0).pairs(states, SIGMAS, torch.Generator().manual_seed(2))
    for i in range(states.shape[0]):
        k = int(((SIGMAS[:-1] >= s[i]) & (SIGMAS[1:] < s[i])).nonzero()[-1])
        secant = (states[i, k + 1] - states[i, k]) / (SIGMAS[k + 1] - SIGMAS[k])
        assert torch.allclose(v[i], secant, atol=1e-6)
        assert torch.allclose(x[i], states[i, k] + (s[i] - SIGMAS[k]) * secant, atol=1e-5)


def test_reflow_pairs_lie_on_the_straight_line_from_noise_to_output():
    states = curved_trajectories()
    x, s, v = Reflow(grid_share=0.5).pairs(states, SIGMAS, torch.Generator().manual_seed(3))
    noise, out = states[:, 0], states[:, -1]
    assert torch.equal(v, noise - out)
    assert torch.allclose(x, (1 - s.view(-1, 1, 1)) * out + s.view(-1, 1, 1) * noise, atol=1e-6)
    on_grid = torch.isin(s, SIGMAS[:-1])
    assert 0 < int(on_grid.sum()) < len(s) and bool((s > 0).all()) and bool((s <= 1).all())


def test_on_a_straight_trajectory_the_two_methods_agree():
    g = torch.Generator().manual_seed(4)
    noise, out = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    straight = (1 - SIGMAS.view(1, -1, 1)) * out[:, None] + SIGMAS.view(1, -1, 1) * noise[:, None]
    _, _, v_perflow = Perflow().pairs(straight, SIGMAS, torch.Generator().manual_seed(5))
    _, _, v_reflow = Reflow().pairs(straight, SIGMAS, torch.Generator().manual_seed(5))
    assert torch.allclose(v_perflow, noise - out, atol=1e-5) and torch.allclose(v_reflow, noise - out)


def test_pairs_follow_the_generator_only_and_refuse_mismatched_shapes():
    states = curved_trajectories()
    for cls in (Reflow, Perflow):
        a = cls().pairs(states, SIGMAS, torch.Generator().manual_seed(7))
        b = cls().pairs(states, SIGMAS, torch.Generator().manual_seed(7))
        assert all(torch.equal(p, q) for p, q in zip(a, b))
        with pytest.raises(ValueError, match=r"states must be \(B, N \+ 1, ...\)"):
            cls().pairs(states, SIGMAS[:3], torch.Generator())
