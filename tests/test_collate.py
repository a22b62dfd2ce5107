"""Batch layouts, checked by hand on tiny pairs and by invariants on real HH-RLHF pairs (no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dpokit.data.collate import LAYOUTS, collate, pack_rows
from dpokit.data.pairs import TokenizedPair

PAD = 0
HH_RLHF = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def test_padded_by_hand():
    pairs = [TokenizedPair([10, 11], [20, 21], [30]), TokenizedPair([12], [22], [31, 32, 33])]
    b = collate(pairs, "padded", PAD, multiple=1)
    assert b.input_ids.tolist() == [[10, 11, 20, 21], [12, 22, 0, 0], [10, 11, 30, 0], [12, 31, 32, 33]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    # token at row r, position p is predicted by the logits at r * T + p - 1 (T = 4)
    scored = sorted(zip(b.seq_index.tolist(), b.logit_index.tolist(), b.target_ids.tolist()))
    assert scored == [(0, 1, 20), (0, 2, 21), (1, 4, 22), (2, 9, 30), (3, 12, 31), (3, 13, 32), (3, 14, 33)]
    assert b.completion_tokens.tolist() == [2, 1, 1, 3]
    assert b.num_tokens == 13 and b.num_pairs == 2
    assert b.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 0, 0], [0, 1, 2, 0], [0, 1, 2, 3]]  # pads at 0


def test_widths_rounded_up():
    """Packing layouts round rows up to 64 tokens and use the room for more blocks."""
    pairs = [TokenizedPair([10] * 30, [20] * 5, [30] * 3), TokenizedPair([12] * 10, [22] * 4, [31] * 6)]
    assert collate(pairs, "padded", PAD).input_ids.shape == (4, 35)  # padded: the longest row, unless asked
    padded = collate(pairs, "padded", PAD, multiple=64)
    assert padded.input_ids.shape == (4, 64) and padded.num_tokens == 35 + 33 + 14 + 16
    packed = collate(pairs, "packed", PAD)
    assert packed.input_ids.shape == (2, 64)  # 35 + 16, then 33 + 14
    prefix = collate(pairs, "prefix", PAD)
    assert prefix.input_ids.shape == (1, 64) and prefix.num_tokens == 38 + 20
    assert int(prefix.position_ids[0, 58:].abs().sum()) == 0


def test_prefix_by_hand():
    b = collate([TokenizedPair([10, 11], [20, 21], [30, 31])], "prefix", PAD, multiple=1)
    assert b.input_ids.tolist() == [[10, 11, 20, 21, 30, 31]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 2, 3]]  # rejected continues from the prompt's end
    allowed = b.attention_mask[0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # rejected sees the prompt and itself, never chosen
        [1, 1, 0, 0, 1, 1],
    ]
    scored = sorted(zip(b.seq_index.tolist(), b.logit_index.tolist(), b.target_ids.tolist()))
    # both first completion tokens are predicted by the last prompt position (1)
    assert scored == [(0, 1, 20), (0, 2, 21), (1, 1, 30), (1, 4, 31)]
    assert b.num_tokens == 6


def test_packed_by_hand():
    pairs = [TokenizedPair([10, 11], [20, 21], [30]), TokenizedPair([12], [22], [31])]
    b = collate(pairs, "packed", PAD, multiple=1)
    # lengths 4, 2, 3, 2 into rows of 4: [4], [3], [2, 2] by first-fit decreasing
    assert b.input_ids.tolist() == [[10, 11, 20, 21], [10, 11, 30, 0], [12, 22, 12, 31]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 1]]
    assert b.attention_mask[2].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    assert b.attention_mask[1].int().tolist()[3] == [0, 0, 0, 1]  # a pad sees only pads: no empty row
    scored = sorted(zip(b.seq_index.tolist(), b.logit_index.tolist(), b.target_ids.tolist()))
    assert scored == [(0, 1, 20), (0, 2, 21), (1, 8, 22), (2, 5, 30), (3, 10, 31)]
    assert b.num_tokens == 11


def test_pack_rows_first_fit_decreasing():
    assert pack_rows([5, 3, 2, 4, 1], 5) == [[0], [3, 4], [1, 2]]
    assert pack_rows([2, 2, 2], 6) == [[0, 1, 2]]


def test_unknown_layout():
    with pytest.raises(ValueError, match="padded, packed, prefix"):
        collate([TokenizedPair([1], [2], [3])], "stacked", PAD)


def hh_tokenized(tokenizer, n: int = 12, max_length: int = 160) -> list[TokenizedPair]:
    """The first ``n`` real HH-RLHF pairs (implicit-prompt format, read by dpokit), tokenized."""
    from dpokit.data.sources import load_pairs
    from dpokit.data.tokenize import tokenize_pairs

    pairs, _ = tokenize_pairs(load_pairs(str(HH_RLHF))[: 2 * n], tokenizer, max_length)
    return pairs[:n]


@pytest.mark.skipif(not HH_RLHF.is_file(), reason="the shared HH-RLHF sample is not here")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_invariants_on_real_pairs(layout, tiny_tokenizer):
    """Each scored token is predicted by the position holding the token before it in its own
    sequence, and every layout scores exactly the padded layout's tokens."""
    pairs = hh_tokenized(tiny_tokenizer)
    pairs.append(TokenizedPair([], [5, 6], [7]))  # an empty prompt: the first token has no prediction
    b = collate(pairs, layout, tiny_tokenizer.pad_token_id)
    n = len(pairs)
    flat = b.input_ids.reshape(-1)
    for s in range(2 * n):
        pair = pairs[s % n]
        completion = pair.chosen_ids if s < n else pair.rejected_ids
        sequence = pair.prompt_ids + completion
        mine = b.seq_index == s
        expected = sequence[max(1, len(pair.prompt_ids)):]
        assert b.target_ids[mine].tolist() == expected
        previous = sequence[max(1, len(pair.prompt_ids)) - 1 : -1]
        assert flat[b.logit_index[mine]].tolist() == previous
    padded = collate(pairs, "padded", tiny_tokenizer.pad_token_id)
    assert torch.equal(b.completion_tokens, padded.completion_tokens)
    prompts = sum(len(p.prompt_ids) for p in pairs)
    real = padded.num_tokens - (prompts if layout == "prefix" else 0)
    assert b.num_tokens == real
    if layout != "padded":
        assert b.input_ids.numel() < padded.input_ids.numel()  # less padding, and (prefix) prompts once


