"""Judges and the win rate: Wilson's interval by hand, ties counted half, function judges from a file
or a module, and a real (tiny, random) reward model scored batched and under its chat template."""

from __future__ import annotations

import math

import pytest
import torch

from dpokit.errors import DpokitError
from dpokit.judge import RewardModelJudge, load_judge, verdict, wilson_interval, win_rate

TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def test_wilson_interval_hand_worked():
    # 8 of 10: p = 0.8, z = 1.96; centre (0.8 + 0.19208) / 1.38415 = 0.71674, half-width
    # 1.96 * sqrt(0.016 + 0.0096040) / 1.38415 = 0.22657 -> 0.4902 to 0.9433
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94331, abs=1e-4)
    lo, hi = wilson_interval(0, 10)  # 0 of 10: 0 to z^2 / (n + z^2) = 3.8415 / 13.8415
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((1 - wilson_interval(5, 10)[1], 1 - wilson_interval(5, 10)[0]))
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_win_rate_counts_ties_half():
    w = win_rate(["win", "win", "tie", "loss", "win", "tie", "win", "win", "win", "loss"])
    assert (w.wins, w.ties, w.losses, w.n) == (6, 2, 2, 10)
    assert w.rate == pytest.approx(0.7)
    assert w.interval == pytest.approx(wilson_interval(7, 10))
    assert win_rate(["tie"] * 4).rate == 0.5
    assert math.isnan(win_rate([]).rate)


def test_verdict_and_the_tie_margin():
    assert verdict(1.0, 0.0) == "win" and verdict(0.0, 1.0) == "loss" and verdict(0.5, 0.5) == "tie"
    assert verdict(0.30, 0.25, tie_margin=0.1) == "tie" and verdict(0.30, 0.15, tie_margin=0.1) == "win"


def test_function_judge_from_a_file_and_a_module(tmp_path, monkeypatch):
    (tmp_path / "my_rules.py").write_text(
        "def has_example(prompt, answer):\n    return 'example' in answer\n\n"
        "def length(prompt, answer):\n    return len(answer) - len(prompt)\n", encoding="utf-8")
    judge = load_judge(f"{tmp_path / 'my_rules.py'}:has_example")
    assert judge.score(["q", "q"], ["for example, this", "no"]) == [1.0, 0.0]
    monkeypatch.chdir(tmp_path)
    judge = load_judge("my_rules:length")
    assert judge.score(["ab", [{"role": "user", "content": "abc"}]], ["abcd", "abcd"]) == [2.0, 1.0]


@pytest.mark.parametrize("spec, expected", [
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ("{dir}/rules.py:missing", "has no function 'missing'"),
    ("{dir}/nothere.py:f", "no such file"),
])
def test_function_judge_mistakes_are_one_error(tmp_path, spec, expected):
    (tmp_path / "rules.py").write_text("def f(prompt, answer):\n    return 1\n", encoding="utf-8")
    with pytest.raises(DpokitError, match=expected) as info:
        load_judge(spec.format(dir=tmp_path))
    assert "fix:" in str(info.value)


def test_a_judge_function_must_return_a_number(tmp_path):
    (tmp_path / "bad.py").write_text("def f(prompt, answer):\n    return 'good'\n\n"
                                     "def g(prompt, answer):\n    return float('nan')\n\n"
                                     "def h(prompt, answer):\n    return 1 / int(answer != 'b')\n", encoding="utf-8")
    for name in ("f", "g"):
        with pytest.raises(DpokitError, match="prompt 1; a judge function must return a finite number"):
            load_judge(f"{tmp_path / 'bad.py'}:{name}").score(["q"], ["a"])
    with pytest.raises(DpokitError, match="raised ZeroDivisionError: division by zero on prompt 2"):
        load_judge(f"{tmp_path / 'bad.py'}:h").score(["q", "r"], ["a", "b"])


def _reward_model(path, tokenizer, num_labels=1, template=None):
    import copy

    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = copy.deepcopy(tokenizer)  # the session's tokenizer keeps no template
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=num_labels,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("template", [None, TEMPLATE])
def test_reward_model_scores_batched_as_one_by_one(tmp_path, tiny_tokenizer, template, one_thread):
    """Right padding and the last real token: batched scores equal single ones; under a chat template the
    score is the model's logit on the templated conversation."""
    from transformers import AutoModelForSequenceClassification

    path = _reward_model(tmp_path / "rm", tiny_tokenizer, template=template)
    judge = load_judge(str(path), batch_size=3)
    assert isinstance(judge, RewardModelJudge)
    prompts = ["What is gravity?", "Hi", "Explain a budget to me.", "Why?"]
    answers = ["Gravity pulls masses together.", "Hello there, how can I help you today?", "A plan.", "Because."]
    batched = judge.score(prompts, answers)
    alone = [judge.score([p], [a])[0] for p, a in zip(prompts, answers)]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert len(set(round(s, 6) for s in batched)) == 4  # a random model still tells them apart
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    if template:
        text = TEMPLATE.replace("{% for m in messages %}", "").split("{% endfor %}")[0]
        rendered = "".join(text.replace("{{ m['role'] }}", role).replace("{{ m['content'] }}", content)
                           for role, content in (("user", prompts[0]), ("assistant", answers[0])))
        ids = tiny_tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    else:
        ids = tiny_tokenizer(prompts[0], answers[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert batched[0] == pytest.approx(float(model(input_ids=ids).logits[0, 0]), abs=1e-5)


def test_a_classifier_with_two_outputs_is_not_a_reward_model(tmp_path, tiny_tokenizer):
    path = _reward_model(tmp_path / "clf", tiny_tokenizer, num_labels=2)
    with pytest.raises(DpokitError, match="has 2 outputs; a reward model has one"):
        load_judge(str(path))
