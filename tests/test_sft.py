"""Supervised fine-tuning (sft.py): prompt masking for every data shape, the loss against a plain
transformers NLL, accumulation, bad rows, the base-model warning, and SFT -> DPO end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dpokit.configure import build_config
from dpokit.data.pairs import PreferencePair
from dpokit.data.samples import sample_pairs
from dpokit.data.sft import SFTStats, encode_conversation, tokenize_item
from dpokit.data.tokenize import tokenize_pair
from dpokit.errors import DataError
from dpokit.lora import ADAPTER_DIR
from dpokit.train import setup, train_step

CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def trained_text(tokenizer, ids, mask) -> str:
    return tokenizer.decode([t for t, m in zip(ids, mask) if m])


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, None])  # a chat template, and dpokit's fallback
def test_conversation_trains_only_assistant_turns(tiny_tokenizer, template, monkeypatch):
    monkeypatch.setattr(tiny_tokenizer, "chat_template", template)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."},
                {"role": "assistant", "content": "An apple."}, {"role": "user", "content": "Another one?"},
                {"role": "assistant", "content": "A pear."}]
    ids, mask = encode_conversation(messages, tiny_tokenizer)
    trained = trained_text(tiny_tokenizer, ids, mask)
    # Each answer with its end of turn; system, user turns and the assistant header are context.
    assert "An apple.</s>" in trained and "A pear.</s>" in trained
    for context in ("Be brief", "fruit", "Another", "ssistant"):
        assert context not in trained
    # The last turn is trained on exactly the ids DPO scores for that answer.
    dpo = tokenize_pair(PreferencePair(messages[:4], messages[4:], [{"role": "assistant", "content": "No."}]),
                        tiny_tokenizer, 256)
    assert ids[: len(dpo.prompt_ids)] == dpo.prompt_ids
    assert [t for t, m in zip(ids[len(dpo.prompt_ids):], mask[len(dpo.prompt_ids):]) if m] == dpo.chosen_ids
    if template is not None:
        assert trained == "An apple.</s>\nA pear.</s>\n"


def test_prompt_completion_masks_the_prompt_and_matches_dpo_tokens(tiny_tokenizer):
    pair = PreferencePair("Explain bees.", " Bees make honey.", " Bees make honey.")
    example = tokenize_item(pair, tiny_tokenizer, 64, None, SFTStats())
    dpo = tokenize_pair(PreferencePair("Explain bees.", " Bees make honey.", " No."), tiny_tokenizer, 64)
    assert example.input_ids == dpo.prompt_ids + dpo.chosen_ids  # SFT teaches the tokens DPO scores
    assert example.mask == [0] * len(dpo.prompt_ids) + [1] * len(dpo.chosen_ids)
    assert trained_text(tiny_tokenizer, example.input_ids, example.mask) == " Bees make honey.</s>"
    stats = SFTStats()
    assert tokenize_item(pair, tiny_tokenizer, len(dpo.prompt_ids), None, stats) is None  # no room left
    assert sum(stats.dropped.values()) == 1


def sft_config(tmp_path, model, data, **keys):
    flat = {"model.name_or_path": str(model), "model.precision": "fp32", "model.device": "cpu",
            "data.path": str(data), "data.max_length": 64, "train.batch_size": 4, "train.steps": 1,
            "train.lr": 1e-3, "train.warmup_steps": 0, "train.max_grad_norm": 0.0,
            "output.dir": str(tmp_path / "out"), "output.progress": False}
    flat.update(keys)
    return build_config(flat)


def test_loss_is_the_mean_nll_of_completion_tokens(tmp_path, llama_dir):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": r["prompt"], "completion": " " + r["chosen"]}
                                                for r in sample_pairs(4, 0)])
    run = setup(sft_config(tmp_path, llama_dir, data), "sft")
    examples = run.task.train
    out = run.task.forward(run.scorer, run.task.batch(examples), examples, 0)
    nll, tokens = out.nll, out.tokens
    # The same number from transformers' own loss: labels -100 on prompt and padding.
    width = max(len(e.input_ids) for e in examples)
    ids = torch.tensor([e.input_ids + [0] * (width - len(e.input_ids)) for e in examples])
    labels = torch.tensor([[t if m else -100 for t, m in zip(e.input_ids, e.mask)] + [-100] * (width - len(e.input_ids))
                           for e in examples])
    attention = (torch.arange(width)[None] < torch.tensor([len(e.input_ids) for e in examples])[:, None]).long()
    with torch.no_grad():
        expected = run.policy(input_ids=ids, attention_mask=attention, labels=labels).loss
    assert tokens == sum(e.trained_tokens for e in examples) == int((labels[:, 1:] != -100).sum())
    assert (nll / tokens).item() == pytest.approx(expected.item(), rel=1e-5)


def test_accumulation_gives_the_same_update(tmp_path, llama_dir):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": r["prompt"], "completion": " " + r["chosen"]}
                                                for r in sample_pairs(8, 1)])
    after = []
    for batch, accum in ((4, 1), (2, 2)):
        run = setup(sft_config(tmp_path, llama_dir, data, **{"train.batch_size": batch, "train.grad_accum": accum}), "sft")
        run.optimizer = torch.optim.SGD(run.policy.parameters(), lr=1.0)  # the update is the gradient itself
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda step: 1.0)
        train_step(run)
        after.append((run.window.means()["loss"], [p.detach().clone() for p in run.policy.parameters()]))
    assert after[0][0] == pytest.approx(after[1][0], rel=1e-6)
    for a, b in zip(after[0][1], after[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}, "starts with"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "message 0"),
    ({"prompt": "hi", "completion": 5}, "completion"),
    ({"prompt": "hi", "completion": "   "}, "empty"),
])
def test_bad_rows_stop_with_file_and_line(tmp_path, llama_dir, row, message):
    first = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]} \
        if "messages" in row else {"prompt": "a", "completion": "b"}
    data = write_jsonl(tmp_path / "bad.jsonl", [first, row])
    with pytest.raises(DataError, match=message) as info:
        setup(sft_config(tmp_path, llama_dir, data), "sft")
    assert info.value.line == 2 and str(data) in str(info.value)


def test_base_model_warning(tmp_path, llama_dir, tiny_dir):
    from dpokit.config import ModelConfig
    from dpokit.models import base_model_warning, load_tokenizer
    from dpokit.tiny import resolve

    def warning(path, **kw):
        cfg = ModelConfig(name_or_path=str(path), **kw)
        return base_model_warning(cfg, load_tokenizer(resolve(cfg)))

    assert "dpokit sft" in warning(llama_dir)  # no chat template, no marker: looks like a base model
    assert warning("tiny") is None  # the documented demo model stays quiet
    import shutil

    shutil.copytree(llama_dir, tmp_path / "m")
    (tmp_path / "m" / "dpokit_config.yaml").write_text("{}")
    assert warning(tmp_path / "m") is None  # written by dpokit (an SFT or DPO output)


@pytest.mark.parametrize("lora", [False, True])
def test_sft_then_dpo_pipeline(tmp_path, tiny_dir, lora, capsys):
    from dpokit.cli import main

    rows = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}]}
            for r in sample_pairs(12, 3)]
    sft_data = write_jsonl(tmp_path / "sft.jsonl", rows)
    prefs = write_jsonl(tmp_path / "prefs.jsonl", sample_pairs(8, 4))
    common = ["--precision", "fp32", "--device", "cpu", "--max-length", "96", "--progress", "false"]
    if lora:
        common += ["--lora", "true", "--lora-r", "4"]
    assert main(["sft", "--data", str(sft_data), "--output", str(tmp_path / "sft"), "--steps", "6",
                 "--batch-size", "4", "--lr", "1e-2" if lora else "2e-3", "--eval-fraction", "0.25", *common]) == 0
    rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]  # the completion NLL falls
    assert any("eval_loss" in r for r in rows)
    final = tmp_path / "sft" / "final"
    assert (final / "config.json").is_file() and (final / ADAPTER_DIR).is_dir() == lora

    assert main(["train", "--model", str(final), "--data", str(prefs), "--output", str(tmp_path / "dpo"),
                 "--steps", "2", "--batch-size", "4", "--lr", "1e-3", *common]) == 0
    out = capsys.readouterr().out
    assert "looks like a base" not in out
    first = json.loads((tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)  # the reference is the SFT model itself
    assert (tmp_path / "dpo" / "final" / "config.json").is_file()


def test_sft_help_lists_the_data_shapes(capsys):
    from dpokit.cli import main

    assert main(["sft", "--help"]) == 0
    out = capsys.readouterr().out
    assert "{messages}" in out and "usage: dpokit sft" in out


def test_preference_data_trains_the_chosen_side(tmp_path):
    from dpokit.data.sft import load_sft_data

    rows = sample_pairs(5, 2)
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    config = build_config({"data.path": str(data), "data.eval_fraction": 0.2})
    train, evaluation = load_sft_data(config.data, config.train.seed, lambda _: None)
    assert len(train) == 4 and len(evaluation) == 1
    assert {(p.prompt, p.chosen) for p in train + evaluation} == {(r["prompt"], r["chosen"]) for r in rows}


def test_preference_pair_trains_exactly_the_chosen_tokens_dpo_scores(tiny_tokenizer):
    pair = PreferencePair("Explain rain.", " Water falls from clouds.", " No idea.")
    example = tokenize_item(pair, tiny_tokenizer, 64, None, SFTStats())
    dpo = tokenize_pair(pair, tiny_tokenizer, 64)
    assert example.input_ids == dpo.prompt_ids + dpo.chosen_ids
    assert [t for t, m in zip(example.input_ids, example.mask) if m] == dpo.chosen_ids


def test_non_finite_nll_stops_before_the_update(tmp_path, llama_dir):
    from dpokit.errors import DpokitError

    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": r["prompt"], "completion": " " + r["chosen"]}
                                                for r in sample_pairs(4, 1)])
    run = setup(sft_config(tmp_path, llama_dir, data, **{"train.batch_size": 2}), "sft")
    with torch.no_grad():
        run.policy.get_output_embeddings().weight[:, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in run.policy.named_parameters()}
    with pytest.raises(DpokitError, match=r"step 1: the loss is nan; the run is stopped before the update"):
        train_step(run)
    assert run.state.step == 0
    for n, p in run.policy.named_parameters():
        assert torch.equal(p.nan_to_num(), before[n].nan_to_num()), n
