"""Attention processors through which the sparse-attention strategies reach diffusers' video DiTs.

Each processor stands in for one self-attention module's own processor: it computes queries, keys and values the
way the model does (projections, q/k norms, rotary embeddings), hands them to a *router* together with which
tokens are text, and applies the output projections. The router (the sparse-attention engine) returns the
attention output, or the processor calls the module's original processor whenever the router says this call runs
dense (``router.sparse_now()`` is False) or the call is not the plain self-attention it knows (fused projections,
cross-attention, an unexpected mask): then outputs are bit-identical to the unpatched model.

Router protocol (see ``plugins/sparse_attention/engine.py``)::

    router.sparse_now() -> bool
    router.attend(index, q, k, v, num_text=..., text_first=..., key_padding=...) -> out
        # q, k, v, out: (B, S, H, D) over the whole joint sequence; key_padding: (B, S) bool (True = attend) or None
"""

from __future__ import annotations

from typing import Any

import torch


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(2, (heads, -1))


class _Base:
    """Holds the original processor, the router and the module's index among the patched ones."""

    def __init__(self, original: Any, router: Any, index: int):
        self.original = original
        self.router = router
        self.index = index


class WanSparseProcessor(_Base):
    """Self-attention (``attn1``) of diffusers' Wan blocks: video tokens only, RoPE on q and k."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        plain = (
            encoder_hidden_states is not None
            or attention_mask is not None
            or getattr(attn, "add_k_proj", None) is not None
            or getattr(attn, "fused_projections", False)
        )
        if plain or not self.router.sparse_now():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        q = _heads(attn.norm_q(attn.to_q(hidden_states)), attn.heads)
        k = _heads(attn.norm_k(attn.to_k(hidden_states)), attn.heads)
        v = _heads(attn.to_v(hidden_states), attn.heads)
        if rotary_emb is not None:
            q, k = _wan_rope(q, *rotary_emb), _wan_rope(k, *rotary_emb)
        out = self.router.attend(self.index, q, k, v, num_text=0, text_first=False, key_padding=None)
        out = out.flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def _wan_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved (even, odd) channel pairs, ``x`` is (B, S, H, D)."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2)
    return out.type_as(x)


class HunyuanVideoSparseProcessor(_Base):
    """Joint attention of diffusers' HunyuanVideo blocks: ``[video, text]``, dual-stream (separate text
    projections) or single-stream (one projection over the concatenation); RoPE on the video part; the text padding
    comes as a key mask."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        padding = _key_padding(attention_mask, hidden_states.shape[0])
        if encoder_hidden_states is None or padding is False or not self.router.sparse_now():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.embeddings import apply_rotary_emb

        num_text = encoder_hidden_states.shape[1]
        dual = attn.add_q_proj is not None
        x = hidden_states if dual else torch.cat([hidden_states, encoder_hidden_states], dim=1)
        q, k, v = (_heads(p(x), attn.heads) for p in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:
            nv = hidden_states.shape[1]
            q = torch.cat([apply_rotary_emb(q[:, :nv], image_rotary_emb, sequence_dim=1), q[:, nv:]], dim=1)
            k = torch.cat([apply_rotary_emb(k[:, :nv], image_rotary_emb, sequence_dim=1), k[:, nv:]], dim=1)
        if dual:
            eq, ek, ev = (_heads(p(encoder_hidden_states), attn.heads) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            q, k, v = torch.cat([q, eq], 1), torch.cat([k, ek], 1), torch.cat([v, ev], 1)
        out = self.router.attend(self.index, q, k, v, num_text=num_text, text_first=False, key_padding=padding)
        out = out.flatten(2, 3).to(q.dtype)
        hs, enc = out[:, :-num_text], out[:, -num_text:]
        if getattr(attn, "to_out", None) is not None:
            hs = attn.to_out[1](attn.to_out[0](hs))
        if getattr(attn, "to_add_out", None) is not None:
            enc = attn.to_add_out(enc)
        return hs, enc


def _key_padding(mask: torch.Tensor | None, batch: int):
    """A (B, 1, 1, S) or (B, S) boolean key mask as (B, S); None without a mask; False for any other mask."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        return False
    if mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
        mask = mask[:, 0, 0]
    if mask.dim() != 2 or mask.shape[0] != batch:
        return False
    return mask


class CogVideoXSparseProcessor(_Base):
    """Joint attention of diffusers' CogVideoX blocks: ``[text, video]`` through one projection, RoPE (5B, 1.5) on
    the video part."""

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None or attn.is_cross_attention or not self.router.sparse_now():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.embeddings import apply_rotary_emb

        num_text = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        q, k, v = (_heads(p(x), attn.heads) for p in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None or attn.norm_k is not None or image_rotary_emb is not None:
            q, k = q.transpose(1, 2), k.transpose(1, 2)  # the norms and RoPE of CogVideoX work on (B, H, S, D)
            if attn.norm_q is not None:
                q = attn.norm_q(q)
            if attn.norm_k is not None:
                k = attn.norm_k(k)
            if image_rotary_emb is not None:
                q = torch.cat([q[:, :, :num_text], apply_rotary_emb(q[:, :, num_text:], image_rotary_emb)], dim=2)
                k = torch.cat([k[:, :, :num_text], apply_rotary_emb(k[:, :, num_text:], image_rotary_emb)], dim=2)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
        out = self.router.attend(self.index, q, k, v, num_text=num_text, text_first=True, key_padding=None)
        out = attn.to_out[1](attn.to_out[0](out.flatten(2, 3).to(q.dtype)))
        return out[:, num_text:], out[:, :num_text]
