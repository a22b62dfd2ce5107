"""Generation from small steps: left padding, positions, top-k / top-p, Gumbel-max sampling, stopping at
EOS, per-prompt seeds, the chat template; checked against transformers' own ``generate``."""

from __future__ import annotations

import pytest
import torch

from dpokit.generate import (
    SamplingConfig,
    complete,
    filter_logits,
    gumbel_noise,
    left_pad,
    load_lm,
    pick,
    positions,
    read_prompts,
    rows_that_fit,
    sample_seed,
)

PROMPTS = ["What is gravity?", "Explain the water cycle to a beginner, please.", "Hi", "Describe a budget."]


def test_left_pad_and_positions_count_real_tokens_only():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_top_k_and_top_p_keep_the_right_tokens():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = lambda s: torch.isfinite(filter_logits(logits, s))[0].tolist()  # noqa: E731
    assert kept(SamplingConfig(temperature=1.0, top_p=1.0, top_k=2)) == [True, True, False, False]
    # nucleus 0.75: 0.5 alone is short of it, 0.5 + 0.3 reaches it, so the two most likely stay
    assert kept(SamplingConfig(temperature=1.0, top_p=0.75, top_k=0)) == [True, True, False, False]
    assert kept(SamplingConfig(temperature=1.0, top_p=0.4, top_k=0)) == [True, False, False, False]
    assert kept(SamplingConfig(temperature=1.0, top_p=1.0, top_k=0)) == [True] * 4
    # the order of the vocabulary does not matter: the same tokens survive when shuffled
    order = torch.tensor([2, 0, 3, 1])
    shuffled = torch.isfinite(filter_logits(logits[:, order], SamplingConfig(temperature=1.0, top_p=0.75, top_k=0)))
    assert shuffled[0].tolist() == [False, True, False, True]
    # temperature divides the logits
    assert torch.allclose(filter_logits(logits, SamplingConfig(temperature=2.0, top_p=1.0, top_k=0)), logits / 2)


def test_gumbel_max_samples_the_softmax():
    probs = torch.tensor([0.6, 0.3, 0.1])
    n = 20000
    g = torch.Generator().manual_seed(0)
    noise = gumbel_noise([g] * n, 3, torch.device("cpu"))  # (n, 3)
    tokens = pick(probs.log().expand(n, 3), noise)
    freq = torch.bincount(tokens, minlength=3).float() / n
    assert torch.allclose(freq, probs, atol=0.015), freq  # 3 standard errors of the largest share
    assert pick(torch.tensor([[0.1, 2.0, -1.0]]), None).tolist() == [1]


def test_sample_seed_is_per_prompt_and_answer():
    assert sample_seed(0, "a", 0) == sample_seed(0, "a", 0)
    assert len({sample_seed(0, "a", 0), sample_seed(0, "a", 1), sample_seed(0, "b", 0), sample_seed(1, "a", 0)}) == 4


