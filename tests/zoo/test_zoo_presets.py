"""The built-in presets of the zoo models reproduce what their provenance records: on the held-out prompts they
were calibrated on, each computes the recorded number of passes and meets the recorded quality target.

On the machine that calibrated them the numbers are equal; another CPU may round differently, so the test allows a
decision near a threshold to flip (one pass or block call either way) and 0.5 dB of drift."""

import pytest

import dynaccel
from dynaccel.core.registry import get_registry

pytest.importorskip("diffusers")

from dynaccel.hf_integration import bench

CACHE = [s for s in dynaccel.list_strategies() if dynaccel.strategy_info(s)["family"] == "cache"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-wan", "tiny-flux"])
def test_every_cache_strategy_has_a_preset_that_reproduces_its_provenance(model):
    presets = get_registry().presets
    names = [f"{model}-{s}" for s in CACHE]
    assert [n for n in names if n not in presets] == []
    # and the extra quality targets (e.g. tiny-wan-magcache-40db)
    names += sorted(n for n, p in presets.items() if p.model_id == model and p.strategy in CACHE and n not in names)
    prov = {n: presets[n].provenance for n in names}
    pipe = bench.load_pipeline(bench.resolve_model(model))
    call = {**bench.generation_defaults(model, bench.resolve_model(model))}
    assert {p["steps"] for p in prov.values()} == {call["num_inference_steps"]}
    # each preset on the prompts and seeds its own search ran (a ladder searched on other prompts than the first
    # presets): one run per group
    groups: dict = {}
    for n in names:
        groups.setdefault((tuple(prov[n]["heldout_prompts"]), tuple(prov[n]["seeds"])), []).append(n)
    measured_rows = {}
    for (prompts, seeds), group in groups.items():
        settings = [bench.parse_setting(f"preset:{n}") for n in group]
        rows = bench.run_bench(pipe, settings, list(prompts), list(seeds), call, repeats=1, progress=False)
        measured_rows.update(zip(group, rows[1:]))
    for name in names:
        row = measured_rows[name]
        measured = prov[name]["measured"]
        got, want = _count(row.computed), _count(measured["computed"])
        assert abs(got[0] - want[0]) <= 1 and got[1] == want[1], (name, row.computed, measured["computed"])
        assert abs(row.psnr_db - measured["psnr_db"]) <= 0.5, (name, row.psnr_db, measured["psnr_db"])
        assert row.psnr_db >= prov[name]["min_psnr_db"] - 0.5, (name, row.psnr_db)


def _count(text: str) -> tuple[float, int]:
    """'19/60', '19.5/60' or '140/240 blk' -> (19.0, 60): computed per generation (mean), out of all."""
    done, total = text.split()[0].split("/")
    return float(done), int(total)
