"""Test-only ComfyUI nodes for dynaccel's integration tests (loaded into a throwaway ComfyUI server).

- ``DynaccelTest_RandomConditioning``: random text features of a given width (no multi-GB text encoder needed),
  optionally with an all-ones attention mask (LTXV needs one) and a random pooled vector (Flux needs one).
- ``DynaccelTest_TinyFluxLoader``: loads ``tiny_flux.safetensors`` (see ``make_tiny_comfy_models.py``) from the
  ``diffusion_models`` folders as a ComfyUI Flux MODEL. ComfyUI's detection fixes Flux's width at 3072, so this node
  takes the unet config from the file's metadata and then does what ``comfy.sd.load_diffusion_model_state_dict``
  does after detection: ``supported_models.Flux(config)``, ``get_model``, ``load_model_weights``, ``ModelPatcher``.
- ``DynaccelTest_CountBlocks``: MODEL -> MODEL; counts the diffusion model's block forward calls (torch forward
  pre-hooks on the block modules, test code only).
- ``DynaccelTest_Record``: LATENT in; writes the samples (safetensors) and the block-call count since the last
  record (JSON) to ``$DYNACCEL_TEST_OUT/<name>.*``.
"""

import json
import os

import torch
from comfy_api.latest import ComfyExtension, io
from safetensors.torch import save_file

_COUNT = {"blocks": 0}


def _count(_module, _args):
    _COUNT["blocks"] += 1


class RandomConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DynaccelTest_RandomConditioning",
            category="dynaccel/test",
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=2**31),
                io.Int.Input("tokens", default=8, min=1, max=512),
                io.Int.Input("width", default=4096, min=1, max=8192),
                io.Boolean.Input("attention_mask", default=False),
                io.Int.Input("pooled", default=0, min=0, max=8192, optional=True, tooltip="pooled vector width (0: none)"),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, seed, tokens, width, attention_mask, pooled=0):
        g = torch.Generator().manual_seed(seed)
        extra = {"attention_mask": torch.ones(1, tokens, dtype=torch.long)} if attention_mask else {}  # as LTXV's T5 gives
        text = torch.randn(1, tokens, width, generator=g)
        if pooled:
            extra["pooled_output"] = torch.randn(1, pooled, generator=g)  # as CLIP-L gives Flux
        return io.NodeOutput([[text, extra]])


class TinyFluxLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DynaccelTest_TinyFluxLoader",
            category="dynaccel/test",
            inputs=[io.String.Input("unet_name", default="tiny_flux.safetensors")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, unet_name):
        import comfy.model_management as mm
        import comfy.model_patcher
        import comfy.supported_models
        import comfy.utils
        import folder_paths

        sd, metadata = comfy.utils.load_torch_file(
            folder_paths.get_full_path_or_raise("diffusion_models", unet_name), return_metadata=True
        )
        model_config = comfy.supported_models.Flux(json.loads(metadata["dynaccel_unet_config"]))
        model_config.set_inference_dtype(torch.float32, None)
        model = model_config.get_model(sd, "")
        model.load_model_weights(sd, "")
        return io.NodeOutput(
            comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        )


class CountBlocks(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DynaccelTest_CountBlocks",
            category="dynaccel/test",
            inputs=[io.Model.Input("model")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model):
        dm = model.model.diffusion_model
        for attr in ("blocks", "double_blocks", "single_blocks", "transformer_blocks"):
            for block in getattr(dm, attr, None) or []:
                if not getattr(block, "_dynaccel_test_counted", False):
                    block.register_forward_pre_hook(_count)
                    block._dynaccel_test_counted = True
        return io.NodeOutput(model)


class Record(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DynaccelTest_Record",
            category="dynaccel/test",
            inputs=[io.Latent.Input("latent"), io.String.Input("name", default="run")],
            outputs=[],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, latent, name):
        out = os.environ["DYNACCEL_TEST_OUT"]
        save_file({"samples": latent["samples"].contiguous().float().cpu()}, os.path.join(out, f"{name}.safetensors"))
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump({"block_calls": _COUNT["blocks"]}, f)
        _COUNT["blocks"] = 0
        return io.NodeOutput()


class TestExtension(ComfyExtension):
    async def get_node_list(self):
        return [RandomConditioning, TinyFluxLoader, CountBlocks, Record]


async def comfy_entrypoint():
    return TestExtension()