def test_prompt_tokens_by_hand():
    """Asked for, each layout also indexes the chosen prompts' tokens 1..p-1 (the first has no
    predictor); the completions' indices do not change, and other batches carry nothing."""
    pairs = [TokenizedPair([10, 11, 12], [20, 21], [30]), TokenizedPair([13, 14], [22], [31, 32])]
    expected = {  # (pair, flat logit position, token)
        "padded": [(0, 0, 11), (0, 1, 12), (1, 5, 14)],  # rows of width 5: chosen 1 is row 1
        "packed": [(0, 0, 11), (0, 1, 12), (1, 5, 14)],  # width 8: chosen 1 follows chosen 0 in row 0
        "prefix": [(0, 0, 11), (0, 1, 12), (1, 8, 14)],  # blocks of 6 and 5 tokens: one per row
    }
    for layout, triples in expected.items():
        plain = collate(pairs, layout, PAD, multiple=1 if layout == "padded" else 8)
        b = collate(pairs, layout, PAD, multiple=1 if layout == "padded" else 8, prompt_logps=True)
        assert plain.prompt_logit_index is None and plain.prompt_seq_index is None
        got = sorted(zip(b.prompt_seq_index.tolist(), b.prompt_logit_index.tolist(), b.prompt_target_ids.tolist()))
        assert got == triples, layout
        assert torch.equal(b.logit_index, plain.logit_index) and torch.equal(b.input_ids, plain.input_ids)
        assert plain.nll_tokens == 3 and b.nll_tokens == 3 + 3  # chosen completions (2 + 1), then prompts (2 + 1)


@pytest.mark.skipif(not HH_RLHF.is_file(), reason="the shared HH-RLHF sample is not here")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_prompt_tokens_on_real_pairs(layout, tiny_tokenizer):
    """Each chosen prompt token after the first is predicted by the position holding the token
    before it, in every layout; a one-token or empty prompt scores nothing."""
    pairs = hh_tokenized(tiny_tokenizer)
    pairs += [TokenizedPair([], [5, 6], [7]), TokenizedPair([9], [5], [7])]
    b = collate(pairs, layout, tiny_tokenizer.pad_token_id, prompt_logps=True)
    flat = b.input_ids.reshape(-1)
    for i, pair in enumerate(pairs):
        mine = b.prompt_seq_index == i
        assert b.prompt_target_ids[mine].tolist() == pair.prompt_ids[1:]
        assert flat[b.prompt_logit_index[mine]].tolist() == pair.prompt_ids[:-1]
    assert b.nll_tokens == sum(len(p.chosen_ids) + max(0, len(p.prompt_ids) - 1) for p in pairs) - 1  # []: 5 unscored