@pytest.mark.parametrize("arch_dir", ["tiny_dir", "gpt2_dir"])
def test_greedy_answers_match_transformers_generate_one_prompt_at_a_time(arch_dir, request, one_thread):
    """Batched and left-padded, each answer is what transformers' generate gives the prompt alone
    (GPT-2's learned positions make any position mistake show); stopping at EOS included."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = request.getfixturevalue(arch_dir)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    out = complete(model, tokenizer, PROMPTS, SamplingConfig(max_new_tokens=40, greedy=True), batch_size=4)
    eos = tokenizer.eos_token_id
    for prompt, c in zip(PROMPTS, out):
        enc = tokenizer(prompt, return_tensors="pt")
        alone = model.generate(**enc, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected = alone[0, enc["input_ids"].shape[1]:].tolist()
        if eos in expected:
            expected = expected[: expected.index(eos) + 1]
        assert c.prompt_ids == enc["input_ids"][0].tolist()
        assert c.ids == expected
        assert c.finished == (c.ids[-1] == eos) and (c.finished or c.num_tokens == 40)
        assert eos not in c.ids[:-1]


def test_the_tiny_model_stops_at_eos(tiny_dir, one_thread):
    model, tokenizer = load_lm("tiny", torch.device("cpu"))
    prompts = [f"Explain {t}." for t in ("gravity", "a budget", "sleep", "the moon", "recycling", "bees")]
    out = complete(model, tokenizer, prompts, SamplingConfig(max_new_tokens=100, greedy=True), batch_size=6)
    finished = [c for c in out if c.finished]
    assert finished, [c.text for c in out]  # the warmed-up model ends some answers itself
    for c in finished:
        assert c.ids[-1] == tokenizer.eos_token_id and c.num_tokens < 100 and tokenizer.eos_token not in c.text


def test_sampled_answers_do_not_depend_on_the_batch(tiny_dir, one_thread):
    model, tokenizer = load_lm("tiny", torch.device("cpu"))
    sampling = SamplingConfig(max_new_tokens=24, temperature=1.0, top_p=0.9, top_k=0)
    alone = [complete(model, tokenizer, [p], sampling, seed=3)[0].ids for p in PROMPTS]
    batched = [c.ids for c in complete(model, tokenizer, PROMPTS, sampling, batch_size=3, seed=3)]
    assert batched == alone
    second = [c.ids for c in complete(model, tokenizer, PROMPTS, sampling, batch_size=4, seed=3, index=1)]
    assert second != batched  # answer 1 of each prompt has its own seed


def test_chat_template_prompts_are_the_templates_generation_prompt(tiny_dir, tmp_path, one_thread):
    """A tokenizer with a chat template prompts with the template and its generation prompt, the ids
    that training's tokenization gives a conversational pair's prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpokit.data.pairs import PreferencePair
    from dpokit.data.tokenize import encode_pair

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    tokenizer.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                               "{% if add_generation_prompt %}<s>assistant:{% endif %}")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    out = complete(model, tokenizer, ["What is gravity?"], SamplingConfig(max_new_tokens=5, greedy=True))
    expected = tokenizer.apply_chat_template([{"role": "user", "content": "What is gravity?"}],
                                             add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else list(expected)
    assert out[0].prompt_ids == expected
    trained = encode_pair(PreferencePair([{"role": "user", "content": "What is gravity?"}],
                                         [{"role": "assistant", "content": "Yes."}],
                                         [{"role": "assistant", "content": "No."}]), tokenizer)[0]
    assert out[0].prompt_ids == trained


def test_read_prompts_text_and_jsonl(tmp_path):
    from dpokit.errors import DpokitError

    text = tmp_path / "p.txt"
    text.write_text("first\n\n  second  \n", encoding="utf-8")
    assert read_prompts(text) == ["first", "second"]
    rows = tmp_path / "p.jsonl"
    rows.write_text('{"prompt": "a"}\n{"prompt": [{"role": "user", "content": "b"}]}\n', encoding="utf-8")
    assert read_prompts(rows) == ["a", [{"role": "user", "content": "b"}]]
    rows.write_text('{"prompt": "a"}\n{"question": "b"}\n', encoding="utf-8")
    with pytest.raises(DpokitError, match=r"p.jsonl, line 2, column 'prompt'"):
        read_prompts(rows)
    with pytest.raises(DpokitError, match="no such file"):
        read_prompts(tmp_path / "missing.txt")


def test_generate_command_takes_the_tiny_model(tiny_dir, capsys):
    from dpokit.cli import main

    assert main(["generate", "--model", "tiny", "--prompt", "Explain gravity.", "--max-new-tokens", "8",
                 "--greedy"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("### Explain gravity.\n") and len(printed.split("\n", 1)[1].strip()) > 0


def test_rows_that_fit_a_gpu_hand_worked():
    """A GPU batch fills 70% of the free memory. Llama-3-8B in bf16 (32 layers, 8 key/value heads of
    128): per token 2 * 32 * 8 * 128 * 2 B of keys and values + 16 * 4096 * 2 B of activations =
    262144 B; a row of 1280 tokens adds 16 B per vocabulary entry: 1280 * 262144 + 16 * 128256 =
    337596416 B; 0.7 * 100 GiB holds 222 such rows, 0.7 * 1 GiB two."""
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                         vocab_size=128256)
    assert rows_that_fit(config, 2, 1280, 100 * 2**30) == 222
    assert rows_that_fit(config, 2, 1280, 2**30) == 2
    assert rows_that_fit(config, 2, 1280, 2**20) == 1  # never none
    assert rows_that_fit(config, 2, 16, 10**15) == 512  # nor more than 512
