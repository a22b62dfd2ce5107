"""Batch layouts: the same pairs laid out as model inputs in different ways.

Every layout produces a `PreferenceBatch`. Besides the model inputs it says, for each completion
token, which position's logits predict it (``logit_index``), the token (``target_ids``) and the
sequence it belongs to (``seq_index``: chosen of pair i is i, rejected of pair i is B + i). The
log-prob code (``logps.py``) needs nothing else, so every layout gives the same per-sequence
log-probs, and logits are only computed where a completion token is scored.

Layouts:

* ``padded``: 2B rows ``[chosen_1..B, rejected_1..B]``, each ``prompt + completion``, padded on
  the right to one length (the classic layout of the reference implementation and TRL). The
  attention mask is the usual (R, T) padding mask.
* ``packed`` (padding-free): the same 2B sequences laid end to end, several to a row (first-fit
  decreasing into rows as long as the longest sequence), position ids restarting at 0 for each.
  Restarting position ids alone does not keep sequences apart under SDPA or eager attention, so
  the batch carries an (R, T, T) "may attend" mask, block-diagonal and causal.
* ``prefix`` (prefix-shared, Wang & Hegde 2024): one block ``[prompt][chosen][rejected]`` per
  pair, so the prompt is computed once. Rejected tokens cannot see chosen tokens, and their
  position ids continue from the prompt's end, so each rejected token sees exactly what it
  would see in its own ``prompt + rejected`` sequence. The first rejected token is predicted by
  the last prompt position, like the first chosen token. Blocks are packed several to a row
  like ``packed``.

Asked for (``prompt_logps=True``: ORPO's NLL over the prompt), every layout also says which
position predicts each prompt token of the chosen sequences (``prompt_logit_index``,
``prompt_target_ids``, ``prompt_seq_index``: the pair), tokens 1 to the prompt's end, as the
completion tokens are said; other losses pay nothing for it. In ``prefix`` the chosen and
rejected rows share that prompt.

A block here is the unit laid out contiguously in a row: a whole sequence (``padded``,
``packed``) or a prefix-shared pair (``prefix``).

In the packing layouts, row widths are rounded up to a multiple of `WIDTH_MULTIPLE`, and the
extra room holds more blocks. Kernels cache per-shape state (on CPU, oneDNN and the bf16
attention kernels keep a few MB per distinct shape for the whole run), so a handful of widths
instead of a new one every step keeps memory flat. ``padded`` rows keep the longest sequence's
width unless asked otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from dpokit.data.pairs import TokenizedPair

LAYOUTS = ("padded", "packed", "prefix")
WIDTH_MULTIPLE = 64

# Branch of each token inside a block: rejected tokens may not attend to chosen tokens.
PROMPT, CHOSEN, REJECTED = 0, 1, 2


@dataclass
class PreferenceBatch:
    """Model inputs for B pairs in one layout, plus where each scored token's logit lives."""

    input_ids: torch.Tensor  # (R, T)
    attention_mask: torch.Tensor  # (R, T) 1/0 for padded rows, or (R, T, T) bool "may attend" for packed
    position_ids: torch.Tensor  # (R, T)
    logit_index: torch.Tensor  # (N,) flat index into R*T of the position whose logits predict the token
    target_ids: torch.Tensor  # (N,) the scored completion tokens
    seq_index: torch.Tensor  # (N,) in [0, 2B): chosen i -> i, rejected i -> B + i
    num_pairs: int
    num_tokens: int  # real (non-pad) tokens fed to the model, for tokens/s
    layout: str = "padded"
    prompt_logit_index: torch.Tensor | None = None  # (P,) chosen prompts' tokens, when asked: their predictors
    prompt_target_ids: torch.Tensor | None = None  # (P,) the prompt tokens (each prompt's first has no predictor)
    prompt_seq_index: torch.Tensor | None = None  # (P,) in [0, B): the pair

    def to(self, device: torch.device | str) -> PreferenceBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return PreferenceBatch(**moved)

    @property
    def num_sequences(self) -> int:
        """Sequences scored: chosen and rejected of each pair."""
        return 2 * self.num_pairs

    @property
    def completion_tokens(self) -> torch.Tensor:
        """(2B,) number of scored tokens per sequence."""
        return torch.bincount(self.seq_index, minlength=2 * self.num_pairs)

    @property
    def nll_tokens(self) -> int:
        """Tokens a chosen-answer NLL of this batch covers: the chosen completions' tokens, plus the
        chosen prompts' scored tokens when the batch carries them (the step's token normaliser)."""
        prompt = 0 if self.prompt_seq_index is None else self.prompt_seq_index.numel()
        return int((self.seq_index < self.num_pairs).sum()) + prompt


