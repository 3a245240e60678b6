"""Config schema: one declaration gives validation, error messages and the field listing."""

from dataclasses import dataclass

import pytest

import dynaccel
from dynaccel.core.config import StrategyConfig, option


@dataclass(frozen=True)
class DemoConfig(StrategyConfig):
    threshold: float = option(0.1, doc="how much change to tolerate", min=0.0, max=1.0, step=0.01)
    steps: int = option(2, doc="how many", min=1, max=10)
    mode: str = option("a", doc="which", choices=("a", "b"))
    flag: bool = option(False, doc="on or off")


def test_fields_info_carries_type_default_range_and_doc():
    fields = {f.name: f for f in DemoConfig.fields_info()}
    assert fields["threshold"].type == "float" and fields["threshold"].default == 0.1
    assert (fields["threshold"].min, fields["threshold"].max, fields["threshold"].step) == (0.0, 1.0, 0.01)
    assert fields["mode"].choices == ("a", "b")
    assert fields["flag"].doc == "on or off"


def test_int_is_accepted_for_float_and_stored_as_float():
    cfg = DemoConfig.from_kwargs("demo", threshold=1)
    assert cfg.threshold == 1.0 and isinstance(cfg.threshold, float)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        pytest.param({"threshold": 1.5}, "option 'threshold': got 1.5 (above the maximum); accepted: float with 0.0 <= threshold <= 1.0", id="above-max"),
        pytest.param({"threshold": -0.1}, "got -0.1 (below the minimum)", id="below-min"),
        pytest.param({"threshold": "0.2"}, "option 'threshold': got '0.2' (type str)", id="str-for-float"),
        pytest.param({"threshold": True}, "got True (type bool)", id="bool-for-float"),
        pytest.param({"threshold": float("nan")}, "NaN", id="nan"),
        pytest.param({"steps": 2.5}, "option 'steps': got 2.5 (type float); accepted: int with 1 <= steps <= 10", id="float-for-int"),
        pytest.param({"mode": "c"}, "option 'mode': got 'c' (not a valid choice); accepted: one of 'a', 'b'", id="bad-choice"),
        pytest.param({"flag": 1}, "option 'flag': got 1 (type int)", id="int-for-bool"),
        pytest.param({"thresold": 0.2}, "unknown option 'thresold' for strategy 'demo'; accepted options: flag, mode, steps, threshold", id="unknown"),
    ],
)
def test_bad_values_name_option_value_and_what_is_accepted(kwargs, fragment):
    with pytest.raises(dynaccel.ConfigError) as err:
        DemoConfig.from_kwargs("demo", **kwargs)
    assert fragment in str(err.value)


def test_direct_construction_validates_too():
    with pytest.raises(dynaccel.ConfigError):
        DemoConfig(threshold=2.0)


def test_field_without_doc_is_rejected():
    @dataclass(frozen=True)
    class Bad(StrategyConfig):
        x: float = 1.0

    with pytest.raises(TypeError, match="option"):
        Bad.fields_info()


def test_cache_start_must_not_exceed_end():
    from dynaccel.plugins.cache.teacache import TeaCacheConfig

    with pytest.raises(dynaccel.ConfigError, match="start <= end"):
        TeaCacheConfig.from_kwargs("teacache", start=0.8, end=0.5)


@pytest.mark.parametrize(
    "name", ["teacache", "fbcache", "easycache", "magcache", "adacache", "bwcache", "smoothcache", "taylorseer", "seacache"]
)
def test_every_builtin_field_has_doc_and_threshold_zero_is_allowed(name):
    info = dynaccel.strategy_info(name)
    fields = {f["name"]: f for f in info["fields"]}
    assert {"threshold", "start", "end"} <= set(fields)
    assert fields["threshold"]["min"] == 0.0
    assert all(f["doc"] for f in info["fields"])
    assert info["paper"] and info["summary"]
