"""Batch layouts: the same pairs laid out as model inputs in different ways.

Every layout produces a `PreferenceBatch`. Besides the model inputs it says, for each completion
token, which position's logits predict it (``logit_index``), the token (``target_ids``) and the
sequence it belongs to (``seq_index``: chosen of pair i is i, rejected of pair i is B + i). The
log-prob code (``logps.py``) needs nothing else, so every layout gives the same per-sequence
log-probs, and logits are only computed where a completion token is scored.

Layouts:

* ``padded``: 2B rows ``[chosen_1..B, rejected_1..B]``, each ``prompt + completion``, padded on
  the right to one length (the classic layout of the reference implementation and TRL).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from dpokit.data.pairs import TokenizedPair

LAYOUTS = ("padded",)


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

    def to(self, device: torch.device | str) -> PreferenceBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return PreferenceBatch(**moved)

    @property
    def completion_tokens(self) -> torch.Tensor:
        """(2B,) number of scored tokens per sequence."""
        return torch.bincount(self.seq_index, minlength=2 * self.num_pairs)


def _score_span(row: int, width: int, start: int, ids: list[int], seq: int, out: list[list[int]]) -> None:
    """Record completion ``ids`` placed at positions ``start..``: position p is predicted by p - 1."""
    for j, token in enumerate(ids):
        pos = start + j
        if pos == 0:  # the very first token of a row has no prediction
            continue
        out[0].append(row * width + pos - 1)
        out[1].append(token)
        out[2].append(seq)


def collate_padded(pairs: list[TokenizedPair], pad_id: int) -> PreferenceBatch:
    """Lay out B pairs as 2B right-padded rows: chosen rows first, then rejected rows."""
    b = len(pairs)
    rows = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
    width = max(len(r) for r in rows)
    input_ids = torch.full((2 * b, width), pad_id, dtype=torch.long)  # (2B, T)
    attention_mask = torch.zeros((2 * b, width), dtype=torch.long)  # (2B, T)
    scored: list[list[int]] = [[], [], []]
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = torch.tensor(row)
        attention_mask[r, : len(row)] = 1
        pair = pairs[r % b]
        completion = pair.chosen_ids if r < b else pair.rejected_ids
        _score_span(r, width, len(pair.prompt_ids), completion, r, scored)
    position_ids = torch.arange(width).expand(2 * b, width).clone()  # (2B, T)
    return PreferenceBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logit_index=torch.tensor(scored[0], dtype=torch.long),
        target_ids=torch.tensor(scored[1], dtype=torch.long),
        seq_index=torch.tensor(scored[2], dtype=torch.long),
        num_pairs=b,
        num_tokens=int(attention_mask.sum()),
    )


def collate(pairs: list[TokenizedPair], layout: str, pad_id: int) -> PreferenceBatch:
    """Lay out ``pairs`` in ``layout`` (one of `LAYOUTS`)."""
    if layout == "padded":
        return collate_padded(pairs, pad_id)
    raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
