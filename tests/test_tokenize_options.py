"""TRL's tokenization options: ``chat_template_kwargs`` (a config key and a row's column, the row's
over the config's, passed to ``apply_chat_template``) and ``max_completion_length`` (completions keep
their start, counted as truncated); both change the ids, so both are in the cache key."""

from __future__ import annotations

import json

import pytest

from dpokit.config import DataConfig
from dpokit.data.cache import cache_key
from dpokit.data.pairs import PreferencePair
from dpokit.data.sources import load_train_eval
from dpokit.data.tokenize import TokenizeStats, encode_pair, tokenize_pair, tokenize_pairs
from dpokit.errors import DataError

# A template that reads a keyword argument, as Qwen3's and SmolLM3's read enable_thinking.
THINKING = ("{% if enable_thinking %}<|system|>Think first.{{ eos_token }}{% endif %}{% for message in messages %}"
            "<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture
def tokenizer(tiny_tokenizer):
    tok = tiny_tokenizer
    tok.chat_template = THINKING
    yield tok
    tok.chat_template = None


def chat_pair(**extra) -> PreferencePair:
    user = [{"role": "user", "content": "Is the sky blue?"}]
    return PreferencePair(user, [{"role": "assistant", "content": "Yes."}], [{"role": "assistant", "content": "No."}],
                          **extra)


def test_chat_template_kwargs_reach_the_template_and_the_rows_win(tokenizer):
    user = [{"role": "user", "content": "Is the sky blue?"}]

    def rendered(**kwargs) -> list[int]:
        return list(tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True, **kwargs)["input_ids"])

    thinking, plain = rendered(enable_thinking=True), rendered(enable_thinking=False)
    assert thinking != plain
    assert encode_pair(chat_pair(), tokenizer)[0] == plain  # no argument: the template's own default
    assert encode_pair(chat_pair(), tokenizer, {"enable_thinking": True})[0] == thinking
    row = chat_pair(chat_template_kwargs={"enable_thinking": False})
    assert encode_pair(row, tokenizer, {"enable_thinking": True})[0] == plain  # the row's over the config's
    tokenized, _ = tokenize_pairs([chat_pair()], tokenizer, 64, chat_template_kwargs={"enable_thinking": True})
    assert tokenized[0].prompt_ids == thinking


def test_a_rows_chat_template_kwargs_column_is_read_and_checked(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}], "chat_template_kwargs": {"enable_thinking": i == 0}}
            for i in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, _ = load_train_eval(DataConfig(path=str(path)), seed=0)
    assert [p.chat_template_kwargs for p in train] == [{"enable_thinking": True}, {"enable_thinking": False}]
    assert train[0].to_dict()["chat_template_kwargs"] == {"enable_thinking": True}  # kept in prepared data, cache keys
    rows[1]["chat_template_kwargs"] = "enable_thinking"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"pairs.jsonl, line 2, column 'chat_template_kwargs': expected a mapping"):
        load_train_eval(DataConfig(path=str(path)), seed=0)


def test_max_completion_length_keeps_the_start_and_counts(tiny_tokenizer):
    pair = PreferencePair("Tell me about the sea.", " The sea is wide and deep and full of fish.", " No.")
    prompt, chosen, rejected = encode_pair(pair, tiny_tokenizer)
    assert len(chosen) > 4 and len(rejected) <= 4
    stats = TokenizeStats()
    cut = tokenize_pair(pair, tiny_tokenizer, 256, stats=stats, max_completion_length=4)
    assert (cut.prompt_ids, cut.chosen_ids, cut.rejected_ids) == (prompt, chosen[:4], rejected)
    assert stats.truncated_completion == 1 and stats.kept == 1
    # max_length still limits: the tighter of the two cuts.
    tight = tokenize_pair(pair, tiny_tokenizer, len(prompt) + 2, max_completion_length=4)
    assert tight.chosen_ids == chosen[:2]
    untouched = TokenizeStats()
    assert tokenize_pair(pair, tiny_tokenizer, 256, stats=untouched).chosen_ids == chosen
    assert untouched.truncated_completion == 0


def test_the_options_are_in_the_cache_key(tiny_tokenizer):
    pairs = [chat_pair()]
    plain = cache_key(pairs, tiny_tokenizer, 128, None)
    assert cache_key(pairs, tiny_tokenizer, 128, None, max_completion_length=None, chat_template_kwargs=None) == plain
    keys = {plain, cache_key(pairs, tiny_tokenizer, 128, None, max_completion_length=8),
            cache_key(pairs, tiny_tokenizer, 128, None, chat_template_kwargs={"enable_thinking": False})}
    assert len(keys) == 3


def test_sft_passes_the_options_on(tokenizer):
    """``dpokit sft`` tokenizes with the same options: a conversation's template sees the arguments (its
    assistant turn stays the trained part), a prompt + completion row is cut at max_completion_length."""
    from dpokit.data.sft import SFTStats, encode_conversation, tokenize_item

    messages = [{"role": "user", "content": "Is the sky blue?"}, {"role": "assistant", "content": "Yes, it is."}]
    plain, plain_mask = encode_conversation(messages, tokenizer)
    thinking, thinking_mask = encode_conversation(messages, tokenizer, {"enable_thinking": True})
    assert len(thinking) > len(plain) and sum(thinking_mask) == sum(plain_mask) > 0
    pair = PreferencePair("Tell me about the sea.", " The sea is wide and deep and full of fish.", " No.")
    example = tokenize_item(pair, tokenizer, 256, None, SFTStats(), max_completion_length=3)
    assert sum(example.mask) == 3
