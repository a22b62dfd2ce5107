"""The two shapes every preference pair takes inside dpokit.

Every input format is turned into a `PreferencePair` once, at the edge (``data/formats.py``, fed
by the readers in ``data/jsonl.py`` and ``data/sources.py``); tokenization turns it into a `TokenizedPair`; the collator lays tokenized pairs
out as batches. Nothing past the edge knows where a pair came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]  # {"role": "user" | "assistant" | "system", "content": str}
Text = str | list[Message]


@dataclass
class PreferencePair:
    """One normalised preference pair.

    ``prompt`` is a string (text data) or a list of chat messages ending with a user turn
    (conversational data). ``chosen`` / ``rejected`` are the completions: strings for text data,
    or lists of assistant messages for conversational data. ``system`` is an optional system
    prompt for conversational data. ``source`` says where the row came from (file and line), for
    error messages.
    """

    prompt: Text
    chosen: Text
    rejected: Text
    system: str | None = None
    source: str = ""
    as_chat: PreferencePair | None = None
    """The same pair as chat messages, for text that is really a dialogue (HH-RLHF's implicit
    prompt): tokenization uses it when the tokenizer has a chat template, the text otherwise."""
    chat_template_kwargs: dict[str, Any] | None = None
    """The row's own arguments for the chat template (its ``chat_template_kwargs`` column), laid over
    the config's ``data.chat_template_kwargs``."""

    @property
    def conversational(self) -> bool:
        return isinstance(self.chosen, list)

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        if self.system is not None:
            row["system"] = self.system
        if self.as_chat is not None:
            row["as_chat"] = self.as_chat.to_dict()
        if self.chat_template_kwargs:
            row["chat_template_kwargs"] = self.chat_template_kwargs
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any], source: str = "") -> PreferencePair:
        """Inverse of `to_dict` (for pairs dpokit wrote itself; no checks)."""
        chat = row.get("as_chat")
        return cls(row["prompt"], row["chosen"], row["rejected"], row.get("system"), source,
                   cls.from_dict(chat) if chat is not None else None, row.get("chat_template_kwargs"))


@dataclass
class TokenizedPair:
    """Token ids of one pair: the prompt once, and each completion without the prompt.

    The full chosen sequence is ``prompt_ids + chosen_ids``; only completion tokens count in
    the loss. Lists of ints keep it cheap to store, cache and collate.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        """Tokens a padded / packed layout processes for this pair (prompt counted twice)."""
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)
