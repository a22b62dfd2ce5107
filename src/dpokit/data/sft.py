"""SFT data: ``{prompt, completion}`` rows, ``{messages}`` conversations, or the chosen side of
preference pairs, tokenized with the prompt (and every non-assistant turn) masked, and laid out as
right-padded sequences.

Rows are detected from the first one: ``messages`` (every assistant turn is trained, everything
else is context), ``prompt`` + ``completion`` (strings, or chat messages as in preference data;
optional ``system``), or any preference format ``dpokit train`` reads (the chosen side is trained).
The completion tokens are exactly those DPO scores for the chosen answer (``data/tokenize.py``), so
SFT teaches the very tokens DPO then compares.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from dpokit.config import DataConfig
from dpokit.data.fields import ROLES, RowProblem, check_roles
from dpokit.data.mixture import hold_out
from dpokit.data.pairs import Message, PreferencePair
from dpokit.data.sources import iter_rows, load_train_eval, main_spec
from dpokit.data.tokenize import TokenizeStats, _chat_ids, _common_prefix, encode_pair, fit_pair
from dpokit.errors import DataError


@dataclass
class SFTExample:
    """One tokenized training sequence; ``mask[t]`` is 1 where token t is trained."""

    input_ids: list[int]
    mask: list[int]
    source: str = ""

    @property
    def trained_tokens(self) -> int:
        return sum(self.mask[1:])  # the first token of a row has no prediction


@dataclass
class SFTStats:
    kept: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        text = f"{self.kept} examples tokenized; {self.truncated} truncated"
        if self.dropped:
            text += "; dropped: " + ", ".join(f"{n} ({reason})" for reason, n in self.dropped.items())
        return text


# An SFT item before tokenization: a prompt + completion (as a pair whose chosen side is trained)
# or a whole conversation.
Item = PreferencePair | tuple[list[Message], str]


# ---- reading ------------------------------------------------------------------------------------


def _message_list(value: Any, key: str, where: dict[str, Any]) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DataError(f"'{key}' must be a non-empty list of {{role, content}} messages", column=key,
                        reason="wrong type", **where)
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m):
            raise DataError(f"message {i} of '{key}' is not a {{\"role\": {'|'.join(ROLES)}, \"content\": str}} "
                            "object", column=key, reason="wrong type", **where)
    return [{"role": m["role"], "content": m["content"]} for m in value]


def sft_item(row: Any, where: dict[str, Any], source: str) -> Item:
    """One ``{messages}`` or ``{prompt, completion}`` row as an SFT item; DataError when it is bad."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}", reason="not an object", **where)
    try:  # every unknown role of the row at once, before the other checks
        check_roles(row, ("messages", "prompt", "completion"))
    except RowProblem as p:
        raise DataError(p.message, column=p.column, hint=p.hint, reason=p.reason, **where) from None
    if "messages" in row:
        messages = _message_list(row["messages"], "messages", where)
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError("the conversation has no assistant turn: nothing to train on", column="messages",
                            reason="no assistant turn", hint="add the assistant's answer, or remove the row",
                            **where)
        if messages[0]["role"] == "assistant":
            raise DataError("the conversation starts with an assistant turn", column="messages",
                            reason="assistant first", hint="start with a system or user message", **where)
        return messages, source
    for key in ("prompt", "completion"):
        if key not in row:
            raise DataError(f"missing key '{key}' (the row has: {', '.join(sorted(row)) or 'no keys'})",
                            column=key, reason="missing column",
                            hint="SFT rows are {prompt, completion}, {messages}, or preference pairs", **where)
    prompt, completion = row["prompt"], row["completion"]
    prompt = prompt if isinstance(prompt, str) else _message_list(prompt, "prompt", where)
    completion = completion if isinstance(completion, str) else _message_list(completion, "completion", where)
    if (isinstance(completion, str) and not completion.strip()):
        raise DataError("'completion' is empty", column="completion", reason="empty field",
                        hint="give a non-empty completion or remove the row", **where)
    system = row.get("system") if isinstance(row.get("system"), str) else None
    return PreferencePair(prompt, completion, completion, system=system, source=source)


def _sft_rows(name: str, cfg: DataConfig) -> list[Item]:

    spec = main_spec(cfg, name=name)
    items = []
    for line, index, row in iter_rows(spec):
        where: dict[str, Any] = {"path": spec.label, "line": line}
        if isinstance(row, RowProblem):
            raise DataError(row.message, column=row.column, hint=row.hint, reason=row.reason, **where)
        label = f"{spec.label}:{line}" if line is not None else f"{spec.label}[{index}]"
        items.append(sft_item(row, where if line is not None else {"path": f"{spec.label}, row index {index}"},
                              label))
    return items


def is_sft_source(name: str | None, cfg: DataConfig) -> bool:
    """True when the first row of source ``name`` is an SFT row (``messages`` or ``completion``)."""

    if name is None:
        return False
    for _, _, row in iter_rows(main_spec(cfg, name=name)):
        return isinstance(row, dict) and ("messages" in row or "completion" in row)
    return False


