"""Tokenization and the padded layout on hand-checked examples."""

from __future__ import annotations

import pytest
import torch

from dpokit.data.collate import collate
from dpokit.data.pairs import PreferencePair
from dpokit.data.tokenize import TokenizeStats, prepare_tokenizer, tokenize_pair, tokenize_pairs

PAD, BOS, EOS, HELLO, WORLD, GOOD, BAD = range(7)


@pytest.fixture(scope="module")
def word_tokenizer():
    """A word-level tokenizer whose ids can be worked out by hand; it adds BOS like Llama's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "hello": HELLO, "world": WORLD, "good": GOOD, "bad": BAD}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def test_prompt_masked_eos_appended_bos_once(word_tokenizer):
    pair = PreferencePair("hello world", " good", " bad bad")
    t = tokenize_pair(pair, word_tokenizer, max_length=32)
    assert t.prompt_ids == [BOS, HELLO, WORLD]
    assert t.chosen_ids == [GOOD, EOS]
    assert t.rejected_ids == [BAD, BAD, EOS]


def test_eos_not_doubled(word_tokenizer):
    t = tokenize_pair(PreferencePair("hello", " good </s>", " bad"), word_tokenizer, max_length=32)
    assert t.chosen_ids == [GOOD, EOS]


def test_padded_layout_scores_only_completion_tokens(word_tokenizer):
    t = tokenize_pair(PreferencePair("hello world", " good", " bad bad"), word_tokenizer, max_length=32)
    batch = collate([t], "padded", PAD)
    assert batch.input_ids.tolist() == [[BOS, HELLO, WORLD, GOOD, EOS, PAD], [BOS, HELLO, WORLD, BAD, BAD, EOS]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    # Token at position p is predicted by the logits at p - 1; prompt and padding are never scored.
    assert batch.logit_index.tolist() == [2, 3, 6 + 2, 6 + 3, 6 + 4]
    assert batch.target_ids.tolist() == [GOOD, EOS, BAD, BAD, EOS]
    assert batch.seq_index.tolist() == [0, 0, 1, 1, 1]
    assert batch.completion_tokens.tolist() == [2, 3]
    assert batch.num_tokens == 11


def test_truncation_and_dropping_are_counted(word_tokenizer):
    pair = PreferencePair("hello world", " good", " bad bad")
    stats = TokenizeStats()
    t = tokenize_pair(pair, word_tokenizer, max_length=4, stats=stats)
    assert (t.prompt_ids, t.chosen_ids, t.rejected_ids) == ([BOS, HELLO, WORLD], [GOOD], [BAD])
    assert stats.truncated_completion == 1
    assert tokenize_pair(pair, word_tokenizer, max_length=3, stats=stats) is None
    assert stats.dropped["prompt alone reaches max_length"] == 1
    t = tokenize_pair(pair, word_tokenizer, max_length=32, max_prompt_length=2, stats=stats)
    assert t.prompt_ids == [HELLO, WORLD]  # the prompt keeps its end, next to the answer
    assert stats.truncated_prompt == 1
    pairs, stats = tokenize_pairs([pair, pair], word_tokenizer, max_length=3)
    assert pairs == [] and "2 (prompt alone reaches max_length)" in stats.summary()


def test_pad_token_falls_back_to_eos(word_tokenizer):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=word_tokenizer.backend_tokenizer, eos_token="</s>")
    assert tok.pad_token_id is None
    assert prepare_tokenizer(tok).pad_token_id == EOS


def test_boundary_merge_keeps_one_prompt(tiny_tokenizer):
    """Where BPE merges across the prompt/answer boundary, the prompt is the common prefix."""
    pair = PreferencePair("What is gravity", "? It pulls.", "?! No.")
    t = tokenize_pair(pair, tiny_tokenizer, max_length=64)
    chosen_full = tiny_tokenizer(pair.prompt + pair.chosen)["input_ids"]
    rejected_full = tiny_tokenizer(pair.prompt + pair.rejected)["input_ids"]
    assert t.prompt_ids + t.chosen_ids == chosen_full + [tiny_tokenizer.eos_token_id]
    assert t.prompt_ids + t.rejected_ids == rejected_full + [tiny_tokenizer.eos_token_id]
    assert torch.tensor(t.prompt_ids).numel() > 0
