"""``dpokit eval``: the run's own final evaluation reproduced from its saved model, the golden values of a
model against itself, the breakdowns by length, and the mistakes a user can make."""

from __future__ import annotations

import json

import pytest

from dpokit.cli import main
from dpokit.evaluate import PairScore, by_length, by_longer, run_beta


def _last_eval(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval_loss" in r][-1]


@pytest.mark.parametrize("ref", [["--ref", "tiny"], []])
def test_eval_reproduces_the_runs_final_evaluation(aligned_run, ref, tmp_path, capsys):
    """Same data, same weights: every eval_* number the run logged at its last step, to 1e-6, whether the
    reference is named or read from the run's saved config."""
    out = tmp_path / "results.json"
    assert main(["eval", "--model", str(aligned_run / "run" / "final"), *ref, "--data",
                 str(aligned_run / "held.jsonl"), "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    logged = _last_eval(aligned_run / "run")
    assert logged["step"] == 20
    names = [k for k in logged if k.startswith("eval_")]
    assert len(names) >= 12
    for name in names:
        assert result["metrics"][name] == pytest.approx(logged[name], abs=1e-6), name
    assert result["pairs"] == 16 and result["reference"] == "tiny" and result["beta"] == 0.1
    assert result["metrics"]["eval_rewards/accuracies"] > 0.6  # it did learn
    printed = capsys.readouterr().out
    assert "preference accuracy" in printed and f"{logged['eval_rewards/accuracies']:.3f}" in printed
    assert "by length" in printed and "by which answer is longer" in printed


def test_a_model_against_itself_has_no_preference(tiny_dir, aligned_run, tmp_path):
    """Policy == reference: every reward is 0, so the DPO loss is ln 2 and strict accuracy 0
    (ANCHORS.md); the breakdowns add up to all pairs."""
    out = tmp_path / "self.json"
    assert main(["eval", "--model", "tiny", "--ref", "tiny", "--data", str(aligned_run / "held.jsonl"),
                 "--precision", "fp32", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    m = result["metrics"]
    assert m["eval_loss"] == pytest.approx(0.693147, abs=1e-6)
    assert m["eval_rewards/margins"] == 0 and m["eval_rewards/accuracies"] == 0
    assert m["eval_policy_preference"] == m["eval_reference_preference"]
    assert sum(b["pairs"] for b in result["by_length"]) == 16 == sum(b["pairs"] for b in result["by_longer"])


def _score(chosen: int, rejected: int, margin: float, own: bool = True) -> PairScore:
    return PairScore(chosen, rejected, margin, own, None)


def test_breakdowns_by_length_and_by_the_longer_answer():
    scores = [_score(10, 5, 0.5), _score(3, 3, -0.1), _score(40, 20, 1.0, False), _score(8, 30, -0.2),
              _score(6, 6, 0.3)]
    buckets = by_length(scores, buckets=2)  # totals 15, 6, 60, 38, 12 -> [6, 12] and [15, 38, 60]
    assert [b["bucket"] for b in buckets] == ["6-12 tokens", "15-60 tokens"]
    assert [b["pairs"] for b in buckets] == [2, 3]
    assert buckets[0]["accuracy"] == 0.5 and buckets[1]["accuracy"] == pytest.approx(2 / 3)
    assert buckets[1]["margin"] == pytest.approx((0.5 + 1.0 - 0.2) / 3)
    assert buckets[1]["policy_preference"] == pytest.approx(2 / 3)
    longer = {b["bucket"]: b for b in by_longer(scores)}
    assert longer["chosen longer"]["pairs"] == 2 and longer["chosen longer"]["accuracy"] == 1.0
    assert longer["same length"]["pairs"] == 2 and longer["rejected longer"]["accuracy"] == 0.0
    assert len(by_length(scores[:1], buckets=4)) == 1


def test_beta_is_the_runs_last_step_beta(tmp_path):
    from dpokit.config import LossConfig

    (tmp_path / "trainer_state.json").write_text(json.dumps({"step": 10, "total_steps": 20}))
    # linear schedule: beta * (1 + step / total) at the last step taken, 9 (0-based) of 20
    assert run_beta(str(tmp_path), LossConfig(beta=0.1, beta_schedule="linear")) == pytest.approx(0.145)
    assert run_beta(str(tmp_path / "none"), LossConfig(beta=0.2, beta_schedule="linear")) == 0.2


def test_a_model_without_a_saved_config_needs_ref(llama_dir, aligned_run, capsys):
    assert main(["eval", "--model", str(llama_dir), "--data", str(aligned_run / "held.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has no dpokit_config.yaml" in err and "fix: pass --ref" in err


def test_bad_data_stops_eval_before_a_model_loads(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "c"}\n', encoding="utf-8")
    assert main(["eval", "--model", str(tmp_path / "no_such_run" / "final"), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl, line 1" in err and "rejected" in err and "fix:" in err


def test_saved_config_keeps_a_start_model_that_moved_and_notes_one_it_cannot_read(tmp_path):
    from dpokit.evaluate import run_reference, saved_config

    (tmp_path / "dpokit_config.yaml").write_text("model:\n  weights: /no/such/start\nloss:\n  beta: 0.3\n")
    config = saved_config(str(tmp_path))
    assert config.loss.beta == 0.3 and run_reference(config) == "/no/such/start"  # named as the reference
    (tmp_path / "dpokit_config.yaml").write_text("model:\n  no_such_key: 1\n")
    notes = []
    assert saved_config(str(tmp_path), notes.append) is None
    assert notes and notes[0].startswith(f"note: cannot read {tmp_path / 'dpokit_config.yaml'}")
