"""End to end on the built-in tiny model: train (loss falls, accuracy rises), load the output with
transformers, generate with `dpokit generate`."""

from __future__ import annotations

import json

import pytest

from dpokit.cli import main

TRL_NAMES = ["loss", "grad_norm", "learning_rate", "epoch", "num_tokens", "rewards/chosen", "rewards/rejected",
             "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected", "logits/chosen",
             "logits/rejected"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("e2e")
    data = root / "pairs.jsonl"
    assert main(["data", "sample", "--output", str(data), "--n", "64", "--seed", "1"]) == 0
    held = root / "held.jsonl"
    assert main(["data", "sample", "--output", str(held), "--n", "24", "--seed", "2"]) == 0
    out = root / "run"
    code = main(["train", "--data", str(data), "--eval-data", str(held), "--model", "tiny", "--steps", "30",
                 "--batch-size", "8", "--grad-accum", "2", "--lr", "1e-4", "--logging-steps", "7",
                 "--save-steps", "20", "--max-length", "128", "--output", str(out), "--precision", "fp32",
                 "--eval-on-start", "--progress", "false"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, rows


def test_metrics_rows_use_trl_names_and_log_first_and_last_steps(trained):
    _, rows = trained
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 7, 14, 21, 28, 30]
    for row in train_rows:
        assert all(name in row for name in TRL_NAMES), set(TRL_NAMES) - set(row)
    assert train_rows[0]["loss"] == pytest.approx(0.693147, abs=1e-4)  # policy == reference at step 1
    assert train_rows[0]["rewards/accuracies"] == 0.0


def test_training_moves_metrics_the_right_way(trained):
    _, rows = trained
    train_rows = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 0.1
    assert train_rows[-1]["rewards/margins"] > 0.1
    assert train_rows[-1]["rewards/accuracies"] > 0.8
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
    assert evals[0]["epoch"] == 0 and evals[-1]["epoch"] == train_rows[-1]["epoch"]  # as TRL's eval rows
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert evals[-1]["eval_rewards/accuracies"] >= 0.7
    assert evals[-1]["eval_policy_preference"] > evals[0]["eval_policy_preference"]


def test_output_is_a_huggingface_model(trained):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    out, _ = trained
    final = out / "final"
    assert (final / "model.safetensors").exists() and (final / "dpokit_config.yaml").exists()
    assert (out / "config.yaml").exists() and (out / "checkpoint-20" / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = generator("Explain gravity.", max_new_tokens=12, do_sample=False)[0]["generated_text"]
    assert text.startswith("Explain gravity.") and len(text) > len("Explain gravity.")
    assert any(not torch.equal(a, b) for a, b in zip(
        model.state_dict().values(),
        AutoModelForCausalLM.from_pretrained(out / "checkpoint-20").state_dict().values()))


def test_generate_command_prints_words(trained, capsys, tmp_path):
    out, _ = trained
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is a volcano?\nExplain recycling.\n")
    assert main(["generate", "--model", str(out / "final"), "--prompt", "Explain quantum computing",
                 "--prompts-file", str(prompts), "--max-new-tokens", "16", "--greedy"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("### ") == 3
    answers = [block.split("\n", 1)[1] for block in printed.split("### ")[1:]]
    assert all(sum(ch.isalpha() for ch in a) > 10 for a in answers)


def test_weights_continue_from_an_earlier_output(trained, tmp_path):
    """Sequential multi-objective DPO: --weights starts policy and reference from an earlier output."""
    import torch
    from transformers import AutoModelForCausalLM

    from dpokit.configure import resolve
    from dpokit.train import setup

    out, _ = trained
    config, _, _ = resolve(["--data", str(out.parent / "held.jsonl"), "--weights", str(out / "final"),
                            "--output", str(tmp_path / "next"), "--precision", "fp32"])
    run = setup(config)
    earlier = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    for name, tensor in run.policy.state_dict().items():
        assert torch.equal(tensor, earlier[name]), name
    run.log.close()


@pytest.mark.parametrize("flags, has_nll", [(["--loss-type", "orpo"], True), (["--rpo-alpha", "1.0"], True),
                                            (["--loss-type", "sft"], True), ([], False)])
def test_logged_loss_includes_the_token_term(tmp_path, tiny_dir, flags, has_nll):
    """``loss`` is what the step minimises: pair loss + the token-averaged NLL term, which is also
    logged alone as ``nll_loss``."""
    data = tmp_path / "pairs.jsonl"
    assert main(["data", "sample", "--output", str(data), "--n", "8"]) == 0
    assert main(["train", "--data", str(data), "--model", str(tiny_dir), "--steps", "1", "--batch-size", "4",
                 "--precision", "fp32", "--progress", "false", "--output", str(tmp_path / "out"), *flags]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert all("loss" in r and not any(k.startswith("eval_") for k in r) for r in rows)  # no eval data, no eval
    row = rows[0]
    assert ("nll_loss" in row) == has_nll
    if has_nll:
        assert row["nll_loss"] > 0.05  # NLL per chosen token of the (warmed-up) tiny model
        assert row["loss"] >= row["nll_loss"]


def test_the_demo_meets_its_promise(tmp_path, tiny_dir, monkeypatch):
    """`dpokit train --demo` (as `dpokit train` alone): held-out accuracy >= 0.9 after training, and the
    policy's own preference for the chosen answers reported before and after (and higher after)."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--demo", "--progress", "false"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "dpo_checkpoints" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == rows[-1]["step"]
    assert evals[-1]["eval_rewards/accuracies"] >= 0.9
    assert evals[-1]["eval_policy_preference"] > evals[0]["eval_policy_preference"]
    assert (tmp_path / "dpo_checkpoints" / "final" / "model.safetensors").is_file()
