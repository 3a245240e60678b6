"""learned_cache: a small learned predictor of the skipped residual (in the spirit of DisCa, "Accelerating Video
Diffusion Transformers with Distillation-Compatible Learnable Feature Caching", arXiv 2602.05449, which replaces
the hand-set reuse rule with a lightweight learned predictor and reports 11.8x near-lossless on HunyuanVideo).

What it does: at a skipped step the block stack's residual is *predicted* instead of reused as it was. The
prediction is a per-channel mix of the last ``history`` computed residuals whose weights a small MLP reads from
the step fraction and the gaps to those computed steps: ``r(t) ~ sum_k w_k(t, gaps) * r(t_k)`` (plain reuse is
``w = (1, 0, ...)``; TaylorSeer's linear forecast is one fixed choice of ``w``; the learned one is fitted to the
model). Both CFG branches use the same weights on purpose: guidance amplifies the *difference* of the two branches'
errors (4x at CFG 4), and a predictor that knew the branch made less correlated errors and lost to plain reuse in
closed loop on tiny-wan (the same weights: +1.4 dB over reuse on the same schedule). A second head predicts the prediction's relative L1 error from the same inputs, and the
decision uses it: a pass is skipped while the errors predicted since the last computed pass, summed, stay below
``threshold`` (times a runtime correction: at each computed pass the prediction that *would* have been used is
compared with the real residual, per sample, and the ratio of real to predicted error scales later predictions),
for at most ``max_skip`` passes in a row. So the threshold is in units of relative error, not a heuristic's signal.

Training (``dynaccel calibrate --strategy learned_cache --learn``, minutes on a CPU for the zoo models): full
compute on the fit prompts records every pass's residual (a fixed random subset of at most ``max_tokens`` tokens:
the predictor is per-channel, so tokens are samples and a large model's records stay small), then every
(step, history gaps) combination up to ``max_gap`` steps apart trains both heads (Adam, relative L1 loss). The
predictor is saved as safetensors (``predictor_path``; metadata: format, sizes, the model class and parameter
count it was trained on), under 4 % of the transformer's parameters for the zoo models; loading checks the format,
every tensor's shape against the metadata, and the channel count and model class against the model.

Batch: errors are per sample; a pass is predicted only when every sample is below the threshold. CFG: each branch
keeps its own history and correction; with ``cfg_sync`` the second branch follows the first's decision.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...core.config import option
from ...core.errors import ConfigError, DynaccelError
from ...core.files import FileReadError, atomic_write, read_bounded
from .engine import CacheConfig, CachePolicy, CacheStrategy, Pass, all_below

FORMAT = "dynaccel.learned_cache.predictor/1"
MAX_PREDICTOR_BYTES = 64 * 1024 * 1024
FREQS = 4  # Fourier features of the step fraction: sin/cos(pi 2^j t), j < FREQS


@dataclass(frozen=True)
class LearnedCacheConfig(CacheConfig):
    threshold: float = option(
        0.3,
        doc="skip while the predicted relative errors since the last computed pass, summed, stay below this; "
        "0 never skips (and records residuals for training)",
        min=0.0,
        max=5.0,
        step=0.01,
    )
    max_skip: int = option(3, doc="most passes in a row that may be predicted", min=1, max=50)
    predictor_path: str = option(
        "", doc="the trained predictor (safetensors, from dynaccel calibrate --learn); required unless threshold is 0"
    )

    def validate(self) -> None:
        super().validate()
        if self.predictor_path:
            load_predictor(self.predictor_path)  # refuse a bad file before anything is installed


class Predictor(torch.nn.Module):
    """The learned predictor: an MLP over (step fraction features, gaps) giving per-channel mixing weights
    of the last ``history`` computed residuals and the log of the prediction's relative L1 error."""

    def __init__(self, dim: int, history: int = 3, hidden: int = 64):
        super().__init__()
        self.dim, self.history, self.hidden = dim, history, hidden
        inputs = 2 * FREQS + 1 + history
        self.body = torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.SiLU(),
                                        torch.nn.Linear(hidden, hidden), torch.nn.SiLU())
        self.mix = torch.nn.Linear(hidden, history * dim)
        self.err = torch.nn.Linear(hidden, 1)
        with torch.no_grad():  # start as plain reuse: weight 1 on the newest residual, 0 on the others
            self.mix.weight.zero_()
            self.mix.bias.zero_()
            self.mix.bias[:dim] = 1.0

    @staticmethod
    def features(step: torch.Tensor, gaps: torch.Tensor, num_steps: torch.Tensor) -> torch.Tensor:
        """(E,) step, (E, history) gaps in steps, (E,) step count -> (E, inputs)."""
        t = (step / num_steps)[:, None]
        j = torch.arange(FREQS, dtype=t.dtype)
        ang = math.pi * t * (2.0 ** j)
        return torch.cat([ang.sin(), ang.cos(), t, gaps / num_steps[:, None]], dim=1)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(feats)
        return self.mix(h).view(-1, self.history, self.dim), self.err(h)[:, 0]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def normalized_error(anchor: torch.Tensor, guess: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Per sample: the mean absolute difference, after a per-token layer norm, between the block stack's output
    with the guessed residual and with the real one. DiTs read the stack's output through a final (adaptive) layer
    norm, so this is the error the output projection sees: a residual whose magnitude is off but whose direction is
    right costs little, a wrong direction costs much (plain relative L1 on the residual weighs both alike, and a
    predictor trained on it lost to plain reuse in closed loop on tiny-wan)."""
    d = residual.shape[-1]
    a = torch.nn.functional.layer_norm((anchor + guess).float(), (d,), eps=1e-6)
    b = torch.nn.functional.layer_norm((anchor + residual).float(), (d,), eps=1e-6)
    return (a - b).abs().flatten(1).mean(1)


def mix(weights: torch.Tensor, residuals: list[torch.Tensor]) -> torch.Tensor:
    """``sum_k weights[k] * residuals[k]`` over the channel (last) dimension; float32 accumulation."""
    out = residuals[0].float() * weights[0]
    for k in range(1, len(residuals)):
        out = out + residuals[k].float() * weights[k]
    return out.to(residuals[0].dtype)


# ---- the predictor file ---------------------------------------------------------------------------------------------
def save_predictor(pred: Predictor, path: str | Path, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    info = {"format": FORMAT, "dim": pred.dim, "history": pred.history, "hidden": pred.hidden, **meta}
    tensors = {k: v.detach().contiguous() for k, v in pred.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"dynaccel": json.dumps(info)}))


def load_predictor(path: str | Path) -> tuple[Predictor, dict[str, Any]]:
    """The predictor in ``path`` and its metadata; ConfigError naming ``predictor_path`` and what is accepted."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    where = f"option 'predictor_path': {str(path)!r}"
    accepted = f"accepted: a safetensors predictor file with format {FORMAT!r}, as dynaccel calibrate --learn writes it"
    if Path(path).suffix != ".safetensors":
        raise ConfigError(f"{where} is not a .safetensors file; {accepted} (pickled files are never loaded)")
    try:
        raw = read_bounded(path, MAX_PREDICTOR_BYTES)
    except FileReadError as exc:
        raise ConfigError(f"option 'predictor_path': {exc}") from None
    try:
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8: 8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get("dynaccel", "null"))
        tensors = load(raw)
    except (SafetensorError, ValueError, AttributeError, UnicodeDecodeError, OverflowError) as exc:
        raise ConfigError(f"{where} is not a readable safetensors file ({exc}); {accepted}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"{where} is not a learned_cache predictor (metadata format "
                          f"{meta.get('format') if isinstance(meta, dict) else None!r}); {accepted}")
    try:
        dim, history, hidden = int(meta["dim"]), int(meta["history"]), int(meta["hidden"])
        if not (1 <= dim <= 65536 and 1 <= history <= 8 and 1 <= hidden <= 4096):
            raise ValueError(f"sizes out of range: dim {dim}, history {history}, hidden {hidden}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad metadata ({exc}); {accepted}") from None
    pred = Predictor(dim, history, hidden)
    expected = {k: tuple(v.shape) for k, v in pred.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != expected:
        bad = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
        raise ConfigError(f"{where}: tensors do not match its metadata (dim {dim}, history {history}, hidden "
                          f"{hidden}): first mismatch {bad[0]!r} {got.get(bad[0])} != {expected.get(bad[0])}; {accepted}")
    if any(not torch.isfinite(v).all() for v in tensors.values()):
        raise ConfigError(f"{where} holds non-finite weights; {accepted}")
    pred.load_state_dict({k: v.float() for k, v in tensors.items()})
    pred.eval()
    return pred, meta


def model_channels(model: torch.nn.Module) -> int | None:
    """The hidden width of a diffusers transformer's block stack, from its config (heads x head dim), if it says."""
    cfg = getattr(model, "config", None)
    heads, head_dim = getattr(cfg, "num_attention_heads", None), getattr(cfg, "attention_head_dim", None)
    if isinstance(heads, int) and isinstance(head_dim, int):
        return heads * head_dim
    inner = getattr(cfg, "inner_dim", None)
    return inner if isinstance(inner, int) else None


def check_against_model(meta: dict[str, Any], model: torch.nn.Module, path: str) -> None:
    """ConfigError when the predictor was trained for another model class or width."""
    where = f"option 'predictor_path': {path!r}"
    arch = type(model).__name__
    if meta.get("architecture") and meta["architecture"] != arch:
        raise ConfigError(f"{where} was trained on a {meta['architecture']}, not this {arch}; accepted: a predictor "
                          "trained on this model (dynaccel calibrate --strategy learned_cache --learn)")
    width = model_channels(model)
    if width is not None and width != int(meta["dim"]):
        raise ConfigError(f"{where} predicts {meta['dim']} channels, this {arch}'s blocks have {width}; accepted: a "
                          "predictor trained on this model")


# ---- the policy -------------------------------------------------------------------------------------------------------
class _LearnedCachePolicy(CachePolicy):
    idle_when_off = True  # threshold 0 never skips
    level = "blocks"
    anchor = "input"

    def __init__(self, config: LearnedCacheConfig, adapter):
        super().__init__(config, adapter)
        self.predictor: Predictor | None = None
        self.meta: dict[str, Any] = {}
        if config.predictor_path:
            self.predictor, self.meta = load_predictor(config.predictor_path)
        self.history = self.predictor.history if self.predictor is not None else 1
        fit = self.meta.get("fit") if isinstance(self.meta.get("fit"), dict) else {}
        self.max_gap = int(fit["max_gap"]) if isinstance(fit.get("max_gap"), int) else None
        #: training: ``[(branch, step, num_steps, residual tokens, block-0 input tokens, sample)]`` per computed pass while set
        self.recorder: list | None = None
        self.max_tokens = 2048
        self.predicted = 0

    def _token_index(self, n: int, device) -> torch.Tensor | None:
        if n <= self.max_tokens:
            return None
        return torch.randperm(n, generator=torch.Generator().manual_seed(0))[: self.max_tokens].to(device)

    def _forecast(self, p: Pass) -> tuple[torch.Tensor, float]:
        """(the predicted residual at ``p.step``, its predicted relative error), memoized per step."""
        data = p.branch.data
        if data.get("forecast_step") != p.step:
            hist = data["hist"]
            weights, err = self._weights(p.step, p.num_steps, [s for s, _ in hist])
            data["forecast"] = mix(weights.to(hist[0][1].device), [r for _, r in hist])
            data["forecast_err"], data["forecast_step"] = err, p.step
        return data["forecast"], data["forecast_err"]

    def _weights(self, step: int, n: int | None, steps: list[int]) -> tuple[torch.Tensor, float]:
        if n is None:
            raise DynaccelError("learned_cache: the step count is unknown for a bare model; call "
                                "handle.reset(num_steps=N) before each generation (pipelines report it themselves)")
        gaps = [step - steps[0]] + [steps[k - 1] - steps[k] for k in range(1, len(steps))]
        beyond = self.max_gap is not None and max(gaps) > self.max_gap
        if beyond:  # never trained on gaps this long: plain reuse, and the error head at the longest gap it knows
            gaps = [min(g, self.max_gap) for g in gaps]
        feats = Predictor.features(torch.tensor([float(step)]), torch.tensor([gaps], dtype=torch.float32),
                                   torch.tensor([float(n)]))
        with torch.no_grad():
            w, log_err = self.predictor(feats)
        if beyond:
            w = torch.zeros_like(w)
            w[0, 0] = 1.0
        return w[0], float(log_err[0].exp())

    def computed(self, p: Pass, residual: torch.Tensor) -> None:
        data = p.branch.data
        hist = data.get("hist") or []
        if hist and hist[0][1].shape != residual.shape:
            hist = []
        if self.predictor is not None and len(hist) == self.history and p.num_steps is not None:
            # what the prediction would have been here: its real error against the predicted one corrects later ones
            weights, predicted = self._weights(p.step, p.num_steps, [s for s, _ in hist])
            guess = mix(weights.to(residual.device), [r for _, r in hist])
            real = normalized_error(p.anchor_hs, guess, residual)
            ratio = (real / max(predicted, 1e-6)).clamp(0.25, 4.0)
            old = data.get("corr")
            data["corr"] = ratio if old is None or old.shape != ratio.shape else 0.5 * old + 0.5 * ratio
        data["hist"] = [(p.step, residual)] + hist[: self.history - 1]
        data["acc"], data["streak"] = None, 0
        if self.recorder is not None:
            idx = self._token_index(residual.shape[1], residual.device) if residual.dim() == 3 else None
            def take(t):
                return (t if idx is None else t.index_select(1, idx)).detach().float().cpu().clone()
            res, anchor = take(residual), take(p.anchor_hs)
            for i in range(res.shape[0]):  # one series per sample of the batch
                self.recorder.append((p.branch.name, p.step, p.num_steps, res[i: i + 1], anchor[i: i + 1], i))

    def begin(self, p: Pass, x) -> None:
        cfg = self.config
        data = p.branch.data
        p.skip = False
        hist = data.get("hist") or []
        if (self.predictor is None or cfg.threshold <= 0 or p.forced or len(hist) < self.history
                or data.get("streak", 0) >= cfg.max_skip):
            return
        _, err = self._forecast(p)
        corr = data.get("corr")
        step_err = err * corr if corr is not None else torch.full((hist[0][1].shape[0],), err)
        acc = step_err if data.get("acc") is None else data["acc"] + step_err
        if all_below(acc, cfg.threshold):
            data["acc"], data["streak"] = acc, data.get("streak", 0) + 1
            p.skip = True
            self.predicted += 1

    def residuals(self, p: Pass):
        # a CFG branch following another's decision (cfg_sync) predicts too, from its own history
        data = p.branch.data
        if self.predictor is None or len(data.get("hist") or []) < self.history:
            return data.get("res_hs"), data.get("res_enc")
        return self._forecast(p)[0], data.get("res_enc")

    def extra_stats(self) -> dict[str, Any]:
        return {"predictor": self.meta.get("architecture") and Path(self.config.predictor_path).name}


class LearnedCache(CacheStrategy):
    """learned_cache (DisCa-style, arXiv 2602.05449): a small predictor, trained on the model's own full-compute
    runs, forecasts the block stack's residual at skipped steps and predicts its own error, which decides the skips.

    Example (train, then use)::

        dynaccel calibrate --model tiny-wan --strategy learned_cache --learn --min-psnr 30 --out presets/w.json
        pipe.enable_accel(preset="presets/w.json")       # or: predictor_path="...safetensors", threshold=0.3
    """

    cap_option = "max_skip"
    name = "learned_cache"
    Policy = _LearnedCachePolicy
    Config = LearnedCacheConfig
    summary = "a small learned predictor forecasts skipped residuals and their error (trained by calibrate --learn)"
    paper = ("Accelerating Video Diffusion Transformers with Distillation-Compatible Learnable Feature Caching "
             "(DisCa, arXiv 2602.05449)")

    #: the option ``dynaccel calibrate --learn`` fills with the file it trains (see :meth:`learn_from`)
    learned_option = "predictor_path"

    @classmethod
    def recording_config(cls) -> dict[str, Any]:
        """Options for the full-compute runs whose residuals train the predictor (nothing is skipped)."""
        return {"threshold": 0.0}

    @classmethod
    def learn_from(cls, records: list, out: str | Path, model: torch.nn.Module, progress=None,
                   **options) -> dict[str, Any]:
        """Train a predictor on ``records`` (from ``handle.record_signals()`` during full-compute runs with
        :meth:`recording_config`), save it to ``out`` (safetensors) and return the training diagnostics."""
        pred, diag = learn(records, progress=progress, **options)
        params = sum(p.numel() for p in model.parameters())
        diag["share_of_model_parameters"] = round(pred.num_parameters() / max(1, params), 4)
        save_predictor(pred, out, {"architecture": type(model).__name__, "model_parameters": params,
                                   "fit": {k: v for k, v in diag.items()}})
        return diag

    def apply(self, target, config, adapter, run_probe):
        # (here, not in the Config: every option's default must validate on its own, and the predictor is the one
        # option without a sensible default)
        if not config.predictor_path and config.threshold > 0:
            raise ConfigError(
                "option 'predictor_path': learned_cache needs a trained predictor to skip anything (threshold "
                f"{config.threshold!r} > 0); accepted: a safetensors file from 'dynaccel calibrate --strategy "
                "learned_cache --learn', or a preset that references one (e.g. preset='tiny-wan-learned_cache')"
            )
        if config.predictor_path:
            check_against_model(load_predictor(config.predictor_path)[1], target, config.predictor_path)
        return super().apply(target, config, adapter, run_probe)


# ---- training ---------------------------------------------------------------------------------------------------------
def series(records: list) -> list[tuple[str, int, dict[int, tuple[torch.Tensor, torch.Tensor]]]]:
    """Group recorder entries into one series per generation, branch and batch sample:
    ``[(branch, num_steps, {step: (residual, block-0 input)})]``
    (a step seen again in a branch starts that branch's next generation)."""
    out: list[tuple[str, int, dict[int, torch.Tensor]]] = []
    current: dict[str, tuple[str, int, dict[int, torch.Tensor]]] = {}
    for branch, step, n, res, anchor, sample in records:
        s = current.get((branch, sample))
        if s is None or step in s[2] or (s[2] and step < max(s[2])):
            s = (branch, int(n), {})
            current[(branch, sample)] = s
            out.append(s)
        s[2][step] = (res, anchor)
    return out


def learn(records: list, history: int = 3, max_gap: int = 8, hidden: int = 64, iters: int = 800,
          batch: int = 32, lr: float = 3e-3, seed: int = 0, gain_penalty: float = 0.01,
          progress=None) -> tuple[Predictor, dict[str, Any]]:
    """Train a predictor on recorded full-compute residuals (and block-0 inputs). Returns it and diagnostics: the
    error (:func:`normalized_error`) of plain reuse and of the predictor on the examples (mean over every (step,
    gaps) combination), parameter count."""
    runs = series(records)
    if not runs:
        raise DynaccelError("learned_cache: no residuals recorded; run full-compute generations with threshold 0")
    dim = next(iter(runs[0][2].values()))[0].shape[-1]
    examples = []  # (series index, target step, [history steps newest first])
    for si, (_, n, by_step) in enumerate(runs):
        for t in sorted(by_step):
            def rec(prefix):
                if len(prefix) == history:
                    examples.append((si, t, list(prefix)))
                    return
                for g in range(1, max_gap + 1):
                    s = (prefix[-1] if prefix else t) - g
                    if s in by_step:
                        rec(prefix + [s])
            rec([])
    if not examples:
        raise DynaccelError(f"learned_cache: too few steps recorded for a history of {history}; use more steps")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    pred = Predictor(dim, history, hidden)
    opt = torch.optim.Adam(pred.parameters(), lr=lr)

    def batch_of(items):
        feats = Predictor.features(
            torch.tensor([float(t) for _, t, _ in items]),
            torch.tensor([[t - h[0]] + [h[k - 1] - h[k] for k in range(1, len(h))] for _, t, h in items],
                         dtype=torch.float32),
            torch.tensor([float(runs[si][1]) for si, _, _ in items]))
        hist = [torch.cat([runs[si][2][h[k]][0] for si, _, h in items]) for k in range(history)]
        target = torch.cat([runs[si][2][t][0] for si, t, _ in items])
        anchor = torch.cat([runs[si][2][t][1] for si, t, _ in items])
        return feats, hist, (target, anchor)

    def rel_err(w, hist, target):  # per example (one sample per recorded residual)
        target, anchor = target
        guess = sum(hist[k] * w[:, k].view(w.shape[0], *([1] * (target.dim() - 2)), -1) for k in range(history))
        return normalized_error(anchor, guess, target)

    for it in range(iters):
        feats, hist, target = batch_of([examples[rng.randrange(len(examples))] for _ in range(batch)])
        w, log_err = pred(feats)
        err = rel_err(w, hist, target)
        # the noise gain sum_k w_k^2 (1 for plain reuse, 5 for a linear extrapolation 2 r1 - r2): in closed loop the
        # history residuals carry the errors of earlier skips, and large weights amplify them
        gain = (w ** 2).sum(1).mean()
        loss = (err.mean() + gain_penalty * gain
                + 0.1 * ((log_err - err.detach().clamp_min(1e-6).log()) ** 2).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for g in opt.param_groups:  # cosine decay
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (it + 1) / iters))
        if progress is not None:
            progress(it + 1, iters, float(err.detach().mean()))
    pred.eval()
    scored = examples if len(examples) <= 4096 else rng.sample(examples, 4096)  # the diagnostics' sample
    with torch.no_grad():
        learned, reuse, err_fit = [], [], []
        for k in range(0, len(scored), 256):
            feats, hist, target = batch_of(scored[k: k + 256])
            w, log_err = pred(feats)
            e = rel_err(w, hist, target)
            learned += e.tolist()
            plain = torch.zeros_like(w)
            plain[:, 0] = 1.0
            reuse += rel_err(plain, hist, target).tolist()
            err_fit += (log_err - e.clamp_min(1e-6).log()).abs().tolist()
    diag = {"examples": len(examples), "scored_examples": len(scored), "series": len(runs), "parameters": pred.num_parameters(),
            "error_reuse": round(sum(reuse) / len(reuse), 5), "error_learned": round(sum(learned) / len(learned), 5),
            "error_head_mean_abs_log": round(sum(err_fit) / len(err_fit), 4),
            "history": history, "max_gap": max_gap, "iters": iters, "seed": seed, "gain_penalty": gain_penalty}
    return pred, diag
