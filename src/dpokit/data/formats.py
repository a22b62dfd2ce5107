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
  form with no prompt column (HH-RLHF, ``data/implicit.py``). The prompt is the longest run of
  whole turns they share, ending with the ``"\\n\\nAssistant:"`` marker of the turn where they differ;
  each completion is the rest of its dialogue (``" answer"``, with the space, as TRL cuts it). The same pair is also
  kept as chat messages (`PreferencePair.as_chat`), which tokenization uses when the tokenizer
  has a chat template; without one the raw text is tokenized, as TRL does.
* ``orca``: ``{system, question, chosen, rejected}`` strings (Intel/orca_dpo_pairs), read as a
  conversation: an optional system message and the question as the user message.

A user column mapping (``columns: {prompt: question, chosen: good, rejected: bad}``) renames
columns before detection; a list of names keeps only those columns (alignment-handbook).

What is wrong with a row is a `RowProblem` (``data/fields.py``, with the checks of single fields), with a level:

* ``error``: the row cannot be used as it is (missing column, wrong type, empty field, chosen ==
  rejected, unknown role, no shared prompt). Training stops unless ``on_bad_row: skip``.
* ``warning``: the row is well formed but yields nothing to learn from (an empty completion after
  prompt extraction); it is dropped, counted and reported.
* ``note``: the row is used, but differently from the common case (HH-RLHF rows whose dialogues
  already differ before the last assistant turn: the completions then hold several turns).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dpokit.data.fields import (
    EARLY_DIFFERENCE,
    MISSING,
    NO_PROMPT,
    WRONG_TYPE,
    RowProblem,
    check_different,
    check_roles,
    check_same_kind,
    empty_completion,
    keys_text,
    message_list,
    optional_text,
    show,
    text_field,
    type_name,
)
from dpokit.data.implicit import implicit_pair
from dpokit.data.pairs import Message, PreferencePair

# ---- column mapping and detection ----------------------------------------------------------------


def apply_columns(row: Mapping[str, Any], columns: Mapping[str, str] | list[str] | None) -> dict[str, Any]:
    """Rename (``{ours: theirs}``) or select (``[names]``) columns of one row."""
    if not columns:
        return dict(row)
    if isinstance(columns, list):
        missing = [c for c in columns if c not in row]
        if missing:
            raise RowProblem(MISSING, f"missing column '{missing[0]}' named in `columns` "
                             f"(the row has: {keys_text(row)})", column=missing[0],
                             hint="fix the `columns` list, or remove it")
        return {c: row[c] for c in columns}
    out = {k: v for k, v in row.items() if k not in columns.values()}
    for ours, theirs in columns.items():
        if theirs not in row:
            raise RowProblem(MISSING, f"missing column '{theirs}' (mapped to '{ours}' by `columns`; "
                             f"the row has: {keys_text(row)})", column=theirs,
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
    readers = {"plain": lambda r: (_plain(r), None), "conversational": _conversational, "implicit": implicit_pair,
               "orca": lambda r: (_orca(r), None)}
    pair, note = readers[fmt](row)  # a KeyError for an unknown format: dpokit's own mistake, not the data's
    if not isinstance(kwargs := row.get("chat_template_kwargs") or {}, Mapping):
        raise RowProblem(WRONG_TYPE, f"expected a mapping of chat template arguments, got {type_name(kwargs)} "
                         f"({show(kwargs)})", column="chat_template_kwargs", hint="write it as an object")
    pair.chat_template_kwargs = dict(kwargs) or None
    return pair, note


# ---- the formats ------------------------------------------------------------------------------


def _plain(row: Mapping[str, Any]) -> PreferencePair:
    prompt = text_field(row, "prompt")
    chosen, rejected = text_field(row, "chosen"), text_field(row, "rejected")
    check_different(chosen, rejected)
    return PreferencePair(prompt, chosen, rejected, system=optional_text(row, "system"))


def _orca(row: Mapping[str, Any]) -> PreferencePair:
    question = text_field(row, "question")
    chosen, rejected = text_field(row, "chosen"), text_field(row, "rejected")
    check_different(chosen, rejected)
    system = optional_text(row, "system")
    prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return PreferencePair(prompt, [{"role": "assistant", "content": chosen}],
                          [{"role": "assistant", "content": rejected}])


def _is_assistant(messages: list[Message], i: int) -> bool:
    """True when message i is an assistant turn or lies past the end (an empty completion)."""
    return i >= len(messages) or messages[i]["role"] == "assistant"


def _blank(messages: list[Message]) -> bool:
    return not messages or all(not m["content"].strip() for m in messages)


def _conversational(row: Mapping[str, Any]) -> tuple[PreferencePair, RowProblem | None]:
    check_same_kind(row)
    check_roles(row)
    chosen, rejected = message_list(row, "chosen"), message_list(row, "rejected")
    check_different(chosen, rejected)
    system = optional_text(row, "system")
    prompt_value = row.get("prompt")
    if prompt_value is not None and chosen[0]["role"] == "assistant" and rejected[0]["role"] == "assistant":
        # Explicit prompt: prompt messages (or one user string), then the answers.
        if isinstance(prompt_value, str):
            prompt = [{"role": "user", "content": text_field(row, "prompt")}]
        else:
            prompt = message_list(row, "prompt")
        if _blank(chosen) or _blank(rejected):
            raise empty_completion("chosen" if _blank(chosen) else "rejected")
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
        raise empty_completion("chosen" if _blank(chosen_c) else "rejected")
    note = None
    if len(chosen_c) > 1 or len(rejected_c) > 1:
        note = RowProblem(EARLY_DIFFERENCE, f"the completions hold {max(len(chosen_c), len(rejected_c))} "
                          "messages: chosen and rejected part before the last assistant turn", level="note",
                          hint="kept: the prompt is the messages both share")
    return PreferencePair(prompt, chosen_c, rejected_c, system=system), note
