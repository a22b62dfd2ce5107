"""The loop's watch over a run: early stopping on a rising eval loss, the best checkpoint kept out
of the rotation and made final/, the mirror, the model card, and MFU in every row."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from dpokit.cli import main


@pytest.mark.slow
def test_early_stopping_keeps_and_loads_the_best_checkpoint(tmp_path, tiny_dir, capsys):
    from huggingface_hub import ModelCard

    out, mirror = tmp_path / "run", tmp_path / "bucket"
    # A learning rate far too high for the tiny model: the eval loss falls, then climbs.
    code = main(["train", "--demo", "--model", str(tiny_dir), "--output", str(out), "--steps", "24", "--lr", "3e-3",
                 "--eval-steps", "3", "--logging-steps", "3", "--batch-size", "4", "--grad-accum", "1",
                 "--warmup-steps", "0", "--scheduler", "constant", "--early-stopping-patience", "3",
                 "--load-best-model-at-end", "true", "--save-steps", "6", "--save-total-limit", "1",
                 "--mirror-dir", str(mirror), "--progress", "false", "--precision", "fp32"])
    printed = capsys.readouterr().out
    assert code == 0, printed[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
    best = min(evals, key=evals.get)
    last = max(r["step"] for r in rows)
    assert last < 24 and "early stopping: eval_loss has not improved" in printed
    assert sum(1 for s in evals if s > best) == 3  # patience 3: three evaluations without improvement
    # The best checkpoint outlives the rotation (limit 1 keeps the newest besides it) and is final/.
    names = sorted(p.name for p in out.glob("checkpoint-*"))
    assert f"checkpoint-{best}" in names and len(names) <= 2
    assert f"final/ holds the best checkpoint, {out / f'checkpoint-{best}'}" in printed
    final, kept = load_file(str(out / "final" / "model.safetensors")), load_file(
        str(out / f"checkpoint-{best}" / "model.safetensors"))
    assert all(final[k].equal(kept[k]) for k in kept)
    assert json.loads((out / "final" / "trainer_state.json").read_text())["weights_step"] == best  # eval's beta
    # The mirror holds the checkpoints that remain, the final model and the logs.
    assert sorted(p.name for p in mirror.glob("checkpoint-*")) == names
    assert (mirror / "dpo_model" / "model.safetensors").is_file() and (mirror / "logs" / "metrics.jsonl").is_file()
    card = ModelCard.load(out / "final" / "README.md")
    assert card.data.base_model == str(tiny_dir) and "dpo" in card.data.tags
    assert f"holds the weights of step {best}, the best evaluation" in card.text  # its table is of that step
    assert f"eval of step {best} (`metrics.jsonl`)" in card.text
    train_rows = [r for r in rows if "loss" in r]
    assert all(r["mfu"] > 0 and r["seconds_per_step"] > 0 for r in train_rows)


def test_early_stopping_needs_eval_data(tmp_path, llama_dir, capsys):
    data = tmp_path / "d.jsonl"
    assert main(["data", "sample", "--output", str(data), "--n", "8"]) == 0
    code = main(["train", "--data", str(data), "--model", str(llama_dir), "--output", str(tmp_path / "o"),
                 "--early-stopping-patience", "2", "--progress", "false"])
    err = capsys.readouterr().err
    assert code == 2 and "no evaluation data" in err and "--eval-fraction" in err


def test_the_best_checkpoint_is_kept_out_of_the_rotation_and_named(tmp_path, llama_dir, capsys):
    """Without ``load_best_model_at_end`` the run still names its best checkpoint at the end, the one
    that ``save_total_limit`` kept besides the newest. The learning rate is far too high, so the eval
    loss jumps about and its best falls inside the run."""
    data = tmp_path / "d.jsonl"
    assert main(["data", "sample", "--output", str(data), "--n", "24"]) == 0
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--model", str(llama_dir), "--output", str(out), "--steps", "6",
                 "--save-steps", "1", "--save-total-limit", "1", "--eval-steps", "2", "--eval-fraction", "0.2",
                 "--logging-steps", "1", "--batch-size", "2", "--grad-accum", "2", "--lr", "5e-2", "--scheduler",
                 "constant", "--warmup-steps", "0", "--max-length", "96", "--precision", "fp32", "--device", "cpu",
                 "--progress", "false"]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r and r["step"]}
    best = min(evals, key=evals.get)
    assert best < 6, evals  # inside the run: a checkpoint holds it
    assert sorted(p.name for p in out.glob("checkpoint-*")) == sorted({f"checkpoint-{best}", "checkpoint-5"})
    assert f"best checkpoint: {out / f'checkpoint-{best}'} (eval_loss {evals[best]:.6g} at step {best})" in printed


def test_the_watchs_state_through_a_checkpoint_decides_as_an_uninterrupted_run():
    """What a checkpoint keeps of the watch (its JSON `state_dict`): the diagnostics' rows and the
    warnings already given, and the early stopper. A run resumed between the windows of a diverging
    margin warns at the same step as the run that never stopped, and never repeats a warning."""
    from dpokit.config import Config
    from dpokit.diagnostics import Diagnostics
    from dpokit.watch import Watch

    def watch(printed: list[str]) -> Watch:
        return Watch(Config(), True, Diagnostics(total_steps=200, warmup_steps=20, print_fn=printed.append), None)

    def row(step: int, loss: float, margin: float) -> dict:
        return {"step": step, "loss": loss, "rewards/margins": margin, "rewards/chosen": 0.0}

    # 1.2 above ln 2 after warmup: the loss is rising; then three margins below the first one.
    rows = [row(1, 0.693, 0.0), row(30, 0.70, -0.05), row(40, 0.95, -0.5), row(50, 1.85, -1.2), row(60, 1.9, -1.3)]
    evals = [(30, 0.7), (50, 0.9)]
    whole_printed: list[str] = []
    whole = watch(whole_printed)
    fired = [(r["step"], m) for r in rows for m in whole.diagnostics.observe(r)]
    for step, loss in evals:
        whole.evaluated({"step": step, "eval_loss": loss, "eval_rewards/margins": 0.0})
    assert any("reward margin" in m for _, m in fired)

    first_printed: list[str] = []
    first = watch(first_printed)
    before = [(r["step"], m) for r in rows[:3] for m in first.diagnostics.observe(r)]
    first.evaluated({"step": 30, "eval_loss": 0.7, "eval_rewards/margins": 0.0})
    state = json.loads(json.dumps(first.state_dict()))  # as trainer_state.json holds it
    resumed_printed: list[str] = []
    resumed = watch(resumed_printed)
    resumed.load_state_dict(state)
    after = [(r["step"], m) for r in rows[3:] for m in resumed.diagnostics.observe(r)]
    resumed.evaluated({"step": 50, "eval_loss": 0.9, "eval_rewards/margins": 0.0})
    assert before + after == fired and first_printed + resumed_printed == whole_printed
    assert resumed.state_dict() == whole.state_dict()
    assert (resumed.stopper.best_step, resumed.stopper.best_value) == (30, 0.7)
