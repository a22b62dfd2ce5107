"""ORPO's NLL term over the completion (the paper) or over prompt and completion
(``orpo_prompt_nll``, as TRL and the ORPO authors' code do): hand-worked values, and one real
training step in every layout whose update is minus the gradient of TRL's ORPO loss."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from dpokit.config import LossConfig
from dpokit.data.collate import LAYOUTS
from dpokit.losses import LossInputs, get_loss, ignored_settings, needs_prompt_logps


def golden(prompt: bool) -> LossInputs:
    """pi_w = -10 over 4 tokens, pi_l = -12 over 6; the chosen prompt's 2 scored tokens sum to -3."""
    t = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
    return LossInputs(t(-10), t(-12), None, None, torch.tensor([4]), torch.tensor([6]), beta=0.1,
                      chosen_prompt=t(-3) if prompt else None, chosen_prompt_tokens=torch.tensor([2]) if prompt else None)


def test_orpo_nll_over_the_completion_or_also_the_prompt():
    paper, trl = LossConfig(loss_type="orpo"), LossConfig(loss_type="orpo", orpo_prompt_nll=True)
    out = get_loss("orpo").fn(golden(prompt=True), paper)
    assert abs(float(out.token_loss) - 10.0) < 1e-12  # -pi_w; the loop divides by the 4 chosen tokens
    assert abs(float(out.losses) - 0.10116946) < 1e-8  # the odds-ratio term (test_losses.py) is unchanged
    out = get_loss("orpo").fn(golden(prompt=True), trl)
    assert abs(float(out.token_loss) - 13.0) < 1e-12  # -(pi_w + prompt); the loop divides by 4 + 2 tokens
    assert abs(float(out.losses) - 0.10116946) < 1e-8
    out = get_loss("orpo").fn(golden(prompt=True), LossConfig(loss_type="orpo", orpo_prompt_nll=True, rpo_alpha=0.5))
    assert abs(float(out.token_loss) - 18.0) < 1e-12  # RPO's term stays over the completion: 13 + 0.5 * 10
    with pytest.raises(ValueError, match="prompt_logps=True"):
        get_loss("orpo").fn(golden(prompt=False), trl)


def test_only_orpo_with_the_setting_asks_for_prompt_logps():
    assert needs_prompt_logps(LossConfig(loss_type="orpo", orpo_prompt_nll=True))
    assert needs_prompt_logps(LossConfig(loss_type="sigmoid,orpo", orpo_prompt_nll=True))
    assert not needs_prompt_logps(LossConfig(loss_type="orpo"))
    assert not needs_prompt_logps(LossConfig(loss_type="sigmoid", orpo_prompt_nll=True))
    assert ignored_settings(LossConfig(loss_type="sigmoid", orpo_prompt_nll=True)) == ["orpo_prompt_nll=True"]
    assert ignored_settings(LossConfig(loss_type="orpo", orpo_prompt_nll=True)) == []


def trl_orpo_loss(model, pairs, lam: float, prompt_nll: bool) -> torch.Tensor:
    """TRL 1.16's ORPOTrainer loss from each sequence run alone: ``nll - mean(lam log sigmoid(log
    odds))``, the odds from mean completion log-probs, the NLL a mean over the batch's chosen tokens:
    every token after the first (TRL, ``prompt_nll``) or the completion's (the paper)."""
    nll, count, ratios = 0.0, 0, []
    for pair in pairs:
        means = []
        for completion in (pair.chosen_ids, pair.rejected_ids):
            ids = torch.tensor([pair.prompt_ids + completion])  # (1, L)
            logps = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)  # (L - 1, V)
            logps = logps.gather(-1, ids[0, 1:, None]).squeeze(-1)  # (L - 1,) token t + 1
            answer = logps[len(pair.prompt_ids) - 1 :]
            means.append(answer.mean())
            if completion is pair.chosen_ids:
                scored = logps if prompt_nll else answer
                nll, count = nll - scored.sum(), count + scored.numel()
        odds = [m - torch.log(-torch.expm1(m)) for m in means]
        ratios.append(F.logsigmoid(odds[0] - odds[1]))
    return nll / count - (lam * torch.stack(ratios)).mean()


@pytest.mark.parametrize("prompt_nll", [False, True], ids=["paper", "prompt"])
def test_orpo_step_is_minus_trls_gradient_in_every_layout(tmp_path, llama_dir, prompt_nll):
    """One plain-SGD step (lr 1) over all 8 pairs: the weights move by minus the gradient of TRL's ORPO
    loss, in each layout; the NLL logged is TRL's ``nll_loss``. The two settings move differently."""
    from test_accumulation import PAIRS

    from dpokit.config import Config, DataConfig, ModelConfig, OutputConfig, TrainConfig
    from dpokit.train import setup, train_step

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
    expected = None
    for layout in LAYOUTS:
        config = Config(
            model=ModelConfig(name_or_path=str(llama_dir), precision="fp32", device="cpu"),
            data=DataConfig(path=str(data), max_length=64, layout=layout),
            loss=LossConfig(loss_type="orpo", orpo_prompt_nll=prompt_nll),
            train=TrainConfig(steps=1, batch_size=8, max_grad_norm=0.0, warmup_steps=0, scheduler="constant"),
            output=OutputConfig(dir=str(tmp_path / layout), progress=False))
        run = setup(config)
        if expected is None:  # TRL's loss on a copy of the starting weights
            start = copy.deepcopy(run.policy)
            loss = trl_orpo_loss(start, run.task.train, config.loss.orpo_lambda, prompt_nll)
            loss.backward()
            expected = {n: -p.grad for n, p in start.named_parameters()}
            with torch.no_grad():
                trl_nll = float(trl_orpo_loss(start, run.task.train, 0.0, prompt_nll))
        run.optimizer = torch.optim.SGD([p for p in run.policy.parameters() if p.requires_grad], lr=1.0)
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda _: 1.0)
        before = {n: p.detach().clone() for n, p in run.policy.named_parameters()}
        train_step(run)
        assert run.window.means()["nll_loss"] == pytest.approx(trl_nll, rel=1e-6), layout
        scale = max(float(g.abs().max()) for g in expected.values())
        worst = max(float((p.detach() - before[n] - expected[n]).abs().max()) for n, p in run.policy.named_parameters())
        assert scale > 1e-3 and worst < 1e-5 * scale, (layout, worst, scale)
    with torch.no_grad():
        other = float(trl_orpo_loss(start, run.task.train, 0.0, not prompt_nll))
    # The prompt tokens change the NLL (a random model: both near ln V, yet ~5e-3 apart, 700 times the
    # tolerance of the nll_loss check above).
    assert abs(other - trl_nll) > 1e-3
