"""The zoo's tiny-wan-4step: a 4-step student of tiny-wan written by `dynaccel distill` (perflow). It loads offline
with the stock WanPipeline, says how to run it, keeps to its teacher's prompts on prompts it was never distilled on,
and its distillation retrains bit-identically from the seed."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import dynaccel.zoo as zoo  # noqa: E402
from dynaccel.zoo import synthetic  # noqa: E402

pytest.importorskip("diffusers")
NAME = "tiny-wan-4step"


def test_it_loads_with_the_stock_class_and_carries_its_settings():
    from diffusers import WanPipeline

    folder = zoo.path(NAME)
    pipe = WanPipeline.from_pretrained(folder)
    assert type(pipe.transformer).__name__ == "WanTransformer3DModel"
    teacher = zoo.generation_defaults("tiny-wan")
    assert zoo.generation_defaults(NAME) == {**teacher, "num_inference_steps": 4, "guidance_scale": 1.0}
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs
               if f.endswith(".safetensors"))
    assert size <= 15 * 2**20
    info = json.loads(open(os.path.join(folder, "distill_info.json")).read())
    fit, heldout = zoo.distill_prompts("tiny-wan")
    assert info["settings"]["prompts"] == fit and info["heldout_prompts"] == heldout
    assert not set(fit) & set(heldout) and set(zoo.default_prompts("tiny-wan")) <= set(heldout)
    # the student differs from its teacher only in the transformer: the other components are the teacher's files
    for sub in ("vae", "text_encoder", "tokenizer", "scheduler"):
        for f in os.listdir(os.path.join(zoo.path("tiny-wan"), sub)):
            with open(os.path.join(zoo.path("tiny-wan"), sub, f), "rb") as x, open(os.path.join(folder, sub, f),
                                                                                  "rb") as y:
                assert x.read() == y.read(), (sub, f)


@pytest.mark.slow
def test_held_out_prompts_keep_their_colour_and_direction():
    from diffusers import WanPipeline

    torch.set_num_threads(1)
    _, heldout = zoo.distill_prompts("tiny-wan")
    pipe = WanPipeline.from_pretrained(zoo.path(NAME))
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(heldout, generator=torch.Generator().manual_seed(0), output_type="np",
                  **zoo.generation_defaults(NAME)).frames
    read = [synthetic.analyse_clip(clip) for clip in frames]
    colour = sum(a["colour"] == p.split()[1] for a, p in zip(read, heldout))
    direction = sum(a["direction"] == p.split()[4] for a, p in zip(read, heldout))
    assert colour >= 14 and direction >= 14, (colour, direction)  # of 16


@pytest.mark.slow
def test_its_distillation_retrains_bit_identically_over_a_few_steps(tmp_path):
    from dynaccel.hf_integration import distill

    torch.set_num_threads(1)
    kw = dict(samples=2, train_steps=3, batch=2, lr=2e-4, progress=False, log=lambda m: None)
    distill.run("tiny-wan", "perflow", 4, tmp_path / "a", **kw)
    distill.run("tiny-wan", "perflow", 4, tmp_path / "b", **kw)
    distill.run("tiny-wan", "perflow", 4, tmp_path / "c", seed=1, **kw)

    def weights(p):
        return load_file(str(p / "transformer" / "diffusion_pytorch_model.safetensors"))

    a, b, c = weights(tmp_path / "a"), weights(tmp_path / "b"), weights(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a) and any(not torch.equal(a[k], c[k]) for k in a)
