"""Checks of one row's fields, and `RowProblem`: what is wrong with a row, with its reason and fix.

The row formats (``formats.py``, ``implicit.py``) read their fields through these checks, so a
missing column, a wrong type, an empty field or a bad chat message reads the same in every format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dpokit.data.pairs import Message

ROLES = ("system", "user", "assistant", "tool")
ROLE_HINTS = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant", "ai": "assistant"}

# Reasons, as reported and counted (also DataError.reason).
MISSING = "missing column"
WRONG_TYPE = "wrong type"
EMPTY = "empty field"
SAME = "chosen == rejected"
ROLE = "unknown role"
NO_PROMPT = "no shared prompt"
EMPTY_COMPLETION = "empty completion after prompt extraction"
EARLY_DIFFERENCE = "dialogues differ before the last assistant turn"


class RowProblem(Exception):
    """What is wrong with one row (or, at level ``note``, what is unusual about it).

    ``hint`` is the fix; ``source_hints`` holds fixes for one kind of source where the fix depends on
    it (``"json"``, ``"parquet"``, ``"csv"``, ``"dataset"``: a value's type is fixed in JSON by quoting
    it, in a Parquet file or a data set by the column's type)."""

    def __init__(self, reason: str, message: str, column: str | None = None, hint: str | None = None,
                 level: str = "error", source_hints: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.column, self.hint, self.level = reason, message, column, hint, level
        self.source_hints = dict(source_hints or {})

    def hint_for(self, source: str) -> str | None:
        """The fix for a row read from ``source`` (a key of ``source_hints``; else the general hint)."""
        return self.source_hints.get(source, self.hint)


# ---- field checks -----------------------------------------------------------------------------


def keys_text(row: Mapping[str, Any]) -> str:
    return ", ".join(sorted(map(str, row))) or "no keys"


def show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def type_name(value: Any) -> str:
    return "null" if value is None else {"dict": "object", "list": "list", "str": "string"}.get(
        type(value).__name__, type(value).__name__)


def missing_column(row: Mapping[str, Any], key: str) -> RowProblem:
    keys = set(map(str, row))
    hint = f"each row needs {key}; map your own column names with `columns: {{{key}: YOUR_COLUMN}}`"
    if key in ("chosen", "rejected") and "messages" in keys:
        hint = ("this looks like SFT data (a 'messages' column, no chosen/rejected): pick a preference split "
                "(e.g. 'train_prefs', not 'train_sft'), or a preference data set")
    elif key == "prompt" and keys >= {"chosen", "rejected"}:
        hint = "add a prompt, or set `format: implicit` if chosen and rejected hold whole dialogues"
    return RowProblem(MISSING, f"missing column '{key}' (the row has: {keys_text(row)})", column=key, hint=hint)


def _null(key: str) -> RowProblem:
    return RowProblem(MISSING, f"'{key}' has no value (null)", column=key,
                      hint=f"give {key} a value, or remove the row")


def text_field(row: Mapping[str, Any], key: str, what: str = "a string") -> str:
    if key not in row:
        raise missing_column(row, key)
    value = row[key]
    if value is None:
        raise _null(key)
    if not isinstance(value, str):
        message = f"expected {what}, got {type_name(value)} ({show(value)})"
        if isinstance(value, list):
            raise RowProblem(WRONG_TYPE, message, column=key, hint="this source was read as text from its "
                             "first row; set `format: conversational`")
        json_hint = (f"give {key} as a string, not a JSON object" if isinstance(value, Mapping)
                     else f'put the text in quotes, e.g. "{key}": "{show(value)}"')
        raise RowProblem(WRONG_TYPE, message, column=key, hint=json_hint, source_hints={
            "parquet": f"store {key} as text (string) in the file, e.g. convert the column with "
                       f"`df['{key}'] = df['{key}'].astype(str)` before writing it",
            "dataset": f"store {key} as text (string) in the data set, or map a text column to it with "
                       f"`columns: {{{key}: YOUR_COLUMN}}`; for CSV files, pass the file itself (dpokit reads "
                       "every CSV field as text)"})
    if not value.strip():
        raise RowProblem(EMPTY, f"'{key}' is empty", column=key,
                         hint=f"give a non-empty {key} or remove the row")
    return value


def optional_text(row: Mapping[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowProblem(WRONG_TYPE, f"expected a string, got {type_name(value)} ({show(value)})",
                         column=key, hint=f"make '{key}' a string, or leave it out")
    return value if value.strip() else None


def message_list(row: Mapping[str, Any], key: str) -> list[Message]:
    """A list of ``{role, content}`` messages, less empty system messages (a string is one assistant
    message: only call this for a string where that is meant, see `check_same_kind`)."""
    if key not in row:
        raise missing_column(row, key)
    value = row[key]
    if value is None:
        raise _null(key)
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem(EMPTY, f"'{key}' is empty", column=key, hint=f"give a non-empty {key} or remove the row")
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, list):
        raise RowProblem(WRONG_TYPE, f"expected a list of chat messages, got {type_name(value)} ({show(value)})",
                         column=key, hint='use [{"role": "user", "content": "..."}, {"role": "assistant", ...}]')
    if not value:
        raise RowProblem(EMPTY, f"'{key}' is an empty list of messages", column=key,
                         hint=f"give {key} at least one message, or remove the row")
    messages = [m for m in (_message(m, key, i) for i, m in enumerate(value)) if m is not None]
    if not messages:
        raise RowProblem(EMPTY, f"'{key}' holds only empty system messages", column=key,
                         hint=f"give {key} the conversation's messages, or remove the row")
    return messages


def _message(message: Any, key: str, i: int) -> Message | None:
    """One checked message; None for an empty system message (no system prompt), which real data
    often holds; an empty user or assistant turn is an empty field. (An empty tool result is kept:
    a tool may return nothing.)"""
    if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
        raise RowProblem(WRONG_TYPE, f"message {i} is not a {{\"role\": ..., \"content\": ...}} object "
                         f"({show(message)})", column=key,
                         hint="each message needs a role and a content")
    role, content = message["role"], message["content"]
    if role not in ROLES:
        raise role_problem([(key, i, role)])
    if not isinstance(content, str):
        raise RowProblem(WRONG_TYPE, f"message {i} has content of type {type_name(content)}, expected a string",
                         column=key, hint="make each message's content a string")
    if not content.strip() and role in ("user", "assistant"):
        raise RowProblem(EMPTY, f"message {i} ({role}) is empty", column=key,
                         hint=f"give message {i} of {key} its text, or remove the row")
    if not content.strip() and role == "system":
        return None
    return {"role": role, "content": content}


def check_roles(row: Mapping[str, Any], keys: tuple[str, ...] = ("prompt", "chosen", "rejected")) -> None:
    """Every message of the row's message lists with a role dpokit does not know, reported at once (a
    data set that says "human" / "gpt" says so in every row and every message: one fix for all)."""
    found = [(key, i, m["role"]) for key in keys if isinstance(row.get(key), list)
             for i, m in enumerate(row[key]) if isinstance(m, Mapping) and "role" in m and m["role"] not in ROLES]  # no role: a wrong type
    if found:
        raise role_problem(found)


def role_problem(found: list[tuple[str, int, Any]]) -> RowProblem:
    """One problem for the unknown roles ``(column, message index, role)`` of a row, with every rename."""
    if len(found) == 1:
        key, i, role = found[0]
        message = f"message {i} has the unknown role {show(role)}"
    else:
        shown = ", ".join(f"{key}[{i}] {show(role)}" for key, i, role in found[:12])
        more = f" and {len(found) - 12} more" if len(found) > 12 else ""
        message = f"{len(found)} messages have unknown roles: {shown}{more}"
    roles = list(dict.fromkeys(str(role) for _, _, role in found))
    renames = [f"'{role}' to '{ROLE_HINTS[role.lower()]}'" for role in roles if role.lower() in ROLE_HINTS]
    return RowProblem(ROLE, message, column=found[0][0], hint=f"roles must be one of {', '.join(ROLES)}"
                      + (f"; rename {', '.join(renames)}" if renames else ""))


def check_same_kind(row: Mapping[str, Any]) -> None:
    """Chosen and rejected are both message lists or both strings: a string beside a list is a
    wrong type (reading it as one assistant message would hide the mistake; with whole
    conversations it would also end as "no shared prompt", far from the cause)."""
    for text, other in (("chosen", "rejected"), ("rejected", "chosen")):
        if isinstance(row.get(text), str) and isinstance(row.get(other), list):
            both = ", or make both plain strings (the answers to the prompt)" if row.get("prompt") is not None else ""
            raise RowProblem(WRONG_TYPE, f"expected a list of chat messages, as '{other}' is, got a string "
                             f"({show(row[text])})", column=text,
                             hint=f'make {text} a list of chat messages like {other} ([{{"role": "...", '
                             f'"content": "..."}}, ...]){both}')


def check_different(chosen: Any, rejected: Any) -> None:
    if chosen == rejected:
        raise RowProblem(SAME, "chosen and rejected are identical: the pair carries no preference",
                         column="chosen", hint="remove the row or fix one of the responses")


def empty_completion(side: str) -> RowProblem:
    return RowProblem(EMPTY_COMPLETION, f"the {side} completion is empty once the shared prompt is taken off",
                      column=side, level="warning", hint="the row is dropped; fix or remove it to use it")