@dataclass
class Block:
    """Tokens laid out contiguously in one row, and which of them are scored.

    ``spans`` lists the scored completions as ``(start, length, first_pred, seq)``: tokens
    ``ids[start:start + length]`` belong to sequence ``seq``; the token at ``start`` is predicted
    by the logits at ``first_pred`` (-1: nothing predicts it, the block starts with it), every
    later one by the position just before it. All positions are local to the block.
    ``prompt_spans`` lists the chosen prompt's scored tokens the same way (``seq`` is the pair),
    only when asked for.
    """

    ids: list[int]
    positions: torch.Tensor  # (L,) position ids
    branch: torch.Tensor  # (L,) PROMPT / CHOSEN / REJECTED
    spans: list[tuple[int, int, int, int]]
    prompt_spans: list[tuple[int, int, int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def prompt_span(p: int, pair: int | None) -> list[tuple[int, int, int, int]]:
    """The scored prompt tokens of a block that starts with a ``p``-token prompt: tokens 1 to p - 1
    (the first has no predictor), the first predicted by position 0. None for ``pair``: not asked."""
    return [(1, p - 1, 0, pair)] if pair is not None and p > 1 else []


def sequence_block(prompt: list[int], completion: list[int], seq: int, prompt_of: int | None = None) -> Block:
    """``prompt + completion`` as one sequence (``padded`` and ``packed`` layouts); ``prompt_of``:
    the pair whose prompt tokens this block also scores (a chosen sequence, when asked)."""
    p, c = len(prompt), len(completion)
    return Block(prompt + completion, torch.arange(p + c), torch.zeros(p + c, dtype=torch.int8),
                 [(p, c, p - 1, seq)], prompt_span(p, prompt_of))


def prefix_block(pair: TokenizedPair, chosen_seq: int, rejected_seq: int, prompt_logps: bool = False) -> Block:
    """``[prompt][chosen][rejected]`` with rejected positions continuing from the prompt's end."""
    p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
    positions = torch.cat([torch.arange(p + c), torch.arange(p, p + r)])  # (p + c + r,)
    branch = torch.tensor([PROMPT] * p + [CHOSEN] * c + [REJECTED] * r, dtype=torch.int8)
    # Both completions are predicted first by the last prompt position (p - 1).
    spans = [(p, c, p - 1, chosen_seq), (p + c, r, p - 1, rejected_seq)]
    return Block(pair.prompt_ids + pair.chosen_ids + pair.rejected_ids, positions, branch, spans,
                 prompt_span(p, chosen_seq if prompt_logps else None))


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices of ``lengths`` grouped into rows holding at most ``capacity``."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def lay_out(blocks: list[Block], rows: list[list[int]], width: int, num_pairs: int, pad_id: int, layout: str,
            block_mask: bool, prompt_logps: bool = False) -> PreferenceBatch:
    """Place ``blocks`` into ``rows`` (lists of block indices), right-padded to ``width``.

    ``block_mask``: build the (R, T, T) mask (several blocks per row, or prefix blocks); else the
    plain (R, T) padding mask (one sequence per row). Padding positions get position id 0: they
    see only padding, and never reach past the model's position table. ``prompt_logps``: also
    index the blocks' ``prompt_spans``.
    """
    n_rows = len(rows)
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)  # (R, T)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)  # (R, T)
    segment = torch.full((n_rows, width), -1, dtype=torch.long)  # (R, T) block number in the row, -1 pad
    branch = torch.zeros((n_rows, width), dtype=torch.int8)  # (R, T)
    scored: list[list[torch.Tensor]] = [[], [], []]  # logit_index, target_ids, seq_index pieces
    prompts: list[list[torch.Tensor]] = [[], [], []]
    for r, row in enumerate(rows):
        offset = 0
        for k, i in enumerate(row):
            block = blocks[i]
            end = offset + len(block)
            input_ids[r, offset:end] = torch.tensor(block.ids)
            position_ids[r, offset:end] = block.positions
            segment[r, offset:end] = k
            branch[r, offset:end] = block.branch
            for spans, out in ((block.spans, scored), (block.prompt_spans if prompt_logps else [], prompts)):
                for span in spans:
                    for piece, part in zip(span_tokens(block, span, r * width + offset), out):
                        part.append(piece)
            offset = end
    if block_mask:
        causal = torch.ones(width, width, dtype=torch.bool).tril()  # (T, T)
        same_block = segment[:, :, None] == segment[:, None, :]  # (R, T, T); pads see pads (never NaN)
        rejected_sees_chosen = (branch[:, :, None] == REJECTED) & (branch[:, None, :] == CHOSEN)  # (R, T, T)
        attention_mask = causal & same_block & ~rejected_sees_chosen  # (R, T, T)
    else:
        attention_mask = (segment >= 0).long()  # (R, T)
    joined = [torch.cat(p) if p else torch.zeros(0, dtype=torch.long) for p in prompts]
    if not prompt_logps:
        joined = [None] * 3
    return PreferenceBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logit_index=torch.cat(scored[0]),
        target_ids=torch.cat(scored[1]),
        seq_index=torch.cat(scored[2]),
        num_pairs=num_pairs,
        num_tokens=int((segment >= 0).sum()),
        layout=layout,
        prompt_logit_index=joined[0],
        prompt_target_ids=joined[1],
        prompt_seq_index=joined[2],
    )


