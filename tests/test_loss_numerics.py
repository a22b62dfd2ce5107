"""The loss family's numeric edges and its logged rewards: DiscoPOP and ORPO finite with finite
gradients at extreme inputs (hand-worked limits), float32 losses as accurate as float64 on long
sequences, and ``rewards/*`` equal to TRL 1.16's definitions on hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from dpokit.config import LossConfig
from dpokit.formulas import log1mexp
from dpokit.losses import LOSSES, LossInputs, get_loss, resolve_loss_config


def pairs(pi_w, pi_l, ref_w=None, ref_l=None, n_w=None, n_l=None, beta=0.1, dtype=torch.float64) -> LossInputs:
    """B pairs of summed log-probs (leaf tensors that take gradients); token counts 1 unless given."""
    t = lambda v: None if v is None else torch.tensor(v, dtype=dtype, requires_grad=True)  # noqa: E731
    ones = [1] * len(pi_w)
    return LossInputs(t(pi_w), t(pi_l), t(ref_w), t(ref_l), torch.tensor(n_w or ones), torch.tensor(n_l or ones),
                      beta=beta)


def loss_and_grads(loss_type: str, x: LossInputs, **cfg) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The (B,) pair losses and their gradients in each log-prob (the NLL terms, of slope -1, apart)."""
    out = get_loss(loss_type).fn(x, LossConfig(loss_type=loss_type, **cfg))
    leaves = [t for t in (x.policy_chosen, x.policy_rejected, x.reference_chosen, x.reference_rejected)
              if t is not None]
    out.losses.sum().backward()
    return out.losses.detach(), [t.grad for t in leaves]


def all_finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# ---- DiscoPOP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_discopop_is_finite_at_extreme_margins(dtype):
    """beta h = -1000 made ``exp(-z)`` overflow while ``sigmoid(z / tau)`` underflowed: 0 * inf = NaN.
    There the loss is the logistic one, -log sigmoid(z) = 1000, with slope -1 in z (-0.1 in pi_w);
    at beta h = +1000 it is 0 with slope 0."""
    h = [-1e4, 1e4, -1e6, 1e6, 0.0]
    x = pairs(h, [0.0] * 5, [0.0] * 5, [0.0] * 5, dtype=dtype)
    losses, grads = loss_and_grads("discopop", x)
    assert all_finite(losses, *grads)
    assert losses[0].item() == pytest.approx(1000.0, rel=1e-6) and losses[1].item() == 0.0
    assert grads[0][0].item() == pytest.approx(-0.1, rel=1e-6) and grads[0][1].item() == 0.0
    assert losses[2].item() == pytest.approx(1e5, rel=1e-6) and losses[3].item() == 0.0


def test_discopop_stable_form_equals_the_paper_form_where_that_is_finite():
    z = torch.linspace(-30, 30, 601, dtype=torch.float64)  # beta h; tau 0.05
    m = torch.sigmoid(z / 0.05)
    paper = (1 - m) * -torch.nn.functional.logsigmoid(z) + m * torch.exp(-z)  # Lu et al. 2024, eq. 5
    x = pairs((z / 0.1).tolist(), [0.0] * 601, [0.0] * 601, [0.0] * 601)
    torch.testing.assert_close(get_loss("discopop").fn(x, LossConfig(loss_type="discopop")).losses, paper,
                               rtol=1e-12, atol=1e-15)


# ---- ORPO ----------------------------------------------------------------------------------------


