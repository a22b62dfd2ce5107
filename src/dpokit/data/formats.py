"""Row formats: detect which shape a data set's rows have and turn each row into a `PreferencePair`.

Every format users bring is converted here, once, at the edge (DESIGN.md). Formats:

* ``plain``: ``{prompt, chosen, rejected}`` strings (the quick start; an optional ``system``).
* ``conversational``: ``chosen`` / ``rejected`` as chat message lists. Either they hold the whole
  conversation, user turn included (UltraFeedback: the prompt is their shared leading messages),
  or ``prompt`` holds the messages before the answer (a string prompt is one user message) and
  ``chosen`` / ``rejected`` hold assistant messages (or both plain strings, each read as one assistant
  message; a string beside a message list is a wrong type). A message with empty content is an empty
  field, except a system message, which is dropped (an empty system prompt is common in real data).
* ``implicit``: ``chosen`` / ``rejected`` are whole dialogues in ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``
  form with no prompt column (HH-RLHF). The prompt is the longest run of whole turns they share,
  ending with the ``"\\n\\nAssistant:"`` marker of the turn where they differ; each completion is
  the rest of its dialogue (``" answer"``, with the space, as TRL cuts it). The same pair is also
  kept as chat messages (`PreferencePair.as_chat`), which tokenization uses when the tokenizer
  has a chat template; without one the raw text is tokenized, as TRL does.
* ``orca``: ``{system, question, chosen, rejected}`` strings (Intel/orca_dpo_pairs), read as a
  conversation: an optional system message and the question as the user message.

A user column mapping (``columns: {prompt: question, chosen: good, rejected: bad}``) renames
columns before detection; a list of names keeps only those columns (alignment-handbook).

What is wrong with a row is a `RowProblem`, with a level:

* ``error``: the row cannot be used as it is (missing column, wrong type, empty field, chosen ==
  rejected, unknown role, no shared prompt). Training stops unless ``on_bad_row: skip``.
* ``warning``: the row is well formed but yields nothing to learn from (an empty completion after
  prompt extraction); it is dropped, counted and reported.
* ``note``: the row is used, but differently from the common case (HH-RLHF rows whose dialogues
  already differ before the last assistant turn: the completions then hold several turns).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from dpokit.data.pairs import Message, PreferencePair

FORMATS = ("plain", "conversational", "implicit", "orca")
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


# ---- column mapping and detection ----------------------------------------------------------------


def apply_columns(row: Mapping[str, Any], columns: Mapping[str, str] | list[str] | None) -> dict[str, Any]:
    """Rename (``{ours: theirs}``) or select (``[names]``) columns of one row."""
    if not columns:
        return dict(row)
    if isinstance(columns, list):
        missing = [c for c in columns if c not in row]
        if missing:
            raise RowProblem(MISSING, f"missing column '{missing[0]}' named in `columns` "
                             f"(the row has: {_keys(row)})", column=missing[0],
                             hint="fix the `columns` list, or remove it")
        return {c: row[c] for c in columns}
    out = {k: v for k, v in row.items() if k not in columns.values()}
    for ours, theirs in columns.items():
        if theirs not in row:
            raise RowProblem(MISSING, f"missing column '{theirs}' (mapped to '{ours}' by `columns`; "
                             f"the row has: {_keys(row)})", column=theirs,
                             hint=f"fix `columns: {{{ours}: ...}}` to name one of the row's columns")
        out[ours] = row[theirs]
    return out


def detect_format(row: Mapping[str, Any]) -> str:
    """The format of a (column-mapped) row, from its keys and value types."""
    if "question" in row and "prompt" not in row:
        return "orca"
    if isinstance(row.get("chosen"), list) or isinstance(row.get("rejected"), list) \
            or isinstance(row.get("prompt"), list):
        return "conversational"
    if "prompt" in row:
        return "plain"
    if "chosen" in row and "rejected" in row:
        return "implicit"
    return "plain"  # a missing column, reported by the plain reader


def describe_format(fmt: str) -> str:
    return {
        "plain": "plain (prompt / chosen / rejected strings)",
        "conversational": "conversational (chat message lists)",
        "implicit": "implicit prompt (whole Human/Assistant dialogues, HH-RLHF)",
        "orca": "system + question (Intel Orca)",
        "prepared": "prepared by `dpokit data prepare`",
    }.get(fmt, fmt or "unknown (no readable row)")


def normalise_row(row: Mapping[str, Any], fmt: str) -> tuple[PreferencePair, RowProblem | None]:
    """One row as a `PreferencePair` (plus a note, if any); raises `RowProblem` when it is bad. A
    ``chat_template_kwargs`` column (``{enable_thinking: false}``) goes with the pair to the chat template."""
    readers = {"plain": lambda r: (_plain(r), None), "conversational": _conversational, "implicit": _implicit,
               "orca": lambda r: (_orca(r), None)}
    pair, note = readers[fmt](row)  # a KeyError for an unknown format: dpokit's own mistake, not the data's
    if not isinstance(kwargs := row.get("chat_template_kwargs") or {}, Mapping):
        raise RowProblem(WRONG_TYPE, f"expected a mapping of chat template arguments, got {_type_name(kwargs)} "
                         f"({_show(kwargs)})", column="chat_template_kwargs", hint="write it as an object")
    pair.chat_template_kwargs = dict(kwargs) or None
    return pair, note


# ---- field checks -----------------------------------------------------------------------------


def _keys(row: Mapping[str, Any]) -> str:
    return ", ".join(sorted(map(str, row))) or "no keys"


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(value: Any) -> str:
    return "null" if value is None else {"dict": "object", "list": "list", "str": "string"}.get(
        type(value).__name__, type(value).__name__)


def _missing(row: Mapping[str, Any], key: str) -> RowProblem:
    keys = set(map(str, row))
    hint = f"each row needs {key}; map your own column names with `columns: {{{key}: YOUR_COLUMN}}`"
    if key in ("chosen", "rejected") and "messages" in keys:
        hint = ("this looks like SFT data (a 'messages' column, no chosen/rejected): pick a preference split "
                "(e.g. 'train_prefs', not 'train_sft'), or a preference data set")
    elif key == "prompt" and keys >= {"chosen", "rejected"}:
        hint = "add a prompt, or set `format: implicit` if chosen and rejected hold whole dialogues"
    return RowProblem(MISSING, f"missing column '{key}' (the row has: {_keys(row)})", column=key, hint=hint)


def _null(key: str) -> RowProblem:
    return RowProblem(MISSING, f"'{key}' has no value (null)", column=key,
                      hint=f"give {key} a value, or remove the row")


def _text(row: Mapping[str, Any], key: str, what: str = "a string") -> str:
    if key not in row:
        raise _missing(row, key)
    value = row[key]
    if value is None:
        raise _null(key)
    if not isinstance(value, str):
        message = f"expected {what}, got {_type_name(value)} ({_show(value)})"
        if isinstance(value, list):
            raise RowProblem(WRONG_TYPE, message, column=key, hint="this source was read as text from its "
                             "first row; set `format: conversational`")
        json_hint = (f"give {key} as a string, not a JSON object" if isinstance(value, Mapping)
                     else f'put the text in quotes, e.g. "{key}": "{_show(value)}"')
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


def _optional_text(row: Mapping[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowProblem(WRONG_TYPE, f"expected a string, got {_type_name(value)} ({_show(value)})",
                         column=key, hint=f"make '{key}' a string, or leave it out")
    return value if value.strip() else None


def _messages(row: Mapping[str, Any], key: str) -> list[Message]:
    """A list of ``{role, content}`` messages, less empty system messages (a string is one assistant
    message: only call this for a string where that is meant, see `_check_same_kind`)."""
    if key not in row:
        raise _missing(row, key)
    value = row[key]
    if value is None:
        raise _null(key)
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem(EMPTY, f"'{key}' is empty", column=key, hint=f"give a non-empty {key} or remove the row")
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, list):
        raise RowProblem(WRONG_TYPE, f"expected a list of chat messages, got {_type_name(value)} ({_show(value)})",
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
                         f"({_show(message)})", column=key,
                         hint="each message needs a role and a content")
    role, content = message["role"], message["content"]
    if role not in ROLES:
        better = ROLE_HINTS.get(str(role).lower())
        raise RowProblem(ROLE, f"message {i} has the unknown role {_show(role)}", column=key,
                         hint=f"roles must be one of {', '.join(ROLES)}"
                         + (f"; rename '{role}' to '{better}'" if better else ""))
    if not isinstance(content, str):
        raise RowProblem(WRONG_TYPE, f"message {i} has content of type {_type_name(content)}, expected a string",
                         column=key, hint="make each message's content a string")
    if not content.strip() and role in ("user", "assistant"):
        raise RowProblem(EMPTY, f"message {i} ({role}) is empty", column=key,
                         hint=f"give message {i} of {key} its text, or remove the row")
    if not content.strip() and role == "system":
        return None
    return {"role": role, "content": content}


def _check_same_kind(row: Mapping[str, Any]) -> None:
    """Chosen and rejected are both message lists or both strings: a string beside a list is a
    wrong type (reading it as one assistant message would hide the mistake; with whole
    conversations it would also end as "no shared prompt", far from the cause)."""
    for text, other in (("chosen", "rejected"), ("rejected", "chosen")):
        if isinstance(row.get(text), str) and isinstance(row.get(other), list):
            both = ", or make both plain strings (the answers to the prompt)" if row.get("prompt") is not None else ""
            raise RowProblem(WRONG_TYPE, f"expected a list of chat messages, as '{other}' is, got a string "
                             f"({_show(row[text])})", column=text,
                             hint=f'make {text} a list of chat messages like {other} ([{{"role": "...", '
                             f'"content": "..."}}, ...]){both}')


def _check_different(chosen: Any, rejected: Any) -> None:
    if chosen == rejected:
        raise RowProblem(SAME, "chosen and rejected are identical: the pair carries no preference",
                         column="chosen", hint="remove the row or fix one of the responses")


def _empty_completion(side: str) -> RowProblem:
    return RowProblem(EMPTY_COMPLETION, f"the {side} completion is empty once the shared prompt is taken off",
                      column=side, level="warning", hint="the row is dropped; fix or remove it to use it")


# ---- the formats ------------------------------------------------------------------------------


def _plain(row: Mapping[str, Any]) -> PreferencePair:
    prompt = _text(row, "prompt")
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    _check_different(chosen, rejected)
    return PreferencePair(prompt, chosen, rejected, system=_optional_text(row, "system"))


def _orca(row: Mapping[str, Any]) -> PreferencePair:
    question = _text(row, "question")
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    _check_different(chosen, rejected)
    system = _optional_text(row, "system")
    prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return PreferencePair(prompt, [{"role": "assistant", "content": chosen}],
                          [{"role": "assistant", "content": rejected}])


def _is_assistant(messages: list[Message], i: int) -> bool:
    """True when message i is an assistant turn or lies past the end (an empty completion)."""
    return i >= len(messages) or messages[i]["role"] == "assistant"


def _blank(messages: list[Message]) -> bool:
    return not messages or all(not m["content"].strip() for m in messages)


def _conversational(row: Mapping[str, Any]) -> tuple[PreferencePair, RowProblem | None]:
    _check_same_kind(row)
    chosen, rejected = _messages(row, "chosen"), _messages(row, "rejected")
    _check_different(chosen, rejected)
    system = _optional_text(row, "system")
    prompt_value = row.get("prompt")
    if prompt_value is not None and chosen[0]["role"] == "assistant" and rejected[0]["role"] == "assistant":
        # Explicit prompt: prompt messages (or one user string), then the answers.
        if isinstance(prompt_value, str):
            prompt = [{"role": "user", "content": _text(row, "prompt")}]
        else:
            prompt = _messages(row, "prompt")
        if _blank(chosen) or _blank(rejected):
            raise _empty_completion("chosen" if _blank(chosen) else "rejected")
        return PreferencePair(prompt, chosen, rejected, system=system), None
    # Whole conversations (UltraFeedback): the prompt is the messages both share, up to an
    # assistant turn where they part.
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    while k > 0 and not (_is_assistant(chosen, k) and _is_assistant(rejected, k)):
        k -= 1
    if k == 0:
        raise RowProblem(NO_PROMPT, "chosen and rejected share no leading messages that end before an "
                         "assistant turn, so no prompt can be taken from them", column="chosen",
                         hint="start both conversations with the same user turn(s), or give a 'prompt' column "
                         "and only the assistant answers in chosen / rejected")
    prompt, chosen_c, rejected_c = chosen[:k], chosen[k:], rejected[k:]
    if _blank(chosen_c) or _blank(rejected_c):
        raise _empty_completion("chosen" if _blank(chosen_c) else "rejected")
    note = None
    if len(chosen_c) > 1 or len(rejected_c) > 1:
        note = RowProblem(EARLY_DIFFERENCE, f"the completions hold {max(len(chosen_c), len(rejected_c))} "
                          "messages: chosen and rejected part before the last assistant turn", level="note",
                          hint="kept: the prompt is the messages both share")
    return PreferencePair(prompt, chosen_c, rejected_c, system=system), note


# ---- implicit prompt (HH-RLHF) ------------------------------------------------------------------

_TURN = re.compile(r"\n\nHuman:|\n\nAssistant:|^Human:|^Assistant:")


def split_turns(text: str) -> list[tuple[str | None, str, str]]:
    """A dialogue as ``(speaker, marker, content)`` turns; text before the first marker has speaker None."""
    marks = list(_TURN.finditer(text))
    turns: list[tuple[str | None, str, str]] = []
    if not marks or marks[0].start() > 0:
        turns.append((None, "", text[: marks[0].start() if marks else len(text)]))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        speaker = "assistant" if "Assistant" in m.group() else "user"
        turns.append((speaker, m.group(), text[m.end():end]))
    return turns


def _turns_to_messages(turns: list[tuple[str | None, str, str]]) -> list[Message]:
    return [{"role": speaker or "system", "content": content.strip()} for speaker, _, content in turns
            if speaker is not None or content.strip()]


def _implicit(row: Mapping[str, Any]) -> tuple[PreferencePair, RowProblem | None]:
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    _check_different(chosen, rejected)
    c_turns, r_turns = split_turns(chosen), split_turns(rejected)
    k = 0
    while k < min(len(c_turns), len(r_turns)) and c_turns[k] == r_turns[k]:
        k += 1

    def assistant_at(turns: list, i: int) -> bool:
        return i >= len(turns) or turns[i][0] == "assistant"

    # Back up to a turn where both sides hold an assistant turn (or have ended).
    while k > 0 and not (assistant_at(c_turns, k) and assistant_at(r_turns, k)):
        k -= 1
    # The prompt ends with the assistant marker of turn k, which both dialogues have.
    turn = c_turns[k] if k < len(c_turns) else r_turns[k] if k < len(r_turns) else None
    if k == 0 or turn is None or turn[0] != "assistant":
        raise RowProblem(NO_PROMPT, "chosen and rejected do not share a dialogue start that ends at an "
                         "'\\n\\nAssistant:' turn, so no prompt can be taken from them", column="chosen",
                         hint="give a 'prompt' column (format plain), or start both dialogues with the same "
                         "'\\n\\nHuman: ...' turns")
    prompt = "".join(m + c for _, m, c in c_turns[:k]) + turn[1]
    if not (chosen.startswith(prompt) and rejected.startswith(prompt)):
        # One side ended exactly at turn k; the marker still starts the other side's last turn.
        prompt = "".join(m + c for _, m, c in c_turns[:k])
    chosen_c, rejected_c = chosen[len(prompt):], rejected[len(prompt):]
    if not chosen_c.strip() or not rejected_c.strip():
        raise _empty_completion("chosen" if not chosen_c.strip() else "rejected")
    chat_prompt = _turns_to_messages(c_turns[:k])
    chat = PreferencePair(chat_prompt, _completion_messages(chosen_c), _completion_messages(rejected_c))
    note = None
    extra = max(len(c_turns), len(r_turns)) - k
    if len(c_turns) - k > 1 or len(r_turns) - k > 1:
        note = RowProblem(EARLY_DIFFERENCE, f"chosen and rejected differ before the last assistant turn, so a "
                          f"completion holds up to {extra} turns", level="note",
                          hint="kept: the prompt is the turns both share")
    return PreferencePair(prompt, chosen_c, rejected_c, as_chat=chat), note


def _completion_messages(text: str) -> list[Message]:
    """The completion text (starting inside an assistant turn) as chat messages."""
    turns = split_turns("\n\nAssistant:" + text)
    return [{"role": speaker or "assistant", "content": content.strip()} for speaker, _, content in turns]
