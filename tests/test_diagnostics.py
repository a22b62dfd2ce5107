"""Training diagnostics: each warning sign of the guides fires once, at the documented threshold,
and a healthy run stays quiet; a non-finite loss stops the run before the update."""

from __future__ import annotations

import json

import pytest
import torch

from dpokit.diagnostics import Diagnostics
from dpokit.errors import DpokitError


def row(step: int, loss: float, margin: float = 0.0, chosen: float = 0.0, **extra) -> dict:
    return {"step": step, "loss": loss, "rewards/margins": margin, "rewards/chosen": chosen, **extra}


def feed(diag: Diagnostics, rows: list[dict]) -> list[tuple[int, str]]:
    """(step, message) for every warning raised while feeding ``rows``."""
    return [(r["step"], m) for r in rows for m in diag.observe(r)]


def diagnostics(**kw) -> tuple[Diagnostics, list[str]]:
    printed: list[str] = []
    kw.setdefault("total_steps", 200)
    kw.setdefault("warmup_steps", 20)
    return Diagnostics(print_fn=printed.append, **kw), printed


def test_healthy_run_is_quiet():
    # The quick-start guide's "Good Training": loss falls, margin and chosen reward rise.
    diag, printed = diagnostics(total_steps=1000, warmup_steps=100)
    rows = [row(1, 0.693147), row(100, 0.52, 0.35, 0.2), row(200, 0.45, 0.6, 0.25), row(300, 0.35, 0.8, 0.3),
            row(400, 0.33, 0.9, 0.3), row(500, 0.28, 1.2, 0.35), row(750, 0.25, 1.4, 0.3), row(1000, 0.21, 1.5, 0.3)]
    assert feed(diag, rows) == [] and printed == []


def test_loss_stuck_at_ln2_after_warmup():
    diag, printed = diagnostics()
    rows = [row(1, 0.693147)] + [row(s, 0.693147 + (0.004 if s % 20 else -0.004)) for s in range(10, 201, 10)]
    fired = feed(diag, rows)
    # five rows after warmup (steps 30..70), and 70 >= warmup + 10% of the run (40)
    assert [s for s, _ in fired] == [70]
    assert "not learning" in fired[0][1] and "--beta" in fired[0][1] and printed == [fired[0][1]]


def test_no_stuck_warning_during_warmup_or_when_the_loss_moves():
    diag, _ = diagnostics(warmup_steps=150)
    assert feed(diag, [row(1, 0.693147)] + [row(s, 0.693) for s in range(10, 151, 10)]) == []
    diag, _ = diagnostics()
    assert feed(diag, [row(1, 0.693147)] + [row(s, 0.693 - s / 2000) for s in range(10, 201, 10)]) == []


def test_stuck_is_measured_from_the_first_row_for_any_loss():
    diag, _ = diagnostics()  # IPO starts at (1 / (2 beta))^2 = 25: tolerance 1% of that
    fired = feed(diag, [row(1, 25.0)] + [row(s, 25.0 - 0.2) for s in range(10, 101, 10)])
    assert [s for s, _ in fired] == [70]


def test_negative_margin_warns_after_three_windows():
    # The guide's "Bad Training (Diverging)".
    diag, _ = diagnostics()
    rows = [row(1, 0.693, 0.0), row(10, 0.70, -0.05), row(20, 0.95, -0.5), row(30, 1.85, -1.2)]
    fired = [m for _, m in feed(diag, rows)]
    assert any("reward margin" in m and "--lr" in m for m in fired)
    diag, _ = diagnostics()
    assert feed(diag, [row(1, 0.693, 0.0), row(10, 0.69, -0.01), row(20, 0.69, -0.02), row(30, 0.68, 0.01),
                       row(40, 0.68, -0.01), row(50, 0.67, -0.01)]) == []


