"""The dynaccel command line."""

import json

import pytest

from dynaccel.core.cli import main


def run(capsys, *args, code=0):
    if code:
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        assert exc.value.code == code
    else:
        main(list(args))
    return capsys.readouterr()


def test_plugins_lists_builtins_with_strategies_family_distribution_version(capsys):
    out = run(capsys, "plugins").out
    header, _, *rows = out.splitlines()
    assert header.split()[:2] == ["plugin", "strategies"]
    cache = next(r for r in rows if r.startswith("dynaccel.cache "))
    for name in ("teacache (cache)", "fbcache (cache)", "easycache (cache)", "magcache (cache)"):
        assert name in cache
    assert " dynaccel " in cache
    data = json.loads(run(capsys, "plugins", "--json").out)
    entry = next(e for e in data if e["plugin"] == "dynaccel.cache")
    assert {"name": "teacache", "family": "cache"} in entry["strategies"] and entry["version"]


def test_strategies_lists_one_line_each(capsys):
    rows = run(capsys, "strategies").out.splitlines()[2:]
    assert [r.split()[0] for r in rows if r.split()[0] in {"easycache", "fbcache", "magcache", "teacache"}] == [
        "easycache", "fbcache", "magcache", "teacache"]


def test_strategy_detail_shows_type_default_range_and_doc(capsys):
    out = run(capsys, "strategies", "fbcache").out
    line = next(ln for ln in out.splitlines() if ln.startswith("max_consecutive"))
    assert line.split()[:4] == ["max_consecutive", "int", "0", "[0,"]
    assert "most passes in a row" in line
    data = json.loads(run(capsys, "strategies", "fbcache", "--json").out)
    threshold = next(f for f in data["fields"] if f["name"] == "threshold")
    assert threshold == {"name": "threshold", "type": "float", "default": 0.08, "min": 0.0, "max": 2.0,
                         "step": 0.01, "choices": None, "doc": threshold["doc"], "min_exclusive": False,
                         "max_exclusive": False, "knob": True}


def test_unknown_strategy_exits_2_and_lists_the_available_ones(capsys):
    err = run(capsys, "strategies", "teachache", code=2).err
    import dynaccel

    assert err.strip() == f"Error: unknown strategy 'teachache'; available: {', '.join(dynaccel.list_strategies())}"
    listed = err.strip().split("available: ")[1].split(", ")
    assert listed == sorted(listed)
    assert {"adacache", "bwcache", "easycache", "fbcache", "magcache", "smoothcache", "taylorseer", "teacache"} <= set(listed)


def test_presets_show_provenance(capsys):
    out = run(capsys, "presets").out
    line = next(ln for ln in out.splitlines() if ln.startswith("teacache-wan2.1-t2v-1.3b "))
    assert '{"threshold": 0.08}' in line and "TeaCache README" in line


def test_quickstart_prints_a_row_per_strategy(capsys):
    out = run(capsys, "quickstart", "--steps", "6", "--repeats", "1").out
    rows = {ln.split()[0] for ln in out.splitlines()[4:] if ln.strip()}
    assert {"full", "teacache", "fbcache", "easycache", "magcache"} <= rows


def test_strategy_detail_shows_an_exclusive_bound_as_such(capsys):
    # fastv's keep_ratio accepts (0, 1]: 0 would keep nothing
    line = next(ln for ln in run(capsys, "strategies", "fastv").out.splitlines() if ln.startswith("keep_ratio"))
    assert line.split()[3:5] == ["(0.0,", "1.0]"]
    from dynaccel.core.errors import ConfigError
    from dynaccel.core.registry import get_registry

    with pytest.raises(ConfigError, match="exclusive minimum"):
        get_registry().strategy("fastv").Config.from_kwargs("fastv", keep_ratio=0.0)