def span_tokens(block: Block, span: tuple[int, int, int, int], base: int) -> list[torch.Tensor]:
    """Flat logit positions, tokens and sequence of one span of ``block`` placed at flat offset ``base``."""
    start, length, first_pred, seq = span
    preds = torch.arange(start - 1, start + length - 1)  # (length,) local predicting positions
    if length:
        preds[0] = first_pred
    keep = preds >= 0  # a block's very first token has no prediction
    return [base + preds[keep], torch.tensor(block.ids[start : start + length], dtype=torch.long)[keep],
            torch.full((int(keep.sum()),), seq)]


def sequence_blocks(pairs: list[TokenizedPair], prompt_logps: bool) -> list[Block]:
    """The 2B sequences of ``pairs``, chosen first, as blocks; the chosen ones score their prompts
    too with ``prompt_logps``."""
    b = len(pairs)
    blocks = [sequence_block(p.prompt_ids, p.chosen_ids, i, i if prompt_logps else None) for i, p in enumerate(pairs)]
    return blocks + [sequence_block(p.prompt_ids, p.rejected_ids, b + i) for i, p in enumerate(pairs)]


def collate_padded(pairs: list[TokenizedPair], pad_id: int, multiple: int = 1,
                   prompt_logps: bool = False) -> PreferenceBatch:
    """Lay out B pairs as 2B right-padded rows: chosen rows first, then rejected rows."""
    b = len(pairs)
    blocks = sequence_blocks(pairs, prompt_logps)
    width = round_up(max(len(x) for x in blocks), multiple)
    return lay_out(blocks, [[i] for i in range(2 * b)], width, b, pad_id, "padded", block_mask=False,
                   prompt_logps=prompt_logps)


def _packed(blocks: list[Block], num_pairs: int, pad_id: int, layout: str, multiple: int,
            prompt_logps: bool) -> PreferenceBatch:
    lengths = [len(x) for x in blocks]
    width = round_up(max(lengths), multiple)
    return lay_out(blocks, pack_rows(lengths, width), width, num_pairs, pad_id, layout, block_mask=True,
                   prompt_logps=prompt_logps)


def collate_packed(pairs: list[TokenizedPair], pad_id: int, multiple: int = WIDTH_MULTIPLE,
                   prompt_logps: bool = False) -> PreferenceBatch:
    """Lay out the 2B sequences end to end, several to a row, with a block-diagonal causal mask."""
    return _packed(sequence_blocks(pairs, prompt_logps), len(pairs), pad_id, "packed", multiple, prompt_logps)


def collate_prefix(pairs: list[TokenizedPair], pad_id: int, multiple: int = WIDTH_MULTIPLE,
                   prompt_logps: bool = False) -> PreferenceBatch:
    """One ``[prompt][chosen][rejected]`` block per pair (prompt computed once), packed into rows."""
    b = len(pairs)
    blocks = [prefix_block(p, i, b + i, prompt_logps) for i, p in enumerate(pairs)]
    return _packed(blocks, b, pad_id, "prefix", multiple, prompt_logps)


def collate(pairs: list[TokenizedPair], layout: str, pad_id: int, multiple: int | None = None,
            prompt_logps: bool = False) -> PreferenceBatch:
    """Lay out ``pairs`` in ``layout`` (one of `LAYOUTS`); rows a multiple of ``multiple`` tokens
    wide (None: the layout's default). ``prompt_logps``: also index the chosen prompts' tokens
    for log-probs (ORPO's NLL over the prompt)."""
    if layout == "padded":
        return collate_padded(pairs, pad_id, multiple or 1, prompt_logps)
    if layout == "packed":
        return collate_packed(pairs, pad_id, multiple or WIDTH_MULTIPLE, prompt_logps)
    if layout == "prefix":
        return collate_prefix(pairs, pad_id, multiple or WIDTH_MULTIPLE, prompt_logps)
    raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
