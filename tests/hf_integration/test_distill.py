"""dynaccel distill on a local Wan pipeline folder (tiny, random weights, built from config): the refusals, the
teacher's trajectories against the stock pipeline, the student folder, bit-identical retraining and resuming."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import save_tiny_wan_folder

from dynaccel.core.cli import main
from dynaccel.hf_integration import bench
from dynaccel.hf_integration import distill as d

CALL = {"height": 16, "width": 16, "num_frames": 5, "num_inference_steps": 6, "guidance_scale": 4.0,
        "max_sequence_length": 8}
PROMPTS = ["a red circle moving left fast", "a blue square moving up slow", "a green triangle moving right slow"]
SMALL = ["--samples", "6", "--train-steps", "4", "--batch", "3", "--steps", "2"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_tiny_wan_folder(tmp_path_factory.mktemp("teacher") / "tiny-wan-random", CALL)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def _distill(teacher, prompts, out, *extra):
    main(["distill", "--model", str(teacher), "--method", "perflow", "--prompts-file", str(prompts),
          "--out", str(out), *SMALL, *extra])


def _weights(folder):
    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("args,message", [
    (["--method", "nope"], "unknown distillation method 'nope'; available: perflow, reflow"),
    (["--method", "reflow", "--steps", "0"], "--steps must be a whole number >= 1"),
    (["--method", "reflow", "--steps", "6"], "--steps 6 is not fewer than the teacher's own 6"),
    (["--method", "reflow", "--set", "grid_share=2"], "grid_share"),
    (["--method", "reflow", "--samples", "0"], "--samples must be a whole number >= 1"),
    (["--method", "reflow", "--resume"], "holds no interrupted run"),
])
def test_bad_input_exits_2_naming_the_value_and_writes_nothing(teacher, prompts, tmp_path, capsys, args, message):
    argv = ["distill", "--model", str(teacher), "--prompts-file", str(prompts), "--out", str(tmp_path / "out"),
            "--steps", "2", *args]
    # later options win in click: the case's own --steps replaces the default one above
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_teacher_that_is_no_pipeline_folder_and_a_non_empty_output_are_refused(teacher, prompts, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--model", str(tmp_path / "missing"), "--method", "perflow", "--steps", "2",
              "--out", str(tmp_path / "out")])
    assert "teacher: model" in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):  # a folder with no prompts of its own needs --prompts-file
        main(["distill", "--model", str(teacher), "--method", "perflow", "--steps", "2", "--out", str(tmp_path / "o")])
    assert "give --prompts-file" in capsys.readouterr().err
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        _distill(teacher, prompts, out)
    assert "is not empty (notes.txt); pass --force" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"  # untouched


def test_the_teachers_trajectory_is_the_stock_pipelines_sampling(teacher):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(str(teacher)).to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    flow = d.FlowPipeline(pipe, CALL)
    noise = flow.noise(2, torch.Generator().manual_seed(3))
    cond, empty = flow.embeddings(PROMPTS[:2])
    own = flow.sigmas(6)
    states = flow.trajectories(noise, cond, empty, own)  # the student's levels = the teacher's own: all kept
    assert states.shape == (2, 7, *noise.shape[1:]) and torch.equal(states[:, 0], noise)
    ref = pipe(PROMPTS[:2], latents=noise.clone(), output_type="latent", **{**CALL, "num_inference_steps": 6}).frames
    assert torch.allclose(states[:, -1], ref, atol=1e-4), (states[:, -1] - ref).abs().max()
    # a 2-step student's levels lie on the teacher's path: the union grid adds its levels to the teacher's 6
    two = flow.sigmas(2)
    sub = flow.trajectories(noise, cond, empty, two)
    assert sub.shape[1] == 3 and torch.equal(sub[:, 0], noise)
    assert (sub[:, -1] - ref).abs().max() < 0.2 * ref.abs().max()  # the same ODE, a slightly finer grid


def test_the_student_folder_loads_with_the_stock_class_and_says_how_to_run_it(teacher, prompts, tmp_path, capsys):
    from diffusers import WanPipeline

    out = tmp_path / "student"
    _distill(teacher, prompts, out)
    said = capsys.readouterr()
    assert "training finished" in said.out and "teacher trajectories" in said.err  # the progress bar
    pipe = WanPipeline.from_pretrained(str(out))
    assert type(pipe.transformer).__name__ == "WanTransformer3DModel"
    generation = json.loads((out / "dynaccel_generation.json").read_text())
    assert generation == {**CALL, "num_inference_steps": 2, "guidance_scale": 1.0}
    assert bench.generation_defaults(str(out), out) == generation  # what bench and calibrate run it with
    info = json.loads((out / "distill_info.json").read_text())
    assert info["settings"]["method"] == "perflow" and info["settings"]["prompts"] == PROMPTS
    assert info["training"]["steps_done"] == 4 and info["training"]["finished"]
    assert "--method perflow" in info["command"] and "--steps 2" in info["command"] and "--model" in info["command"]
    card = (out / "README.md").read_text()
    assert "2 steps, perflow" in card and "PeRFlow, arXiv 2405.07510" in card and str(teacher) in card
    assert not (out / d.WORK_DIR).exists()  # the work folder goes once the student is saved
    student, original = _weights(out), _weights(teacher)
    assert student.keys() == original.keys() and any(not torch.equal(student[k], original[k]) for k in student)
    frames = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), output_type="np", **generation).frames
    assert frames.shape == (1, 5, 16, 16, 3)
    # --force replaces the content
    _distill(teacher, prompts, out, "--force", "--method", "reflow")
    assert json.loads((out / "distill_info.json").read_text())["settings"]["method"] == "reflow"


def test_retraining_is_bit_identical_and_resuming_continues_exactly(teacher, prompts, tmp_path, capsys):
    _distill(teacher, prompts, tmp_path / "a")
    _distill(teacher, prompts, tmp_path / "b")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # stopped after 2 of 4 steps: a usable student is saved, the work folder stays; --resume finishes the run
    _distill(teacher, prompts, tmp_path / "c", "--stop-after", "2")
    assert "stopped after 2 of 4 steps" in capsys.readouterr().out
    assert (tmp_path / "c" / d.WORK_DIR / "checkpoint.pt").is_file()
    half = _weights(tmp_path / "c")
    assert any(not torch.equal(half[k], a[k]) for k in a)
    with pytest.raises(SystemExit):  # other settings than the interrupted run's are refused
        _distill(teacher, prompts, tmp_path / "c", "--resume", "--seed", "1")
    assert "had other settings (seed)" in capsys.readouterr().err
    _distill(teacher, prompts, tmp_path / "c", "--resume")
    c = _weights(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert not (tmp_path / "c" / d.WORK_DIR).exists()


def test_bench_runs_a_student_against_its_teachers_full_compute(teacher, prompts, tmp_path):
    out = tmp_path / "student"
    _distill(teacher, prompts, out)
    settings = [bench.parse_setting(f"student:{out}"), bench.parse_setting(f"student:{out}+fbcache:threshold=0.5"),
                bench.parse_setting("steps:2")]
    assert settings[1].label == f"student:{out}+fbcache:threshold=0.5" and settings[1].strategy == "fbcache"

    def brightness(clip, prompt):  # a scorer of the zoo.adherence shape: criterion -> met
        return {"bright": bool(clip.mean() > 0.3), "long": len(prompt) > 28}

    pipe = bench.load_pipeline(teacher)
    rows = bench.run_bench(pipe, settings, PROMPTS[:2], [0], CALL, repeats=1, progress=False, adherence=brightness)
    by = {r.label: r for r in rows}
    plain, cached = by[f"student:{out}"], by[f"student:{out}+fbcache:threshold=0.5"]
    # 2 student steps without CFG: 2 passes, against the teacher's 6 steps x 2 branches
    assert plain.kind == "student" and plain.computed == "2/12" and 0 < plain.psnr_db < float("inf")
    assert "skipped" in cached.stats and cached.computed.endswith("/12")
    assert pipe.transformer.__class__.__name__ == "WanTransformer3DModel" and not pipe.accel_stats  # teacher untouched
    for r in rows:
        assert set(r.adherence) == {"bright", "long"} and r.adherence["long"] == 0.5  # one prompt of two is long
    table = bench.format_table(rows)
    assert table.splitlines()[0].split()[-2:] == ["bright", "long"] and "50%" in table


@pytest.mark.parametrize("text,message", [
    ("student:", "name the student"),
    ("student:/no/such/folder", "not a zoo model"),
    ("student:tiny-wan+diffusers:fbcache", "a dynaccel strategy or preset to run on the student"),
])
def test_bad_student_settings_are_refused_naming_the_problem(text, message):
    import dynaccel

    with pytest.raises(dynaccel.DynaccelError, match=message):
        bench.parse_setting(text)



def test_a_flux_teacher_samples_like_the_stock_pipeline_and_distills(tmp_path):
    """The zoo's tiny-flux (FluxPipeline: packed latents, pooled text, no CFG): the trajectory ends where the stock
    pipeline's sampling ends, and a short run writes a student the stock class loads."""
    from diffusers import FluxPipeline

    import dynaccel.zoo as zoo

    call = zoo.generation_defaults("tiny-flux")
    pipe = FluxPipeline.from_pretrained(zoo.path("tiny-flux"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    flow = d.FlowPipeline(pipe, {**call, "num_inference_steps": 5})
    noise = flow.noise(2, torch.Generator().manual_seed(1))
    cond, empty = flow.embeddings(["a large red circle on the left", "a small blue square on the top"])
    own = flow.sigmas(5)
    states = flow.trajectories(noise, cond, empty, own)
    ref = pipe(["a large red circle on the left", "a small blue square on the top"], latents=noise.clone(),
               output_type="latent", **{**call, "num_inference_steps": 5}).images
    assert states.shape[1] == 6 and torch.allclose(states[:, -1], ref, atol=1e-4), (states[:, -1] - ref).abs().max()
    prompts = tmp_path / "p.txt"
    prompts.write_text("a large red circle on the left\na small green triangle on the right\n")
    out = tmp_path / "flux-student"
    main(["distill", "--model", "tiny-flux", "--method", "reflow", "--steps", "2", "--samples", "2",
          "--train-steps", "2", "--batch", "2", "--prompts-file", str(prompts), "--out", str(out)])
    student = FluxPipeline.from_pretrained(str(out), local_files_only=True)
    generation = json.loads((out / "dynaccel_generation.json").read_text())
    assert generation["num_inference_steps"] == 2
    image = student("a large red circle on the left", generator=torch.Generator().manual_seed(0), output_type="np",
                    **generation).images
    assert image.shape == (1, call["height"], call["width"], 3)
