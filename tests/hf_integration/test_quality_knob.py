"""The knob calibrate searches and the demo sweeps is the one the strategy's schema declares, whatever its name."""

from dataclasses import dataclass

from stub_strategy import stub_plugin

from dynaccel import StrategyConfig, option
from dynaccel.hf_integration import calibrate


@dataclass(frozen=True)
class KnobConfig(StrategyConfig):
    threshold: float = option(0.5, doc="a threshold that is not the knob", min=0.0, max=1.0)
    strength: float = option(0.2, doc="the knob", min=0.0, max=2.0, min_exclusive=True, knob=True)


def test_calibrate_and_the_demo_use_the_declared_knob(fresh_registry):
    fresh_registry.get_registry().add_plugin(stub_plugin("knob_test", "cache", KnobConfig), name="knob-plugin")
    grid = calibrate.threshold_grid("knob_test")
    assert grid == sorted(grid) and 0.0 < grid[0] and grid[-1] <= 2.0 and grid[-1] > 1.0  # strength's range
    try:
        from dynaccel.hf_integration import demo
    except ImportError:  # the demo extra is not installed
        return
    assert demo.sweep_field("knob_test").name == "strength"
    assert all(0.0 < v <= 2.0 for v in demo.sweep_values("knob_test"))


@dataclass(frozen=True)
class IntKnobConfig(StrategyConfig):
    every: int = option(2, doc="compute one step in this many", min=1, max=10, knob=True)


def test_an_int_knob_is_searched_and_swept_over_whole_values(fresh_registry):
    fresh_registry.get_registry().add_plugin(stub_plugin("int_knob_test", "cache", IntKnobConfig), name="int-plugin")
    grid = calibrate.threshold_grid("int_knob_test")
    assert grid == sorted(set(grid)) and grid[0] == 1 and grid[-1] == 10 and all(type(v) is int for v in grid)
    try:
        from dynaccel.hf_integration import demo
    except ImportError:  # the demo extra is not installed
        return
    values = demo.sweep_values("int_knob_test")
    assert values == sorted(set(values)) and len(values) > 2 and all(type(v) is int and 1 <= v <= 10 for v in values)
