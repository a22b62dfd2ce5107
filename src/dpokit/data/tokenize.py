"""Tokenization of preference pairs: one function, every rule in one place.

Rules (``tokenize_pair``):

* **Text data.** The prompt is tokenized with the tokenizer's default special tokens (so BOS is
  added exactly when the tokenizer adds it); each completion is tokenized as ``prompt + completion``
  and its ids are what follows the prompt. If the tokenizer merges characters across the boundary,
  the prompt ends where the tokenized prompt and both tokenized full texts stop agreeing (the
  common prefix), so the pair keeps one prompt. EOS is appended to each completion unless it
  already ends with it.
* **Conversational data.** The prompt is the chat template over the prompt messages with the
  generation prompt (so the assistant header belongs to the prompt); each full sequence is the
  chat template over prompt + completion messages; the completion is what follows the prompt.
  No EOS is added: the template ends the turn. The template's own BOS is kept and never doubled.
* **Truncation.** A prompt longer than ``max_prompt_length`` keeps its last tokens (those next to
  the answer). A pair whose prompt alone reaches ``max_length`` is dropped. Completions are cut to
  fit ``max_length`` (keeping their start).
* **Masking.** Prompt tokens never count in the loss: a `TokenizedPair` keeps prompt and
  completion ids apart, and the collator scores completion tokens only.
* **Padding.** A tokenizer without a pad token uses EOS (``prepare_tokenizer``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dpokit.data.pairs import PreferencePair, TokenizedPair
from dpokit.errors import DataError

# Used for conversational data when the tokenizer has no chat template: plain role-prefixed turns.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


@dataclass
class TokenizeStats:
    """Counts from tokenizing a data set, printed before training."""

    kept: int = 0
    truncated_prompt: int = 0
    truncated_completion: int = 0
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        text = (f"{self.kept} pairs tokenized; {self.truncated_prompt} prompts and "
                f"{self.truncated_completion} completions truncated")
        if self.dropped:
            text += "; dropped: " + ", ".join(f"{n} ({reason})" for reason, n in self.dropped.items())
        return text


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


def _chat_ids(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> list[int]:
    template = tokenizer.chat_template or FALLBACK_CHAT_TEMPLATE
    return _ids(tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt, chat_template=template))


def _messages(pair: PreferencePair, completion: Any) -> tuple[list[dict], list[dict]]:
    prompt = pair.prompt if isinstance(pair.prompt, list) else [{"role": "user", "content": pair.prompt}]
    if pair.system is not None and not (prompt and prompt[0]["role"] == "system"):
        prompt = [{"role": "system", "content": pair.system}] + prompt
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    return prompt, prompt + completion


def encode_pair(pair: PreferencePair, tokenizer: Any) -> tuple[list[int], list[int], list[int]]:
    """Return untruncated ``(prompt_ids, chosen_ids, rejected_ids)`` following the rules above."""
    if pair.conversational or isinstance(pair.prompt, list):
        prompt_msgs, chosen_msgs = _messages(pair, pair.chosen)
        _, rejected_msgs = _messages(pair, pair.rejected)
        prompt = _chat_ids(tokenizer, prompt_msgs, generation_prompt=True)
        chosen = _chat_ids(tokenizer, chosen_msgs, generation_prompt=False)
        rejected = _chat_ids(tokenizer, rejected_msgs, generation_prompt=False)
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


def tokenize_pair(
    pair: PreferencePair,
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int | None = None,
    stats: TokenizeStats | None = None,
) -> TokenizedPair | None:
    """Tokenize one pair under the rules in this module's docstring; ``None`` if it is dropped."""
    stats = stats if stats is not None else TokenizeStats()
    prompt, chosen, rejected = encode_pair(pair, tokenizer)
    if not chosen or not rejected:
        stats.dropped["empty completion"] += 1
        return None
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[len(prompt) - max_prompt_length:]
        stats.truncated_prompt += 1
    if len(prompt) >= max_length:
        stats.dropped["prompt alone reaches max_length"] += 1
        return None
    room = max_length - len(prompt)
    if len(chosen) > room or len(rejected) > room:
        stats.truncated_completion += 1
        chosen, rejected = chosen[:room], rejected[:room]
    stats.kept += 1
    return TokenizedPair(prompt, chosen, rejected, meta={"source": pair.source})


def tokenize_pairs(
    pairs: list[PreferencePair], tokenizer: Any, max_length: int, max_prompt_length: int | None = None
) -> tuple[list[TokenizedPair], TokenizeStats]:
    """Tokenize a list of pairs, dropping those the rules drop; returns the pairs and the counts."""
    stats = TokenizeStats()
    out = [tokenize_pair(p, tokenizer, max_length, max_prompt_length, stats) for p in pairs]
    return [t for t in out if t is not None], stats
