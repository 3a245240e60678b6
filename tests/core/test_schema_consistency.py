"""The schema agrees with itself: every bound and default a field declares is a value its own validation accepts,
or the bound is declared exclusive, refused, and the nearest value the surfaces offer is accepted."""

from dataclasses import dataclass
from itertools import chain

import pytest

import dynaccel
from dynaccel.core.config import FieldSpec, StrategyConfig, option
from dynaccel.core.registry import get_registry

_REG = get_registry()
_FIELDS = [(name, spec) for name in sorted(_REG.strategies) for spec in _REG.strategy(name).Config.fields_info()]
_CASES = [pytest.param(s, f, id=f"{s}-{f.name}") for s, f in _FIELDS]


def _accepted(cls: type[StrategyConfig], name: str, value) -> bool:
    """Whether ``name=value`` passes validation with the other fields at their defaults, or at one of their
    declared values (cross-field rules like ``start <= end`` may need a partner moved)."""
    others = [(s.name, v) for s in cls.fields_info() if s.name != name
              for v in chain(cls.field_spec(s.name).offered_range(), [s.default]) if v is not None]
    for extra in [{}] + [{k: v} for k, v in others]:
        try:
            cls(**{name: value, **extra})
            return True
        except dynaccel.ConfigError:
            continue
    return False


def _as_type(spec: FieldSpec, value):
    return int(value) if spec.type == "int" else value


@pytest.mark.parametrize("strategy,spec", _CASES)
def test_every_declared_bound_and_default_passes_its_own_validation(strategy, spec):
    cls = _REG.strategy(strategy).Config
    lo, hi = spec.offered_range()
    for label, value in (("default", spec.default), ("offered min", lo), ("offered max", hi)):
        if value is not None:
            assert _accepted(cls, spec.name, _as_type(spec, value)), f"{strategy}.{spec.name}: {label} {value!r} is refused"
    for bound, exclusive in ((spec.min, spec.min_exclusive), (spec.max, spec.max_exclusive)):
        if bound is not None and exclusive:
            with pytest.raises(dynaccel.ConfigError, match="exclusive"):
                cls(**{spec.name: _as_type(spec, bound)})


@dataclass(frozen=True)
class Ratio(StrategyConfig):
    keep: float = option(0.5, doc="share kept", min=0.0, min_exclusive=True, max=1.0, step=0.05)
    level: int = option(3, doc="a level", min=0, max=8, max_exclusive=True)


def test_an_exclusive_bound_is_refused_and_stated_as_such():
    with pytest.raises(dynaccel.ConfigError) as err:
        Ratio.from_kwargs("r", keep=0.0)
    assert "option 'keep': got 0.0 (at the exclusive minimum); accepted: float with 0.0 < keep <= 1.0" in str(err.value)
    with pytest.raises(dynaccel.ConfigError, match="int with 0 <= level < 8"):
        Ratio.from_kwargs("r", level=8)
    assert Ratio.from_kwargs("r", keep=1e-9, level=7).keep == 1e-9


def test_surfaces_offer_one_step_inside_an_exclusive_bound():
    keep, level = Ratio.fields_info()
    assert keep.offered_range() == (0.05, 1.0)
    assert keep.offered_range(0.01) == (0.01, 1.0)
    assert level.offered_range() == (0, 7)
    assert keep.to_dict()["min_exclusive"] is True


def test_an_exclusive_bound_needs_the_bound():
    with pytest.raises(TypeError, match="min_exclusive"):
        option(0.5, doc="x", min_exclusive=True)
