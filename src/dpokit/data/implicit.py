"""The implicit-prompt format (HH-RLHF): whole ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` dialogues
in ``chosen`` / ``rejected``, split into the prompt they share and the two completions (see
``formats.py`` for the rules)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dpokit.data.fields import (
    EARLY_DIFFERENCE,
    NO_PROMPT,
    RowProblem,
    check_different,
    empty_completion,
    text_field,
)
from dpokit.data.pairs import Message, PreferencePair

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


def implicit_pair(row: Mapping[str, Any]) -> tuple[PreferencePair, RowProblem | None]:
    chosen, rejected = text_field(row, "chosen"), text_field(row, "rejected")
    check_different(chosen, rejected)
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
        raise empty_completion("chosen" if not chosen_c.strip() else "rejected")
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
