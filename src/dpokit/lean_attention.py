"""Eager attention that keeps less: transformers' ``eager`` recipe, computed in blocks of query rows.

transformers' eager attention keeps, for the backward pass, each score twice (the fp32 softmax and
its copy in the compute dtype: 6 bytes a score in bf16), and builds four more full-size temporaries
on the way (scores, scaled, masked, fp32). This kernel runs the same operations in the same order on
blocks of query rows, so the fp32 temporaries never exceed one block (`BLOCK_SCORES`), and keeps
only the probabilities in the compute dtype (2 bytes a score in bf16). Its backward pass is the
softmax's own: ``ds = p * (dp - sum(dp * p))`` in fp32, from those kept probabilities.

It is registered with transformers as ``dpokit_eager`` (`NAME`), for the model types in `STANDARD`,
whose own eager attention is exactly that recipe. Anything else a layer asks for (dropout, logit
soft-capping, attention sinks) goes to the model's own eager function.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
from transformers.models.llama.modeling_llama import repeat_kv

NAME = "dpokit_eager"
BLOCK_SCORES = 1 << 21  # fp32 scores worked on at once: 8 MiB
STANDARD = frozenset({"llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "granite", "phi3"})


def _blocks(heads: int, queries: int, keys: int):
    size = max(1, BLOCK_SCORES // max(1, heads * keys))
    for start in range(0, queries, size):
        yield slice(start, min(queries, start + size))


def _probs(q: torch.Tensor, k_t: torch.Tensor, mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """One block's softmax, in transformers' order: scores, scaled, masked, fp32 softmax."""
    scores = torch.matmul(q, k_t).mul_(scaling)  # (H, c, S) in the compute dtype
    if mask is not None:  # a mask in another dtype promotes the scores, as in transformers
        scores = scores.add_(mask) if mask.dtype == scores.dtype else scores + mask
    return torch.softmax(scores, dim=-1, dtype=torch.float32)  # (H, c, S)


def _mask_row(mask: torch.Tensor | None, row: int, rows: slice, keys: int) -> torch.Tensor | None:
    if mask is None:
        return None
    return mask[row if mask.shape[0] > 1 else 0, :, rows, :keys]  # (1 or H, c, S)


def _blocked(q, k, v, mask, scaling, probs: torch.Tensor | None = None) -> torch.Tensor:
    """The forward pass, a block of query rows at a time; each block's probabilities go into
    ``probs`` when given (``(B, H, T, S)``, kept for the backward pass)."""
    batch, heads, queries, _ = q.shape
    keys = k.shape[2]
    out = q.new_empty(q.shape)
    for b in range(batch):
        k_t = k[b].transpose(-1, -2)
        for rows in _blocks(heads, queries, keys):
            p = _probs(q[b, :, rows], k_t, _mask_row(mask, b, rows, keys), scaling)
            if probs is not None:
                probs[b, :, rows] = p
                p = probs[b, :, rows]
            torch.matmul(p.to(q.dtype), v[b], out=out[b, :, rows])
    return out


class _LeanAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scaling):  # (B, H, T, D), (B, H, S, D), (B, H, S, D), (B, 1, T, S)
        probs = q.new_empty(*q.shape[:3], k.shape[2])  # (B, H, T, S), the only thing kept
        out = _blocked(q, k, v, mask, scaling, probs)
        ctx.save_for_backward(q, k, v, probs)
        ctx.scaling = scaling
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, probs = ctx.saved_tensors
        dout = dout.to(q.dtype)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        batch, heads, queries, _ = q.shape
        keys = k.shape[2]
        for b in range(batch):
            p = probs[b]  # (H, T, S)
            torch.matmul(p.transpose(-1, -2), dout[b], out=dv[b])
            ds = torch.empty_like(p)
            v_t = v[b].transpose(-1, -2)
            for rows in _blocks(heads, queries, keys):
                dp = torch.matmul(dout[b, :, rows], v_t).float()  # (H, c, S)
                y = p[:, rows].float()
                dp.sub_((dp * y).sum(-1, keepdim=True)).mul_(y)
                ds[:, rows] = dp.to(q.dtype).mul_(ctx.scaling)  # through the scaling, in the compute dtype
            torch.matmul(ds, k[b], out=dq[b])
            torch.matmul(ds.transpose(-1, -2), q[b], out=dk[b])
        return dq, dk, dv, None, None


def _own_eager(module: nn.Module):
    return sys.modules[type(module).__module__].eager_attention_forward


def lean_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, scaling: float | None = None,
                           dropout: float = 0.0, **kwargs):
    """transformers' attention-function signature: ``(B, H, T, D)`` in, ``(B, T, H, D)`` out."""
    unusual = (dropout and module.training) or kwargs.get("softcap") or kwargs.get("s_aux") is not None
    if unusual or getattr(module.config, "model_type", None) not in STANDARD:
        return _own_eager(module)(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                  **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    device = query.device.type
    # Under autocast the matrix products run in its dtype: cast once here, as autocast would.
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    groups = query.shape[1] // key.shape[1]
    query, key, value = (t.to(dtype) for t in (query, repeat_kv(key, groups), repeat_kv(value, groups)))
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        attention_mask = torch.zeros(attention_mask.shape, dtype=dtype, device=query.device).masked_fill_(
            ~attention_mask, torch.finfo(dtype).min)
    with torch.autocast(device, enabled=False):
        out = attend(query, key, value, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           scaling: float) -> torch.Tensor:
    """``softmax(q kᵀ * scaling + mask) v`` over ``(B, H, T, D)`` tensors, keeping only the
    probabilities for the backward pass (and nothing when no gradient is wanted)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _LeanAttention.apply(q, k, v, mask, scaling)
    return _blocked(q, k, v, mask, scaling)


def register() -> str:
    """Make `NAME` a kernel transformers models can be loaded with or switched to; its name."""
    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, lean_attention_forward)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)
    return NAME


def lean_for(model_type: str | None) -> bool:
    """Whether ``model_type``'s own eager attention is the recipe this kernel computes."""
    return model_type in STANDARD
