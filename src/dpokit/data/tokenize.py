"""Tokenization of preference pairs: one function, every rule in one place.

Rules (``tokenize_pair``):

* **Text data.** The prompt is tokenized with the tokenizer's default special tokens (so BOS is
  added exactly when the tokenizer adds it); each completion is tokenized as ``prompt + completion``
  and its ids are what follows the prompt. If the tokenizer merges characters across the boundary,
  the prompt ends where the tokenized prompt and both tokenized full texts stop agreeing (the
  common prefix), so the pair keeps one prompt. EOS is appended to each completion unless it
  already ends with it (TRL does the same for text data).
* **Conversational data.** The prompt is the chat template over the prompt messages with the
  generation prompt (so the assistant header belongs to the prompt, not the completion); each
  full sequence is the chat template over prompt + completion messages; the completion is what
  follows the prompt (again the common prefix, for templates that render history differently).
  So ``prompt_ids + chosen_ids`` is exactly the template over the whole chosen conversation. No
  EOS is added: the template ends the turn. Templated text is tokenized without adding special
  tokens, so a template's own BOS is never doubled.
* **Dialogues in text form** (HH-RLHF, `PreferencePair.as_chat`): tokenized as chat messages when
  the tokenizer has a chat template, as the raw text otherwise (what TRL does with them).
* **No chat template.** Conversational data on a tokenizer without a template uses
  ``FALLBACK_CHAT_TEMPLATE``: ``User: ...<eos>\\nAssistant: ...<eos>`` turns (a system message
  reads ``System: ...``), the generation prompt ``\\nAssistant:``, and BOS in front when the
  tokenizer adds BOS to text. ``data.chat_template`` sets a template of your own.
* **Chat template arguments.** ``data.chat_template_kwargs`` and a row's own ``chat_template_kwargs``
  column (the row's keys win) go to ``apply_chat_template`` (e.g. ``{enable_thinking: false}``).
* **Truncation.** A prompt longer than ``max_prompt_length`` keeps its last tokens (those next to
  the answer). A pair whose prompt alone reaches ``max_length`` is dropped (a warning, counted).
  Completions longer than ``max_completion_length`` keep their first tokens, then are cut to fit
  ``max_length`` (keeping their start); either cut counts the pair as truncated. A pair whose
  completions are identical once cut (they part only past the cut) is dropped (a warning, counted):
  it carries no preference.
* **Masking.** Prompt tokens never count in the loss: a `TokenizedPair` keeps prompt and
  completion ids apart, and the collator scores completion tokens only.
* **Padding.** A tokenizer without a pad token uses EOS (``prepare_tokenizer``).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dpokit.data.pairs import PreferencePair, TokenizedPair
from dpokit.errors import DataError

# Used for conversational data when the tokenizer has no chat template: plain role-prefixed turns.
# The generation prompt ends at "Assistant:", so the answer's leading space stays with the answer.
# (Newlines are Jinja string literals: transformers renders templates with trim_blocks, which
# would eat a newline written right after a block tag.)
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\nAssistant:' }}{% endif %}"
)

DROP_EMPTY = "empty completion"
DROP_LONG_PROMPT = "prompt alone reaches max_length"
DROP_SAME_AFTER_CUT = "chosen == rejected after truncation"


@dataclass
class TokenizeStats:
    """Counts from tokenizing a data set, printed before training; ``dropped_sources`` says which rows."""

    kept: int = 0
    truncated_prompt: int = 0
    truncated_completion: int = 0
    dropped: Counter = field(default_factory=Counter)
    dropped_sources: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, source: str) -> None:
        self.dropped[reason] += 1
        self.dropped_sources.setdefault(reason, []).append(source)

    def merge(self, other: TokenizeStats) -> None:
        self.kept += other.kept
        self.truncated_prompt += other.truncated_prompt
        self.truncated_completion += other.truncated_completion
        self.dropped.update(other.dropped)
        for reason, sources in other.dropped_sources.items():
            self.dropped_sources.setdefault(reason, []).extend(sources)

    def summary(self) -> str:
        text = (f"{self.kept} pairs tokenized; {self.truncated_prompt} prompts and "
                f"{self.truncated_completion} completions truncated")
        if self.dropped:
            text += "; dropped (warning): " + ", ".join(f"{n} ({reason})" for reason, n in self.dropped.items())
        return text

    def advice(self, max_length: int, max_prompt_length: int | None = None) -> str | None:
        """How to keep the pairs dropped because their prompt alone reaches ``max_length``: a
        ``--max-prompt-length`` below it keeps every one (its prompt keeps its last tokens), half of
        ``max_length`` leaving the answers the other half; None when none was dropped so."""
        return long_prompt_advice(self.dropped.get(DROP_LONG_PROMPT, 0), max_length, max_prompt_length)

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "truncated_prompt": self.truncated_prompt,
                "truncated_completion": self.truncated_completion, "dropped": dict(self.dropped),
                "dropped_sources": self.dropped_sources}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizeStats:
        return cls(d["kept"], d["truncated_prompt"], d["truncated_completion"], Counter(d["dropped"]),
                   d.get("dropped_sources", {}))


def long_prompt_advice(dropped: int, max_length: int, max_prompt_length: int | None = None) -> str | None:
    """`TokenizeStats.advice` for a count of pairs dropped as "prompt alone reaches max_length"."""
    if not dropped:
        return None
    pairs = f"{dropped} pair{'s' if dropped != 1 else ''}"
    keep = max_length // 2
    if keep < 1:
        return f"to keep the {pairs} dropped as their prompt alone reaches max_length {max_length}: raise --max-length"
    now = f" (now {max_prompt_length})" if max_prompt_length is not None else ""
    return (f"to keep the {pairs} dropped as their prompt alone reaches max_length {max_length}: pass "
            f"--max-prompt-length {keep}{now} (a longer prompt keeps its last {keep} tokens, the answers get "
            f"{max_length - keep}), or raise --max-length")


def prepare_tokenizer(tokenizer: Any, chat_template: str | None = None) -> Any:
    """Give the tokenizer a pad token (EOS when it has none) and, if asked, a chat template."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise DataError("the tokenizer has neither a pad token nor an EOS token",
                            hint="use a tokenizer with an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _ids(result: Any) -> list[int]:
    """`apply_chat_template(tokenize=True)` returns a list or a BatchEncoding depending on version."""
    if isinstance(result, dict) or hasattr(result, "keys"):
        result = result["input_ids"]
    return list(result)