def load_sft_data(cfg: DataConfig, seed: int, log: Callable[[str], None] = print) -> tuple[list[Item], list[Item]]:
    """Training and evaluation items: SFT rows, or the chosen side of preference pairs."""
    if cfg.mixture is None and is_sft_source(cfg.path, cfg):
        train = _sft_rows(cfg.path, cfg)
        evaluation = _sft_rows(cfg.eval_path, cfg) if cfg.eval_path else []
        if cfg.eval_fraction:
            try:
                train, held = hold_out(train, cfg.eval_fraction, seed)
            except ValueError as e:
                raise DataError(str(e), hint="lower data.eval_fraction, or add data") from None
            evaluation += held
        if cfg.max_samples is not None:
            train = train[: cfg.max_samples]
        log(f"data: {len(train)} SFT examples from {cfg.path}")
        return train, evaluation
    train, evaluation = load_train_eval(cfg, seed, log)
    log("data: preference pairs; training on their chosen answers")
    return list(train), list(evaluation)


# ---- tokenization -------------------------------------------------------------------------------


def encode_conversation(messages: list[Message], tokenizer: Any,
                        kwargs: dict[str, Any] | None = None) -> tuple[list[int], list[int]]:
    """Ids of the whole conversation (chat template) and a mask that is 1 on assistant turns.

    Each assistant turn spans from where the template of the messages before it, with the
    generation prompt, ends (the assistant header is context) to where the template up to and
    including it ends, both measured along the full conversation's ids.
    """

    full = _chat_ids(tokenizer, messages, False, kwargs)  # kwargs: data.chat_template_kwargs
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _common_prefix(_chat_ids(tokenizer, messages[:i], True, kwargs), full)
        end = _common_prefix(_chat_ids(tokenizer, messages[: i + 1], False, kwargs), full)
        mask[start:end] = [1] * max(0, end - start)
    return full, mask


def tokenize_item(item: Item, tokenizer: Any, max_length: int, max_prompt_length: int | None,
                  stats: SFTStats, max_completion_length: int | None = None,
                  chat_template_kwargs: dict[str, Any] | None = None) -> SFTExample | None:
    """One item as an `SFTExample`, truncated to ``max_length``; None (counted) when nothing is left."""

    if isinstance(item, PreferencePair):  # the chosen side, tokenized as DPO tokenizes it
        prompt, chosen, _ = encode_pair(item, tokenizer, chat_template_kwargs)
        fitted = fit_pair(prompt, chosen, chosen, max_length, max_prompt_length, TokenizeStats(), item.source,
                          max_completion_length)
        if fitted is None:
            stats.dropped["prompt alone reaches max_length" if chosen else "empty completion"] += 1
            return None
        stats.truncated += len(fitted.chosen_ids) < len(chosen) or len(fitted.prompt_ids) < len(prompt)
        ids, mask = fitted.prompt_ids + fitted.chosen_ids, [0] * len(fitted.prompt_ids) + [1] * len(fitted.chosen_ids)
        source = item.source
    else:
        messages, source = item
        ids, mask = encode_conversation(messages, tokenizer, chat_template_kwargs)
        if len(ids) > max_length:  # keep the start, as DPO does for completions
            ids, mask = ids[:max_length], mask[:max_length]
            stats.truncated += 1
    example = SFTExample(ids, mask, source)
    if example.trained_tokens == 0:
        stats.dropped["no trained token within max_length"] += 1
        return None
    stats.kept += 1
    return example


def tokenize_items(items: list[Item], tokenizer: Any, max_length: int, max_prompt_length: int | None = None,
                   **options: Any) -> tuple[list[SFTExample], SFTStats]:
    """``options``: `dpokit.data.tokenize.options` (``max_completion_length``, ``chat_template_kwargs``)."""
    stats = SFTStats()
    out = [tokenize_item(item, tokenizer, max_length, max_prompt_length, stats, **options) for item in items]
    return [e for e in out if e is not None], stats


@dataclass
class SequenceBatch:
    """Right-padded rows, one sequence each, in the form `logps.SequenceScorer` reads: for every
    trained token, the flat position whose logits predict it, the token, and its sequence."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) 1 for tokens, 0 for padding
    position_ids: torch.Tensor  # (B, T)
    logit_index: torch.Tensor  # (N,) flat index into B*T of the position predicting each trained token
    target_ids: torch.Tensor  # (N,) the trained tokens
    seq_index: torch.Tensor  # (N,) in [0, B): the sequence of each trained token
    num_sequences: int
    num_tokens: int  # real (non-pad) tokens fed to the model
    layout: str = "padded"

    def to(self, device: torch.device | str) -> SequenceBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return SequenceBatch(**{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                                for k, v in moved.items()})


def collate_sequences(examples: list[SFTExample], pad_id: int) -> SequenceBatch:
    """B examples as B right-padded rows."""
    b = len(examples)
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((b, width), dtype=torch.long)  # (B, T)
    logit_index, targets, seqs = [], [], []
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[r, :n] = torch.tensor(e.input_ids)
        attention_mask[r, :n] = 1
        for t in range(1, n):
            if e.mask[t]:  # token t is predicted by the logits at t - 1
                logit_index.append(r * width + t - 1)
                targets.append(e.input_ids[t])
                seqs.append(r)
    return SequenceBatch(
        input_ids=input_ids, attention_mask=attention_mask,
        position_ids=torch.arange(width).expand(b, width).clone(),  # (B, T)
        logit_index=torch.tensor(logit_index, dtype=torch.long), target_ids=torch.tensor(targets, dtype=torch.long),
        seq_index=torch.tensor(seqs, dtype=torch.long), num_sequences=b, num_tokens=int(attention_mask.sum()),
    )
