"""The library patches of the surfaces, on the record (docs/design.md): each test fails loudly when the library
changes under them."""

import subprocess
import sys

import pytest

import dynaccel
from dynaccel.hf_integration import diffusers_pipeline

ATTRS = ("enable_accel", "disable_accel", "accel_stats")
CLASSES = [
    pytest.param("diffusers.pipelines.pipeline_utils", "DiffusionPipeline", id="DiffusionPipeline"),
    pytest.param("transformers.modeling_utils", "PreTrainedModel", id="PreTrainedModel"),
]


@pytest.mark.slow  # a fresh interpreter per library
@pytest.mark.parametrize("module,cls", CLASSES)
def test_the_library_class_has_none_of_our_names_of_its_own(module, cls):
    # we only add attributes a class does not define; a library release that adds one of these names would
    # silently win over ours (attach skips it), so it must fail here first
    code = (
        f"import importlib; c = getattr(importlib.import_module({module!r}), {cls!r}); "
        f"print([a for a in {ATTRS!r} if hasattr(c, a)])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("module,cls", CLASSES)
def test_after_import_the_methods_are_ours(module, cls):
    import importlib

    klass = getattr(importlib.import_module(module), cls)
    assert klass.enable_accel is diffusers_pipeline._enable_accel
    assert klass.disable_accel is diffusers_pipeline._disable_accel
    assert klass.__dict__["accel_stats"].fget is diffusers_pipeline._accel_stats
    assert dynaccel.__name__ == "dynaccel"


def test_the_import_hook_waits_on_the_module_name_it_patches():
    # the post-import hook matches the exact module path; if the library moves the class, attaching never happens
    # and this fails instead of the methods going missing quietly
    import diffusers.pipelines.pipeline_utils as pu
    import transformers.modeling_utils as mu

    assert diffusers_pipeline._TARGET_MODULE == pu.__name__ and hasattr(pu, "DiffusionPipeline")
    from dynaccel.hf_integration import transformers_model

    assert transformers_model._TARGET_MODULE == mu.__name__ and hasattr(mu, "PreTrainedModel")