def adds_bos(tokenizer: Any) -> bool:
    """True when the tokenizer puts BOS in front of plain text."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def _chat_ids(tokenizer: Any, messages: list[dict], generation_prompt: bool,
              kwargs: dict[str, Any] | None = None) -> list[int]:
    kwargs = kwargs or {}
    if tokenizer.chat_template:
        return _ids(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                                  **kwargs))
    ids = _ids(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                             chat_template=FALLBACK_CHAT_TEMPLATE, **kwargs))
    return [tokenizer.bos_token_id] + ids if adds_bos(tokenizer) else ids


def _messages(pair: PreferencePair, completion: Any) -> tuple[list[dict], list[dict]]:
    prompt = pair.prompt if isinstance(pair.prompt, list) else [{"role": "user", "content": pair.prompt}]
    if pair.system is not None and not (prompt and prompt[0]["role"] == "system"):
        prompt = [{"role": "system", "content": pair.system}] + prompt
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    return prompt, prompt + completion


def effective_pair(pair: PreferencePair, tokenizer: Any) -> PreferencePair:
    """The form of ``pair`` that is tokenized: its chat form when it has one and the tokenizer a template."""
    if pair.as_chat is not None and tokenizer.chat_template:
        return pair.as_chat
    return pair


def encode_pair(pair: PreferencePair, tokenizer: Any,
                chat_template_kwargs: dict[str, Any] | None = None) -> tuple[list[int], list[int], list[int]]:
    """Return untruncated ``(prompt_ids, chosen_ids, rejected_ids)`` following the rules above."""
    kwargs = {**(chat_template_kwargs or {}), **(pair.chat_template_kwargs or {})}
    pair = effective_pair(pair, tokenizer)
    if pair.conversational or isinstance(pair.prompt, list):
        prompt_msgs, chosen_msgs = _messages(pair, pair.chosen)
        _, rejected_msgs = _messages(pair, pair.rejected)
        prompt = _chat_ids(tokenizer, prompt_msgs, True, kwargs)
        chosen = _chat_ids(tokenizer, chosen_msgs, False, kwargs)
        rejected = _chat_ids(tokenizer, rejected_msgs, False, kwargs)
        add_eos = False
    else:
        prompt_text = pair.prompt if pair.system is None else f"{pair.system}\n\n{pair.prompt}"
        prompt = tokenizer(prompt_text)["input_ids"]
        chosen = tokenizer(prompt_text + pair.chosen)["input_ids"]
        rejected = tokenizer(prompt_text + pair.rejected)["input_ids"]
        add_eos = True
    # The prompt is the part all three sequences agree on (normally the whole tokenized prompt).
    k = min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected))
    chosen_ids, rejected_ids = chosen[k:], rejected[k:]
    if add_eos and tokenizer.eos_token_id is not None:
        eos = tokenizer.eos_token_id
        chosen_ids = chosen_ids if chosen_ids[-1:] == [eos] else chosen_ids + [eos]
        rejected_ids = rejected_ids if rejected_ids[-1:] == [eos] else rejected_ids + [eos]
    return prompt[:k], chosen_ids, rejected_ids


def fit_pair(
    prompt: list[int], chosen: list[int], rejected: list[int], max_length: int,
    max_prompt_length: int | None, stats: TokenizeStats, source: str = "", max_completion_length: int | None = None,
) -> TokenizedPair | None:
    """Apply the truncation rules to encoded ids; ``None`` (counted in ``stats``) if the pair is dropped."""
    if not chosen or not rejected:
        stats.drop(DROP_EMPTY, source)
        return None
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[len(prompt) - max_prompt_length:]
        stats.truncated_prompt += 1
    if len(prompt) >= max_length:
        stats.drop(DROP_LONG_PROMPT, source)
        return None
    room = min(max_length - len(prompt), max_completion_length or max_length)
    if len(chosen) > room or len(rejected) > room:
        differed = chosen != rejected  # (SFT fits its one completion as both sides)
        chosen, rejected = chosen[:room], rejected[:room]
        if differed and chosen == rejected:  # they part only past the cut: no preference is left to learn
            stats.drop(DROP_SAME_AFTER_CUT, source)
            return None
        stats.truncated_completion += 1
    stats.kept += 1
    return TokenizedPair(prompt, chosen, rejected, meta={"source": source})


def tokenize_pair(
    pair: PreferencePair,
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int | None = None,
    stats: TokenizeStats | None = None,
    max_completion_length: int | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> TokenizedPair | None:
    """Tokenize one pair under the rules in this module's docstring; ``None`` if it is dropped."""
    stats = stats if stats is not None else TokenizeStats()
    return fit_pair(*encode_pair(pair, tokenizer, chat_template_kwargs), max_length, max_prompt_length, stats,
                    pair.source, max_completion_length)