def test_chosen_logps_falling():
    diag, _ = diagnostics()
    # rewards/chosen / beta over 10-token answers: 0, -0.05, -0.15, -0.2, -0.3 nats per token:
    # more than 0.1 below the start from step 20 on
    rows = [row(s, loss, margin, chosen, **{"tokens/chosen": 10.0}) for s, loss, margin, chosen in (
        (1, 0.693, 0.0, 0.0), (10, 0.6, 0.2, -0.05), (20, 0.5, 0.4, -0.15), (30, 0.45, 0.5, -0.2),
        (40, 0.4, 0.6, -0.3), (50, 0.35, 0.7, -0.4))]
    fired = feed(diag, rows)
    assert [s for s, _ in fired] == [40]
    assert "--rpo-alpha" in fired[0][1]
    # The same summed drop over 100-token answers is 10x smaller per token: no warning.
    diag, _ = diagnostics()
    assert feed(diag, [{**r, "tokens/chosen": 100.0} for r in rows]) == []


def test_chosen_drop_of_per_token_rewards_ignores_lengths():
    diag, _ = diagnostics()
    diag.per_token = True  # reference-free losses log beta x per-token means
    rows = [row(s, 0.6, 0.5, chosen, **{"tokens/chosen": 100.0}) for s, chosen in (
        (1, 0.0), (10, -0.005), (20, -0.015), (30, -0.02), (40, -0.03))]  # -0.15 nat/token at step 20
    assert [s for s, _ in feed(diag, rows)] == [40]


def test_chosen_drop_uses_the_logged_beta():
    diag, _ = diagnostics(beta=0.1)  # with a beta schedule the row's beta counts: 0.3 / 0.5 / 10 = 0.06
    rows = [row(1, 0.693, 0.0, 0.0, **{"tokens/chosen": 10.0})]
    rows += [row(s, 0.6, 0.5, -0.3, beta=0.5, **{"tokens/chosen": 10.0}) for s in (10, 20, 30, 40)]
    assert feed(diag, rows) == []


def test_rewards_per_token_follows_the_loss():
    from dpokit.losses import rewards_per_token

    assert not rewards_per_token("sigmoid") and not rewards_per_token("ipo") and rewards_per_token("simpo")
    assert rewards_per_token("orpo,sft") and not rewards_per_token("orpo,sigmoid")  # IPO now logs TRL's sums


def test_loss_rising():
    diag, _ = diagnostics()
    fired = feed(diag, [row(1, 0.693), row(10, 0.70), row(20, 0.75), row(30, 0.80), row(40, 0.95)])
    assert [s for s, _ in fired] == [30] and "risen" in fired[0][1]  # 0.693 < 0.70 < 0.75 < 0.80
    diag, _ = diagnostics()  # small wobble above the best loss: not a divergence
    assert feed(diag, [row(1, 0.69), row(10, 0.5), row(20, 0.51), row(30, 0.52), row(40, 0.53)]) == []


def test_eval_and_non_finite_rows_are_ignored():
    diag, _ = diagnostics()
    assert diag.observe({"step": 10, "eval_loss": 5.0, "eval_rewards/margins": -3.0}) == []
    assert diag.observe(row(1, float("nan"))) == []
    assert diag.rows == []


# ---- a non-finite loss stops the run before the update ------------------------------------------


def test_non_finite_loss_stops_before_the_update(tmp_path, llama_dir):
    from dpokit.config import Config, DataConfig, LossConfig, ModelConfig, OutputConfig, TrainConfig
    from dpokit.train import setup, train_step

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": " Yes, fine.", "rejected": " No."}) + "\n"
                            for i in range(4)))
    config = Config(model=ModelConfig(name_or_path=str(llama_dir), precision="fp32", device="cpu"),
                    data=DataConfig(path=str(data), max_length=64, layout="padded"),
                    loss=LossConfig(), train=TrainConfig(steps=2, batch_size=2, lr=1e-3),
                    output=OutputConfig(dir=str(tmp_path / "out"), progress=False))
    run = setup(config)
    head = run.policy.get_output_embeddings().weight
    with torch.no_grad():
        head[:, 0] = float("nan")  # every logit becomes NaN
    before = {n: p.detach().clone() for n, p in run.policy.named_parameters()}
    with pytest.raises(DpokitError, match=r"step 1: the loss is nan; the run is stopped before the update"):
        train_step(run)
    assert run.state.step == 0
    for n, p in run.policy.named_parameters():
        assert torch.equal(p.nan_to_num(), before[n].nan_to_num()), n
