"""Log-probs of target tokens through a plain linear LM head, fused with their gradient.

The log-prob of target ``y`` under logits ``z = W h`` is ``z_y - logsumexp(z)``; its gradient
with respect to the logits is ``onehot(y) - softmax(z)``, which needs nothing but the forward's
softmax. So the forward computes it, chunk by chunk, right after the log-softmax, and keeps it
(in the matmul dtype) for the backward, which then only scales each row by its incoming
gradient and runs the two matrix multiplies of the linear layer's backward. Autograd through
the same ops would keep the fp32 logits, or, chunk-checkpointed as `dpokit.logps` otherwise
does, run the head's forward a second time and build the gather's, the logsumexp's and the
cast's gradients one ``(n, V)`` tensor each.

Keeping the gradients costs ``N x V`` values for N scored tokens; above `KEEP_BYTES` they are
recomputed in the backward from the saved hidden states instead (one more head forward), so
memory stays one chunk of logits. The head's weight is cast to the autocast dtype outside the
function, where autograd sees the cast: once per optimizer step inside `step_casts` (which
``models.casts_kept`` opens, as autocast keeps its own casts there), else once per call. The
weight's gradient adds up the chunks in fp32 and is rounded to that dtype once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

KEEP_BYTES = 64 << 20  # keep the forward's logit gradients up to 64 MiB (8,192 tokens of a 4,096 vocabulary in bf16)


def fusable(head: nn.Module) -> bool:
    """Whether ``head`` is a plain ``nn.Linear`` without bias on ordinary tensors (not a quantised,
    adapter-wrapped or sharded layer), which `head_logps` computes by hand."""
    weight = getattr(head, "weight", None)
    return (type(head) is nn.Linear and head.bias is None and type(weight) is nn.Parameter
            and type(weight.data) is torch.Tensor and weight.is_floating_point())


_casts: dict[int, tuple[torch.Tensor, int, torch.Tensor]] | None = None  # id -> (weight, version, cast)


@contextlib.contextmanager
def step_casts() -> Iterator[None]:
    """Within it, `cast_weight` casts each trainable weight once until the weight changes."""
    global _casts
    outer, _casts = _casts, {} if _casts is None else _casts
    try:
        yield
    finally:
        _casts = outer


def cast_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype``, the cast recorded by autograd; kept for reuse inside `step_casts`
    while the weight is unchanged (an optimizer step changes its version)."""
    if weight.dtype == dtype:
        return weight
    if _casts is None or not (weight.requires_grad and torch.is_grad_enabled()):
        return weight.to(dtype)
    hit = _casts.get(id(weight))
    if hit is not None and hit[0] is weight and hit[1] == weight._version and hit[2].dtype == dtype:
        return hit[2]
    cast = weight.to(dtype)
    _casts[id(weight)] = (weight, weight._version, cast)
    return cast


def matmul_dtype(device: torch.device, fallback: torch.dtype) -> torch.dtype:
    """The dtype a linear layer's matmul runs in here: autocast's when it is on, else the weight's."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else fallback


def _chunk_forward(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, keep: bool):
    """(n,) log-probs and mean logits of one chunk, and ``onehot - softmax`` (n, V) when ``keep``."""
    logits = F.linear(h.to(w.dtype), w).float()  # (n, V) in fp32 for the log-softmax
    lse = torch.logsumexp(logits, dim=-1)  # (n,)
    logps = logits.gather(-1, t[:, None]).squeeze(-1) - lse  # (n,)
    means = logits.mean(-1)  # (n,)
    if not keep:
        return logps, means, None
    grad = logits.sub_(lse[:, None]).exp_().neg_()  # (n, V): -softmax, in place of the logits
    grad.scatter_add_(-1, t[:, None], torch.ones_like(logps)[:, None])  # + onehot(target)
    return logps, means, grad.to(w.dtype)


class HeadLogps(torch.autograd.Function):
    """``(logps, mean logits)`` of ``targets`` (N,) from ``hidden`` (N, H) and a head weight ``w``
    (V, H) in the matmul dtype, ``chunk`` rows at a time; mean logits carry no gradient."""

    @staticmethod
    def forward(ctx, hidden, w, targets, chunk: int):
        keep = hidden.shape[0] * w.shape[0] * w.element_size() <= KEEP_BYTES
        parts = [_chunk_forward(hidden[s : s + chunk], w, targets[s : s + chunk], keep)
                 for s in range(0, hidden.shape[0], chunk)]
        ctx.chunk = chunk
        ctx.kept = [g for _, _, g in parts] if keep else None
        ctx.save_for_backward(hidden, w, targets)
        means = torch.cat([m for _, m, _ in parts])
        ctx.mark_non_differentiable(means)
        return torch.cat([lp for lp, _, _ in parts]), means

    @staticmethod
    def backward(ctx, grad_logps, _grad_means):
        hidden, w, targets = ctx.saved_tensors  # w: (V, H) in the matmul dtype
        need_h, need_w = ctx.needs_input_grad[:2]
        grad_h = torch.empty_like(hidden) if need_h else None  # (N, H)
        grad_w = None  # (V, H), accumulated in fp32
        for i, s in enumerate(range(0, hidden.shape[0], ctx.chunk)):
            h, g = hidden[s : s + ctx.chunk], grad_logps[s : s + ctx.chunk]
            if ctx.kept is not None:
                kept, ctx.kept[i] = ctx.kept[i], None  # each chunk's freed once used
            else:
                kept = _chunk_forward(h, w, targets[s : s + ctx.chunk], True)[2]
            grad_logits = kept.mul_(g[:, None])  # (n, V): d loss / d logits
            if need_h:
                grad_h[s : s + ctx.chunk] = grad_logits @ w
            if need_w:
                part = grad_logits.t() @ h.to(w.dtype)  # (V, H)
                grad_w = part.float() if grad_w is None else grad_w.add_(part)
        ctx.kept = None
        return grad_h, None if grad_w is None else grad_w.to(w.dtype), None, None


def head_logps(head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor,
               chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) log-probs of ``targets`` and (N,) mean logits (detached) at ``hidden`` (N, H) through
    the fusable ``head``, ``chunk`` tokens of logits at a time."""
    w = cast_weight(head.weight, matmul_dtype(hidden.device, head.weight.dtype))  # (V, H)
    if torch.is_grad_enabled() and (hidden.requires_grad or w.requires_grad):
        return HeadLogps.apply(hidden, w, targets, chunk)
    parts = [_chunk_forward(hidden[s : s + chunk], w, targets[s : s + chunk], False)
             for s in range(0, hidden.shape[0], chunk)]
    return torch.cat([lp for lp, _, _ in parts]), torch.cat([m for _, m, _ in parts])