def options(data_cfg: Any) -> dict[str, Any]:
    """The tokenization settings of a `DataConfig` beyond the two lengths, as keyword arguments of
    `tokenize_pairs` / `tokenize_cached` (each changes the ids, so each is in the cache key)."""
    return {"max_completion_length": data_cfg.max_completion_length,
            "chat_template_kwargs": data_cfg.chat_template_kwargs}


def _tokenize_chunk(pairs: list[PreferencePair], tokenizer: Any, max_length: int, max_prompt_length: int | None,
                    extra: dict[str, Any]) -> tuple[list[TokenizedPair | None], TokenizeStats]:
    stats = TokenizeStats()
    return [tokenize_pair(p, tokenizer, max_length, max_prompt_length, stats, **extra) for p in pairs], stats


_WORKER_TOKENIZER: Any = None  # set in the parent before forking, or by the worker initializer


def _init_worker(tokenizer: Any) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _worker(args: tuple) -> tuple[list[TokenizedPair | None], TokenizeStats]:
    pairs, max_length, max_prompt_length, extra = args
    return _tokenize_chunk(pairs, _WORKER_TOKENIZER, max_length, max_prompt_length, extra)


def tokenize_pairs(
    pairs: list[PreferencePair], tokenizer: Any, max_length: int, max_prompt_length: int | None = None,
    num_proc: int = 1, max_completion_length: int | None = None, chat_template_kwargs: dict[str, Any] | None = None,
) -> tuple[list[TokenizedPair], TokenizeStats]:
    """Tokenize a list of pairs, dropping those the rules drop; returns the pairs and the counts.

    ``num_proc > 1`` splits the pairs into contiguous chunks tokenized by worker processes; the
    result is the same, in the same order.
    """
    extra = {"max_completion_length": max_completion_length, "chat_template_kwargs": chat_template_kwargs}
    num_proc = max(1, min(num_proc, len(pairs) // 64 or 1))
    if num_proc == 1:
        out, stats = _tokenize_chunk(pairs, tokenizer, max_length, max_prompt_length, extra)
        return [t for t in out if t is not None], stats
    import multiprocessing as mp

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    size = -(-len(pairs) // (num_proc * 4))
    chunks = [(pairs[i:i + size], max_length, max_prompt_length, extra) for i in range(0, len(pairs), size)]
    if "fork" in mp.get_all_start_methods():
        _init_worker(tokenizer)  # the forked workers inherit it, no pickling
        context, init, init_args = mp.get_context("fork"), None, ()
    else:  # pragma: no cover - spawn platforms pickle the tokenizer once per worker
        context, init, init_args = mp.get_context(), _init_worker, (tokenizer,)
    with context.Pool(num_proc, initializer=init, initargs=init_args) as pool:
        results = pool.map(_worker, chunks)
    stats = TokenizeStats()
    kept: list[TokenizedPair] = []
    for out, part in results:
        stats.merge(part)
        kept += [t for t in out if t is not None]
    return kept, stats


def prompt_ids(tokenizer: Any, prompt: str | list[dict]) -> list[int]:
    """The ids a model is prompted with to answer ``prompt`` (generation, ``dpokit compare``).

    Under a chat template a string is one user message, and the ids are the template with the
    generation prompt, as the rules above tokenize a conversational pair's prompt; so are message
    lists on a tokenizer without a template (the fallback template). A string on a tokenizer
    without a template is plain text with the default special tokens, as a text pair's prompt.
    """
    if isinstance(prompt, str) and not tokenizer.chat_template:
        return list(tokenizer(prompt)["input_ids"])
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return _chat_ids(tokenizer, messages, generation_prompt=True)
