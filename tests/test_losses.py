"""The preference losses: hand-worked values (the golden values of ANCHORS.md where they exist),
the registry's conventions (reference, sums or means, NLL terms), and a few real gradient steps
on a tiny model that must raise each loss's margin."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dpokit.config import LossConfig
from dpokit.errors import ConfigError
from dpokit.losses import LOSSES, LossInputs, beta_at, get_loss, resolve_loss_config

# ANCHORS.md: pi_w = -10, pi_l = -12, ref_w = ref_l = -11, beta = 0.1, so h = 2 and beta h = 0.2.
# Token counts (4 chosen, 6 rejected) only matter to losses on per-token means.


def golden(beta: float = 0.1, with_reference: bool = True) -> LossInputs:
    t = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
    return LossInputs(
        policy_chosen=t(-10), policy_rejected=t(-12),
        reference_chosen=t(-11) if with_reference else None, reference_rejected=t(-11) if with_reference else None,
        chosen_tokens=torch.tensor([4]), rejected_tokens=torch.tensor([6]), beta=beta)


def run(loss_type: str, x: LossInputs | None = None, **cfg):
    config = resolve_loss_config(LossConfig(loss_type=loss_type, **cfg))
    spec = get_loss(config.loss_type)
    x = x or golden(config.beta, spec.needs_reference)
    return spec.fn(x, config)


def close(value: torch.Tensor, expected: float, tol: float = 1e-6) -> bool:
    return abs(float(value.sum()) - expected) < tol


# ---- golden values ------------------------------------------------------------------------------


def test_dpo_golden_value_and_rewards():
    out = run("sigmoid")
    assert close(out.losses, 0.598139)  # log(1 + exp(-0.2))
    assert close(out.chosen_rewards, 0.1) and close(out.rejected_rewards, -0.1)
    assert out.token_loss is None


def test_cdpo_golden_value():
    assert close(run("sigmoid", label_smoothing=0.1).losses, 0.618139)  # 0.9 * 0.598139 + 0.1 * 0.798139


def test_robust_golden_value():
    assert close(run("robust", label_smoothing=0.1).losses, 0.573139)  # (0.9 * 0.598139 - 0.1 * 0.798139) / 0.8


def test_ipo_golden_value_with_sums():
    assert close(run("ipo", sequence_logps="sum").losses, 9.0)  # (2 - 1 / 0.2)^2


def test_ipo_averages_per_token_by_default():
    # means: pi_w -10/4, pi_l -12/6, ref_w -11/4, ref_l -11/6: h = -0.5 + 11/12 = 5/12; (5/12 - 5)^2
    out = run("ipo")
    assert close(out.losses, (5 / 12 - 5) ** 2)
    # the logged rewards are TRL's sums whatever form IPO uses: beta * (-10 + 11), beta * (-12 + 11)
    assert close(out.chosen_rewards, 0.1) and close(out.rejected_rewards, -0.1)


def test_dpo_at_initialisation_is_ln2():
    x = golden()
    x.policy_chosen, x.policy_rejected = x.reference_chosen.clone(), x.reference_rejected.clone()
    for loss_type, eps in [("sigmoid", 0.0), ("sigmoid", 0.1), ("robust", 0.1)]:
        assert close(run(loss_type, x, label_smoothing=eps).losses, math.log(2), 1e-12)


# ---- hand-worked values of the other losses (beta h = 0.2; r_w = +0.1, r_l = -0.1) ----------------


def test_hinge_value():
    assert close(run("hinge").losses, 0.8)  # relu(1 - 0.2)


def test_exo_pair_value():
    # sigmoid(.2)(log sigmoid(.2) - log(1 - 1e-3)) + sigmoid(-.2)(log sigmoid(-.2) - log 1e-3)
    # = 0.549834 * (-0.598139 + 0.0010005) + 0.450166 * (-0.798139 + 6.907755)
    assert close(run("exo_pair").losses, 2.4220146)


def test_nca_pair_value():
    # -log sigmoid(.1) - .5 log sigmoid(-.1) - .5 log sigmoid(.1) = 0.644397 + 0.372199 + 0.322199
    assert close(run("nca_pair").losses, 1.3387933)


def test_sppo_hard_value():
    assert close(run("sppo_hard").losses, 32.0)  # (1 - 5)^2 + (-1 + 5)^2


def test_apo_values():
    assert close(run("apo_zero").losses, 0.9500416)  # (1 - sigmoid(.1)) + sigmoid(-.1) = 2 * 0.475021
    assert close(run("apo_down").losses, 0.9751452)  # sigmoid(.1) + 1 - sigmoid(.2) = 0.524979 + 0.450166


def test_discopop_value():
    # m = sigmoid(0.2 / 0.05) = 0.982014; (1 - m) * 0.598139 + m * exp(-0.2) = 0.010758 + 0.804005
    assert close(run("discopop").losses, 0.8147631)


def test_simpo_value_is_reference_free_and_length_normalised():
    assert not LOSSES["simpo"].needs_reference
    out = run("simpo")  # paper defaults: beta 2.0, gamma 0.5
    # -log sigmoid(2 * (-10/4 + 12/6) - 0.5) = log(1 + e^1.5)
    assert close(out.losses, 1.7014133)
    assert close(out.chosen_rewards, -5.0) and close(out.rejected_rewards, -4.0)  # beta * per-token means
    assert out.token_loss is None


def test_orpo_value_and_nll():
    out = run("orpo")
    # log odds(m) = m - log(1 - e^m): chosen -2.5 + 0.085651 = -2.414350, rejected -2 + 0.145413 = -1.854587
    # lambda * -log sigmoid(-0.559763) = 0.1 * 1.011695
    assert close(out.losses, 0.10116946)
    assert close(out.token_loss, 10.0)  # -pi_w: summed over the chosen tokens; the loop divides by 4
    assert close(out.chosen_rewards, 0.1 * -2.5) and close(out.rejected_rewards, 0.1 * -2.0)


def test_orpo_log_odds_stay_finite_near_probability_one():
    x = golden(with_reference=False)
    x.policy_chosen = torch.tensor([-1e-9], dtype=torch.float64, requires_grad=True)
    out = run("orpo", x)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(x.policy_chosen.grad).all()


def test_rpo_alpha_adds_the_chosen_nll_to_any_loss():
    out = run("sigmoid", rpo_alpha=1.0)
    assert close(out.losses, 0.598139) and close(out.token_loss, 10.0)
    out = run("orpo", rpo_alpha=0.5)
    assert close(out.token_loss, 15.0)  # ORPO's own NLL (weight 1) plus 0.5


def test_sft_is_the_nll_alone():
    out = run("sft")
    assert close(out.losses, 0.0) and close(out.token_loss, 10.0)


def test_weighted_combination():
    out = run("sigmoid,sft", loss_weights=[1.0, 0.5])
    assert get_loss("sigmoid,sft").needs_reference
    assert close(out.losses, 0.598139) and close(out.token_loss, 5.0)
    assert close(out.chosen_rewards, 0.1)  # a combination with a reference logs beta * (pi - ref)
    out = run("sft,sigmoid")
    assert close(out.chosen_rewards, 0.1) and close(out.rejected_rewards, -0.1)  # whatever part comes first
    out = run("sigmoid,hinge", loss_weights=[0.5, 2.0])
    assert close(out.losses, 0.5 * 0.598139 + 2.0 * 0.8)
    with pytest.raises(ConfigError, match="weights for 2 losses"):
        resolve_loss_config(LossConfig(loss_type="sigmoid,sft", loss_weights=[1.0]))


def test_unknown_loss_names_the_supported_ones():
    with pytest.raises(ConfigError, match=r"unknown loss_type 'dpo'; supported: sigmoid, robust, ipo, hinge"):
        resolve_loss_config(LossConfig(loss_type="dpo"))
    with pytest.raises(ConfigError, match="'kto' in 'sigmoid,kto'"):
        get_loss("sigmoid,kto")


def test_paper_default_beta_unless_set():
    assert LossConfig().beta is None  # the registry resolves it, not the config
    assert resolve_loss_config(LossConfig()).beta == 0.1
    assert resolve_loss_config(LossConfig(loss_type="simpo")).beta == 2.0
    assert resolve_loss_config(LossConfig(loss_type="simpo", beta=1.0)).beta == 1.0


def test_beta_schedules():
    assert beta_at(0.1, "constant", 50, 100) == 0.1
    assert beta_at(0.1, "linear", 0, 100) == pytest.approx(0.1)
    assert beta_at(0.1, "linear", 50, 100) == pytest.approx(0.15)  # the guide's beta * (1 + step / max_steps)
    assert beta_at(0.1, "cosine", 0, 100) == pytest.approx(0.1)
    assert beta_at(0.1, "cosine", 50, 100) == pytest.approx(0.15)
    assert beta_at(0.1, "cosine", 25, 100) == pytest.approx(0.1 * (1 + (1 - math.cos(math.pi / 4)) / 2))
    assert beta_at(0.1, "cosine", 100, 100) == pytest.approx(0.2)


# ---- a few gradient steps on a toy batch raise each loss's margin -----------------------------------

TOY = [
    ("The capital of France is", " Paris.", " a large banana."),
    ("Two plus two equals", " four.", " seven hundred."),
    ("Water boils at", " one hundred degrees.", " midnight."),
    ("The sky on a clear day is", " blue.", " made of cheese."),
]


@pytest.fixture(scope="module")
def toy(llama_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from dpokit.data.collate import collate
    from dpokit.data.pairs import TokenizedPair

    tok = lambda s: tiny_tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    pairs = [TokenizedPair([tiny_tokenizer.bos_token_id] + tok(p), tok(c) + [tiny_tokenizer.eos_token_id],
                           tok(r) + [tiny_tokenizer.eos_token_id]) for p, c, r in TOY]
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    return model, collate(pairs, "padded", tiny_tokenizer.pad_token_id)


def margin_after_steps(loss_type: str, model, batch, steps: int = 3, head_start: float = 0.0) -> tuple[float, float]:
    """The loss's margin (mean chosen minus rejected reward) before and after ``steps`` Adam steps.

    ``head_start`` lowers the reference's chosen log-probs and raises its rejected ones by that
    much, so the policy starts with ``h = 2 * head_start``.
    """
    from dpokit.logps import SequenceScorer
    from dpokit.tasks.preference import loss_inputs

    torch.manual_seed(0)
    policy = copy.deepcopy(model).train()
    cfg = resolve_loss_config(LossConfig(loss_type=loss_type))
    spec = get_loss(cfg.loss_type)
    with torch.no_grad():
        reference = SequenceScorer(model)(batch).detach() if spec.needs_reference else None
    if reference is not None:
        shift = torch.full_like(reference.logps, head_start)  # (2B,)
        shift[batch.num_pairs :] *= -1
        reference.logps = reference.logps - shift
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    margins = []
    for _ in range(steps + 1):
        logps = SequenceScorer(policy)(batch)
        out = spec.fn(loss_inputs(logps, reference, cfg.beta), cfg)
        margins.append(float((out.chosen_rewards - out.rejected_rewards).mean()))
        loss = out.losses.mean()
        if out.token_loss is not None:
            loss = loss + out.token_loss / logps.tokens[: logps.num_pairs].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return margins[0], margins[-1]


@pytest.mark.parametrize("loss_type", [n for n in LOSSES if n not in ("sft", "discopop")] + ["sigmoid,sft"])
def test_gradient_steps_raise_the_margin(loss_type, toy):
    model, batch = toy
    before, after = margin_after_steps(loss_type, model, batch)
    if get_loss(loss_type).needs_reference:
        assert before == 0.0  # policy == reference at the start
    assert after > before + 1e-3, (loss_type, before, after)


def test_discopop_raises_the_margin_past_its_bump(toy):
    """DiscoPOP is non-convex near h = 0 (Lu et al. 2024): with tau 0.05 its slope at beta h = 0 is
    +0.784, so from policy == reference a step lowers the margin toward a local minimum near
    beta h = -0.12; past the bump (beta h > 0.07) it raises the margin like DPO."""
    z = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    x = golden()
    x.policy_chosen = x.reference_chosen + z / x.beta
    x.policy_rejected = x.reference_rejected.clone()
    run("discopop", x).losses.sum().backward()
    assert abs(float(z.grad) - 0.784) < 1e-3  # d/dz at 0: 5 * (1 - ln 2) - 0.25 - 0.5
    model, batch = toy
    before, after = margin_after_steps("discopop", model, batch, head_start=1.5)  # beta h = 0.3 at the start
    assert before == pytest.approx(0.3) and after > before + 1e-3


@pytest.mark.parametrize("keys, ignored", [
    ({"loss_type": "ipo", "label_smoothing": 0.1}, ["label_smoothing=0.1"]),
    ({"loss_type": "sigmoid", "simpo_gamma": 1.0, "orpo_lambda": 0.2}, ["simpo_gamma=1.0", "orpo_lambda=0.2"]),
    ({"loss_type": "simpo", "label_smoothing": 0.1, "simpo_gamma": 1.0}, []),
    ({"loss_type": "sigmoid,orpo", "orpo_lambda": 0.2}, []),  # a combination reads what its parts read
])
def test_settings_the_loss_does_not_read_are_named(keys, ignored):
    from dpokit.losses import ignored_settings

    assert ignored_settings(LossConfig(**keys)) == ignored


def test_rewards_are_per_token_exactly_for_reference_free_losses():
    """TRL's definitions do not follow ``sequence_logps``: sums with a reference, means without."""
    from dpokit.losses import rewards_per_token

    assert rewards_per_token("simpo") and rewards_per_token("orpo") and rewards_per_token("sft")
    assert not rewards_per_token("ipo") and not rewards_per_token("sigmoid") and not rewards_per_token("sft,sigmoid")
    for form in ("sum", "mean"):
        out = run("sigmoid", sequence_logps=form)
        assert close(out.chosen_rewards, 0.1) and close(out.rejected_rewards, -0.1)
        out = run("simpo", sequence_logps=form)
        assert close(out.chosen_rewards, 2.0 * -10 / 4) and close(out.rejected_rewards, 2.0 * -12 / 6)
