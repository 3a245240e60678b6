"""Tiny π0 and π0.5 policies built from config (random weights) and their inputs, for the VLA family's tests."""

from __future__ import annotations

import torch

VOCAB = 32
IMAGE_TOKEN = VOCAB - 1
IMAGE_SIZE, PATCH = 32, 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2
TEXT = 6
CHUNK, ACTION_DIM, STATE_DIM = 6, 4, 8


def config(kind: str = "pi0", expert_layers: int = 2, steps: int = 10, prefix_layers: int = 2):
    import transformers

    gemma = dict(model_type="gemma", vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                 num_attention_heads=4, num_key_value_heads=1, head_dim=16)
    vision = dict(model_type="siglip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=64)
    vlm = dict(model_type="paligemma", vocab_size=VOCAB, image_token_index=IMAGE_TOKEN, projection_dim=64,
               hidden_size=64, text_config={**gemma, "num_hidden_layers": prefix_layers}, vision_config=vision)
    cls = transformers.PI0Config if kind == "pi0" else transformers.PI05Config
    return cls(vlm_config=vlm, dit_config={**gemma, "num_hidden_layers": expert_layers}, chunk_size=CHUNK,
               max_state_dim=STATE_DIM, max_action_dim=ACTION_DIM, num_inference_steps=steps)


def model(kind: str = "pi0", seed: int = 0, **kw):
    import transformers

    torch.manual_seed(seed)
    cls = transformers.PI0ForConditionalGeneration if kind == "pi0" else transformers.PI05ForConditionalGeneration
    policy = cls(config(kind, **kw)).eval()
    # a fresh model's zero-initialised parts (π0.5's adaptive-norm gates) make its expert layers identities:
    # perturb every weight so that each layer changes what it is given, as in a trained model
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return policy


def inputs(batch: int = 1, seed: int = 0, kind: str = "pi0", pixels: torch.Tensor | None = None) -> dict:
    """Model inputs: images, an instruction (right-padded), the state (π0 only) and fixed noise."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, IMAGE_TOKEN - 1, (batch, TEXT), generator=g)
    ids = torch.cat([torch.full((batch, IMAGE_TOKENS), IMAGE_TOKEN), text], 1)
    mask = torch.ones_like(ids)
    mask[:, -2:] = 0  # padding at the end of the instruction
    ids[:, -2:] = 0
    if pixels is None:
        pixels = torch.rand(batch, 1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) * 2 - 1
    out = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels,
           "pixel_attention_mask": torch.ones(batch, 1, dtype=torch.bool),
           "noise": torch.randn(batch, CHUNK, ACTION_DIM, generator=g)}
    if kind == "pi0":
        out["state"] = torch.randn(batch, STATE_DIM, generator=g)
    return out


def sample(policy, inp: dict) -> torch.Tensor:
    with torch.no_grad():
        return policy.sample_actions(**{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()})


def save_random_tiny_pi0(folder) -> str:
    """A tiny-pi0-format folder (zoo architecture, word tokenizer, proprio statistics) with untrained weights: it
    runs the robot-task bench end to end, and succeeds on about nothing."""
    import numpy as np

    from dynaccel.zoo import train_tiny_pi0 as tp

    torch.manual_seed(0)
    vocab = tp.vocabulary()
    processor = tp.TinyPi0Processor(tp.build_tokenizer(vocab), np.zeros(4, np.float32), np.ones(4, np.float32))
    tp.save(tp.build_model(len(vocab)).eval(), processor, str(folder), {"note": "untrained, for tests"})
    return str(folder)