def orpo_by_hand(m_w: float, m_l: float, lam: float = 0.1) -> tuple[float, float]:
    """ORPO's odds-ratio term and its slope in ``m_w`` (mean log-probs), with Python's math:
    ``L = -lam log sigmoid(r)``, ``r = lo(m_w) - lo(m_l)``, ``lo(m) = m - log(1 - e^m)``;
    ``dL/dm_w = -lam sigmoid(-r) / (1 - e^m_w)``."""
    lo = lambda m: m - math.log(-math.expm1(m))  # noqa: E731
    r = lo(m_w) - lo(m_l)
    loss = lam * math.log1p(math.exp(-r)) if r > -700 else -lam * r
    return loss, -lam / (1 + math.exp(r)) / -math.expm1(m_w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orpo_is_finite_with_its_gradient_near_probability_one(dtype):
    """Mean log-probs at -1e-12 (p a hair below 1) and -50 (p ~ 2e-22): finite values and gradients
    equal to the hand-worked ones. The clamp at -1e-6 gave the first sequence zero gradient."""
    cases = [(-1e-12, -50.0), (-50.0, -1e-12), (-1e-9, -2.0), (-1e-4, -0.5), (-30.0, -3.0)]
    x = pairs([float(torch.tensor(w, dtype=dtype)) for w, _ in cases],
              [float(torch.tensor(v, dtype=dtype)) for _, v in cases], dtype=dtype)
    losses, (g_w, g_l) = loss_and_grads("orpo", x)
    assert all_finite(losses, g_w, g_l)
    for i, (m_w, m_l) in enumerate(cases):
        loss, slope = orpo_by_hand(x.policy_chosen[i].item(), x.policy_rejected[i].item())
        assert losses[i].item() == pytest.approx(loss, rel=1e-5), (m_w, m_l)
        assert g_w[i].item() == pytest.approx(slope, rel=1e-5), (m_w, m_l)
    assert g_w[2].item() < -1e-3  # p_w = 1 - 1e-9 still has its odds-ratio gradient


def test_orpo_at_probability_one_has_the_limit_gradient():
    """An empty answer (0 tokens) or one whose every token is certain has mean log-prob 0 and infinite
    odds: the loss is 0, and its slope tends to ``-lam * odds_l`` (odds_l = e^-2 / (1 - e^-2))."""
    x = pairs([0.0, 0.0], [-4.0, -2.0], n_w=[0, 3], n_l=[2, 1])  # rejected means -2, -2
    losses, (g_w, g_l) = loss_and_grads("orpo", x)
    assert all_finite(losses, g_w, g_l) and losses.abs().max() < 1e-100
    odds_l = math.exp(-2) / -math.expm1(-2)
    assert g_w[0].item() == pytest.approx(-0.1 * odds_l, rel=1e-6)  # 0 tokens: mean = sum / 1
    assert g_w[1].item() == pytest.approx(-0.1 * odds_l / 3, rel=1e-6)  # 3 tokens: d mean / d sum = 1/3


def test_log1mexp_is_accurate_on_both_branches():
    x = torch.tensor([-1e-300, -1e-12, -0.5, -math.log(2), -1.0, -50.0, -800.0], dtype=torch.float64,
                     requires_grad=True)
    expected = [math.log(-math.expm1(v)) for v in x.tolist()[:5]] + [-math.exp(-50.0), -0.0]
    y = log1mexp(x)
    y.sum().backward()
    for got, want in zip(y.tolist(), expected):
        assert got == pytest.approx(want, rel=1e-14, abs=1e-320)
    assert all_finite(y, x.grad) and x.grad[-1].item() == pytest.approx(0.0, abs=1e-300)


# ---- precision on long sequences ----------------------------------------------------------------

# Sums over ~1000-token answers: chosen near -4000, rejected near -1500 / -3000 / -900, and the
# log-ratios (pi - ref) small. (pi_w - pi_l) rounds a difference of ~2500 in float32 (error ~1e-4);
# per-token means formed before the ratio round each mean on its own. The accurate order and
# float64 keep every loss within float32's own rounding of the float64 value.
LONG = dict(pi_w=[-4000.4321, -3987.1234, -4012.9876], ref_w=[-4000.9012, -3986.4567, -4014.3456],
            pi_l=[-1500.8765, -2990.2468, -900.1357], ref_l=[-1499.7531, -2991.0864, -898.9753],
            n_w=[1000, 990, 1010], n_l=[400, 760, 230])


@pytest.mark.parametrize("loss_type", [n for n, spec in LOSSES.items() if spec.needs_reference])
@pytest.mark.parametrize("form", ["auto", "sum", "mean"])
def test_float32_losses_match_float64_on_long_sequences(loss_type, form):
    cfg = LossConfig(loss_type=loss_type, sequence_logps=form)
    as32 = {k: torch.tensor(v, dtype=torch.float32).tolist() if k[0] != "n" else v for k, v in LONG.items()}
    x32, x64 = (pairs(as32["pi_w"], as32["pi_l"], as32["ref_w"], as32["ref_l"], as32["n_w"], as32["n_l"],
                      dtype=dtype) for dtype in (torch.float32, torch.float64))  # the same float32 values
    out32, out64 = get_loss(loss_type).fn(x32, cfg), get_loss(loss_type).fn(x64, cfg)
    assert out32.losses.dtype == torch.float32
    for got, want in ((out32.losses, out64.losses), (out32.chosen_rewards, out64.chosen_rewards),
                      (out32.rejected_rewards, out64.rejected_rewards)):
        rel = ((got.double() - want).abs() / want.abs().clamp(min=1e-12)).max().item()
        assert rel <= 1e-6, (loss_type, form, rel)


# ---- logged rewards: TRL 1.16's definitions ------------------------------------------------------

# pi_w = -10, pi_l = -12, ref_w = ref_l = -11 over 4 chosen and 6 rejected tokens.
# DPOTrainer (every loss type): chosen_rewards = beta * (chosen_logps - ref_chosen_logps), sums.
# CPOTrainer (SimPO, average_log_prob) and ORPOTrainer: chosen_rewards = beta * mean log-prob.
TRL_REWARDS = [
    ("sigmoid", {}, 0.1, -0.1),
    ("sigmoid", {"sequence_logps": "mean"}, 0.1, -0.1),  # the loss on means, the rewards still on sums
    ("ipo", {}, 0.1, -0.1),  # IPO averages per token, TRL logs the sums
    ("hinge", {"beta": 0.5}, 0.5, -0.5),
    ("simpo", {}, 2.0 * -10 / 4, 2.0 * -12 / 6),
    ("orpo", {}, 0.1 * -10 / 4, 0.1 * -12 / 6),
    ("sft", {"beta": 0.2}, 0.2 * -10 / 4, 0.2 * -12 / 6),  # reference-free: beta * mean log pi too
]


@pytest.mark.parametrize("loss_type, keys, chosen, rejected", TRL_REWARDS)
def test_rewards_are_trls(loss_type, keys, chosen, rejected):
    from dpokit.logps import SequenceLogps
    from dpokit.tasks.preference import PairMetrics, PairOutput

    cfg = resolve_loss_config(LossConfig(loss_type=loss_type, **keys))
    spec = get_loss(cfg.loss_type)
    ref = [-11.0] if spec.needs_reference else None
    x = pairs([-10.0], [-12.0], ref, ref, n_w=[4], n_l=[6], beta=cfg.beta)
    out = spec.fn(x, cfg)
    assert out.chosen_rewards.item() == pytest.approx(chosen, abs=1e-12)
    assert out.rejected_rewards.item() == pytest.approx(rejected, abs=1e-12)
    sums = PairMetrics()  # the logged names: margins and accuracies from the same rewards
    sums.add(PairOutput(out, SequenceLogps(torch.tensor([-10.0, -12.0]), torch.tensor([4, 6]), torch.zeros(2))))
    row = sums.means()
    assert row["rewards/chosen"] == pytest.approx(chosen) and row["rewards/margins"] == pytest.approx(chosen - rejected)
    assert row["rewards/accuracies"] == float(chosen > rejected)
