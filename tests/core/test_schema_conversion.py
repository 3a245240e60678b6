"""One conversion for every surface: CLI text, widget values, preset JSON all become typed options through
``StrategyConfig.parse_options`` / ``coerce``; the quality knob is read from the schema."""

from dataclasses import dataclass
from typing import ClassVar

import pytest

import dynaccel
from dynaccel.core.config import StrategyConfig, option


@dataclass(frozen=True)
class Conf(StrategyConfig):
    quality: float = option(0.1, doc="the knob", min=0.0, max=1.0, knob=True)
    threshold: float = option(0.5, doc="not the knob here", min=0.0, max=1.0)
    count: int = option(2, doc="how many", min=1, max=10)
    on: bool = option(False, doc="flag")
    name: str = option("auto", doc="text")


@pytest.mark.parametrize("raw,expected", [
    pytest.param({"quality": "0.25", "count": "3", "on": "True", "name": "x"},
                 {"quality": 0.25, "count": 3, "on": True, "name": "x"}, id="cli-text"),
    pytest.param({"quality": 1, "count": 4.0, "on": False}, {"quality": 1.0, "count": 4, "on": False}, id="widgets"),
    pytest.param({"name": "", "count": None}, {"name": "auto", "count": 2}, id="blank-is-default"),
])
def test_surface_values_become_typed_options(raw, expected):
    assert Conf.parse_options("conf", raw) == expected
    assert {k: getattr(Conf.coerce("conf", raw), k) for k in expected} == expected


@pytest.mark.parametrize("raw,fragment", [
    ({"count": "2.5"}, "option 'count': got 2.5 (type float); accepted: int with 1 <= count <= 10"),
    ({"quality": "fast"}, "option 'quality': got 'fast' (type str)"),
    ({"quality": "2"}, "got 2.0 (above the maximum)"),
    ({"on": "maybe"}, "option 'on': got 'maybe' (type str)"),
    ({"qualty": "0.1"}, "unknown option 'qualty' for strategy 'conf'; accepted options: count, name, on, quality, threshold"),
])
def test_bad_surface_values_name_option_value_and_what_is_accepted(raw, fragment):
    with pytest.raises(dynaccel.ConfigError) as err:
        Conf.coerce("conf", raw)
    assert fragment in str(err.value)


def test_the_python_api_stays_strict():
    with pytest.raises(dynaccel.ConfigError, match="type str"):
        Conf.from_kwargs("conf", quality="0.2")
    with pytest.raises(dynaccel.ConfigError, match="type float"):
        Conf.from_kwargs("conf", count=3.0)


def test_the_quality_knob_is_declared_in_the_schema():
    assert Conf.quality_knob_field().name == "quality"

    @dataclass(frozen=True)
    class ByName(StrategyConfig):
        quality_knob: ClassVar[str] = "density"
        density: float = option(0.3, doc="share kept", min=0.0, max=1.0)

    assert ByName.quality_knob_field().name == "density"

    @dataclass(frozen=True)
    class Nothing(StrategyConfig):
        density: float = option(0.3, doc="share kept", min=0.0, max=1.0)

    assert Nothing.quality_knob_field() is None

    @dataclass(frozen=True)
    class Two(StrategyConfig):
        quality_knob: ClassVar[str] = "b"
        a: float = option(0.3, doc="a", knob=True)
        b: float = option(0.3, doc="b")

    with pytest.raises(TypeError, match="more than one quality knob"):
        Two.fields_info()


def test_the_builtin_cache_strategies_have_a_knob():
    from dynaccel.core.registry import get_registry

    reg = get_registry()
    for name in ("teacache", "fbcache", "magcache", "easycache", "taylorseer"):
        assert reg.strategy(name).Config.quality_knob_field().name == "threshold"
