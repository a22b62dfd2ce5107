"""The fused head: log-probs, mean logits and gradients equal autograd's through a plain
log-softmax (fp32, kept or recomputed gradients), stay as close to fp32 under bf16 autocast as
autograd's own bf16 path, and leave frozen weights and other heads alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dpokit.head
from dpokit.head import fusable, head_logps

N, H, V = 300, 32, 97


def plain(head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()  # (N, V)
    return F.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1), logits.detach().mean(-1)


def run(fn, head, hidden, targets, weights, precision=None):
    """Outputs and the gradients of hidden and weight of ``sum(weights * logps)``."""
    hidden = hidden.detach().requires_grad_()
    head.zero_grad(set_to_none=True)
    context = (torch.autocast("cpu", dtype=precision) if precision else torch.autocast("cpu", enabled=False))
    with context:
        logps, means = fn(head, hidden, targets)
    (logps * weights).sum().backward()
    grad_w = None if head.weight.grad is None else head.weight.grad.clone()
    return logps.detach(), means, hidden.grad, grad_w


@pytest.fixture
def case():
    torch.manual_seed(0)
    return nn.Linear(H, V, bias=False), torch.randn(N, H) * 2, torch.randint(0, V, (N,)), torch.randn(N)


def fused(head, hidden, targets):
    return head_logps(head, hidden, targets, chunk=128)  # three chunks, the last one short


@pytest.mark.parametrize("keep", [True, False])
def test_fused_equals_autograd_in_fp32(keep, case, monkeypatch):
    if not keep:
        monkeypatch.setattr(dpokit.head, "KEEP_BYTES", 0)  # recompute the logits in the backward
    expected = run(plain, *case)
    for got, want, name in zip(run(fused, *case), expected, ("logps", "means", "grad hidden", "grad weight")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5, msg=name)  # summation order


def test_bf16_error_is_autograds(case):
    truth = run(plain, *case)
    errors = {}
    for name, fn in (("fused", fused), ("autograd", plain)):
        out = run(fn, *case, precision=torch.bfloat16)
        errors[name] = [((a - b).norm() / b.norm()).item() for a, b in zip(out[2:], truth[2:])]
    for fused_error, autograd_error in zip(errors["fused"], errors["autograd"]):
        assert fused_error < 1.5 * autograd_error + 1e-4, errors  # one more bf16 rounding, no more


def test_frozen_weight_gets_no_gradient(case):
    head, hidden, targets, weights = case
    head.weight.requires_grad_(False)
    logps, _, grad_h, grad_w = run(fused, head, hidden, targets, weights)
    assert grad_w is None
    torch.testing.assert_close(grad_h, run(plain, head, hidden, targets, weights)[2], rtol=1e-5, atol=1e-6)


def test_without_gradients_nothing_is_kept(case):
    head, hidden, targets, _ = case
    with torch.no_grad():
        logps, means = fused(head, hidden, targets)
    torch.testing.assert_close(logps, plain(head, hidden, targets)[0], rtol=1e-5, atol=1e-6)
    assert logps.grad_fn is None and means.grad_fn is None


def test_only_plain_linear_heads_are_fused():
    class Scaled(nn.Linear):  # a subclass may change forward (quantised and adapter layers do)
        pass

    assert fusable(nn.Linear(4, 8, bias=False))
    assert not fusable(nn.Linear(4, 8, bias=True))
    assert not fusable(Scaled(4, 8, bias=False))
    assert not fusable(nn.Embedding(8, 4))


def test_weight_cast_once_inside_a_step_and_again_after_an_update():
    from dpokit.head import cast_weight, step_casts

    weight = nn.Parameter(torch.randn(8, 4))
    assert cast_weight(weight, torch.bfloat16) is not cast_weight(weight, torch.bfloat16)  # no step: each call
    with step_casts():
        first = cast_weight(weight, torch.bfloat16)
        assert cast_weight(weight, torch.bfloat16) is first
        first.float().sum().backward()  # the cast is on autograd's record: the fp32 weight gets its gradient
        torch.testing.assert_close(weight.grad, torch.ones(8, 4))
        with torch.no_grad():
            weight.add_(1.0)  # an update: a new version, a new cast
        assert cast_weight(weight, torch.bfloat16) is not first
    assert cast_weight(weight, torch.float32) is weight
