"""PASA: Precision-Allocated Sparse Attention (Zhang et al., "Ride the Wave: Precision-Allocated Sparse Attention
for Smooth Video Generation", arXiv 2604.12219).

Three ideas, as implemented here:

- *Curvature-aware budget per step.* The engine records the model's latent input at every denoising step. The
  relative curvature of that trajectory, ``|x_t - 2 x_{t-1} + x_{t-2}| / |x_{t-1} - x_{t-2}|``, says how sharply
  the sample is turning; the attention budget (fraction of key blocks each query block keeps) is
  ``density * (1 + gain * curvature)``, capped at ``max_density``. The first two steps (no curvature yet) get
  ``max_density``.
- *Grouped approximation.* Query blocks (3D tiles of the video, tile-major order) are pooled to their mean; the
  pooled query's softmax over every video key, summed per key block, estimates each block pair's attention mass
  (cost: one row per query block, about ``1 / block_size`` of the attention). Each query block keeps its
  highest-mass key blocks, the same number per block (``allocation="row"``, the default), or each head's budget
  goes to its highest-mass pairs overall (``"head"``: rows with spread attention get more blocks; worse on
  tiny-wan); always the block itself and the text.
- *Stochastic selection bias.* Gumbel noise of scale ``noise`` (seeded by ``seed``, the step and the layer) is added
  to the pooled log-scores before ranking, softening the selection boundary between steps.

With ``remainder="pooled"`` (an option of every sparse strategy) the key blocks a query block does not keep still
count through their mean key and value, which suits the diffuse attention of small models (tiny-wan: see
docs/benchmarks.md).

Dense setting: ``density=1`` (then ``max_density`` is 1 too), or ``dense_steps`` >= the step count.

On tiny-wan (320 tokens, diffuse attention) the setting that met the held-out quality bar (picked on other
prompts): 8-token blocks, 2x2x2 tiles, a fixed budget (``gain=0``, ``density=0.4``), 4 dense steps and
``remainder="pooled"`` (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...core.config import option
from .engine import CallInfo, Pass, SparseAttentionConfig, SparseAttentionStrategy, SparsePolicy
from .masks import MaskPlan, blocks_for_density, tile_order, topk_block_mask, with_text


@dataclass(frozen=True)
class PASAConfig(SparseAttentionConfig):
    density: float = option(0.3, doc="base share of key blocks each query block keeps; 1 is dense", min=0.0, max=1.0,
                            step=0.01)
    max_density: float = option(0.6, doc="budget cap on high-curvature steps (below density: no raise)", min=0.0, max=1.0, step=0.01)
    gain: float = option(1.0, doc="how strongly trajectory curvature raises the budget", min=0.0, max=100.0)
    noise: float = option(0.0, doc="scale of the Gumbel selection bias (0: deterministic top-k)", min=0.0, max=10.0)
    seed: int = option(0, doc="seed of the selection noise", min=0, max=2**31 - 1)
    allocation: str = option(
        "row", doc="'head': a head's budget goes to its highest-mass block pairs (rows get what they need); "
        "'row': every query block keeps the same share", choices=("head", "row"),
    )
    tile_frames: int = option(1, doc="tile depth of a pooled block (tokens)", min=1, max=64)
    tile_height: int = option(4, doc="tile height of a pooled block", min=1, max=256)
    tile_width: int = option(4, doc="tile width of a pooled block", min=1, max=256)


class _PASAPolicy(SparsePolicy):
    """The trajectory (last three latents) and the budget are kept per CFG branch, in ``self.state``."""

    def __init__(self, config):
        super().__init__(config)
        self.run_started()

    def run_started(self):
        self.budgets: dict[int, float] = {}

    @property
    def budget(self) -> float:
        return self.state.get("budget", max(self.config.density, self.config.max_density))

    def step_started(self, step, latent):
        c = self.config
        latents = self.state["latents"] = (self.state.get("latents", []) + [latent.detach().float()])[-3:]
        if len(latents) < 3 or latents[0].shape != latent.shape:
            budget = max(c.density, c.max_density)
        else:
            a, b, x = latents
            curv = float((x - 2 * b + a).norm() / ((b - a).norm() + 1e-12))
            budget = max(c.density, min(c.max_density, c.density * (1.0 + c.gain * curv)))
        self.state["budget"] = self.budgets[step] = budget

    def full(self, grid, step):
        return self.budget >= 1.0

    def passes(self, call: CallInfo):
        c = self.config
        bs = c.block_size
        grid, nv = call.grid, call.q.shape[1]
        order = self.plan(("o", grid), lambda: tile_order(grid, (c.tile_frames, c.tile_height, c.tile_width)))
        o = order.to(call.q.device)
        nq = -(-nv // bs)
        qb = self._pool(call.q.index_select(1, o), nq, bs)  # (B, H, nQ, D) block-mean queries
        kt = call.k[:, :nv].index_select(1, o).float().transpose(1, 2)  # (B, H, Nv, D) every video key
        # estimated attention mass of each key block for each query block: pooled query against the real keys
        probs = torch.softmax(qb @ kt.transpose(-1, -2) / math.sqrt(qb.shape[-1]), dim=-1)  # (B, H, nQ, Nv)
        probs = torch.nn.functional.pad(probs, (0, nq * bs - nv))
        logits = torch.log(probs.reshape(*probs.shape[:-1], nq, bs).sum(-1) + 1e-12)  # (B, H, nQ, nQ)
        if c.noise > 0:
            gen = torch.Generator(device="cpu").manual_seed(c.seed * 1_000_003 + call.step * 1009 + call.index)
            u = torch.rand(logits.shape, generator=gen).clamp_(1e-9, 1 - 1e-9).to(logits.device)
            logits = logits - c.noise * torch.log(-torch.log(u))
        always = torch.eye(nq, dtype=torch.bool, device=logits.device).expand_as(logits)
        if c.allocation == "row":  # every query block keeps the same number of key blocks
            keep = torch.full(logits.shape[:-1], blocks_for_density(self.budget, nq), device=logits.device)
            video = topk_block_mask(logits, keep, always)
        else:  # the head's budget goes to its highest-mass (query block, key block) pairs
            flat = logits.flatten(-2)
            keep = torch.full(flat.shape[:-1], blocks_for_density(self.budget, nq * nq), device=logits.device)
            video = topk_block_mask(flat, keep, always.flatten(-2)).reshape(logits.shape)
        bm = with_text(video, nv, call.num_text, bs)  # stays on the device: no copy, no sync
        return [Pass(MaskPlan(order, bm[:1, 0], bs, nv, call.num_text), bm)]

    @staticmethod
    def _pool(x, nb, bs):
        b, n, h, d = x.shape
        pad = nb * bs - n
        xs = torch.nn.functional.pad(x.float(), (0, 0, 0, 0, 0, pad)).reshape(b, nb, bs, h, d).sum(2)
        counts = torch.full((nb,), bs, device=x.device, dtype=torch.float32)
        counts[-1] = bs - pad
        return (xs / counts[None, :, None, None]).transpose(1, 2)

    def extra_stats(self):
        return {"budget_per_step": dict(self.budgets)}


class PASA(SparseAttentionStrategy):
    """PASA (arXiv 2604.12219): per-step attention budget from the trajectory's curvature, pooled block
    selection with an optional stochastic bias.

    Example::

        pipe.enable_accel("pasa", density=0.3, max_density=0.6, gain=1.0, block_size=64)
    """

    name = "pasa"
    Config = PASAConfig
    Policy = _PASAPolicy
    summary = "adaptive per-step budget (trajectory curvature) of top-scoring key blocks from pooled q/k"
    paper = "Zhang et al., Ride the Wave: Precision-Allocated Sparse Attention (arXiv 2604.12219)"
