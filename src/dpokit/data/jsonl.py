"""Reading local JSON Lines files line by line, with errors that name the file and line.

The `datasets` JSON loader hides line numbers and accepts wrong types silently, so local
JSON/JSONL is read here, one line at a time, before any row is handed on.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dpokit.errors import DataError
from dpokit.data.pairs import PreferencePair

SAMPLE_HINT = "create sample pairs with `dpokit data sample --output preference_data.jsonl`"


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` for each non-blank line; line numbers count from 1."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"preference data not found at {path}", hint=SAMPLE_HINT, reason="missing file")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a JSONL file", hint="pass the path of a .jsonl file")
    seen = 0
    try:
        with _open_text(path) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"invalid JSON ({e.msg} at character {e.colno})",
                        path=str(path), line=number, reason="invalid JSON",
                        hint='each line must be one JSON object, e.g. {"prompt": "...", "chosen": "...", "rejected": "..."}',
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(
                        f"expected a JSON object, got {type(row).__name__}",
                        path=str(path), line=number, reason="not an object",
                        hint="each line must be one JSON object with prompt, chosen and rejected keys",
                    )
                seen += 1
                yield number, row
    except UnicodeDecodeError as e:
        raise DataError(
            f"the file is not valid UTF-8 (byte {e.start} of a line cannot be decoded)",
            path=str(path), reason="undecodable bytes", hint="save the file as UTF-8",
        ) from None
    if seen == 0:
        raise DataError("the file is empty: no rows", path=str(path), reason="empty file", hint=SAMPLE_HINT)


def _check_text(row: dict[str, Any], key: str, path: str, line: int) -> Any:
    if key not in row:
        raise DataError(
            f"missing key '{key}' (the row has: {', '.join(sorted(row)) or 'no keys'})",
            path=path, line=line, column=key, reason="missing column",
            hint="each row needs prompt, chosen and rejected",
        )
    value = row[key]
    if isinstance(value, list):
        for i, message in enumerate(value):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise DataError(
                    f"message {i} is not a {{\"role\": str, \"content\": str}} object",
                    path=path, line=line, column=key, reason="wrong type",
                    hint="use a string, or a list of chat messages with role and content",
                )
        return value
    if not isinstance(value, str):
        raise DataError(
            f"expected a string, got {type(value).__name__} ({json.dumps(value)[:40]})",
            path=path, line=line, column=key, reason="wrong type",
            hint="put the text in quotes",
        )
    return value


def read_preference_jsonl(path: str | Path) -> list[PreferencePair]:
    """Read ``{prompt, chosen, rejected}`` rows (strings or chat message lists), checking each line."""
    pairs = []
    for line, row in iter_jsonl(path):
        fields = [_check_text(row, key, str(path), line) for key in ("prompt", "chosen", "rejected")]
        for key, value in zip(("chosen", "rejected"), fields[1:]):
            if (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value):
                raise DataError(f"'{key}' is empty", path=str(path), line=line, column=key,
                                reason="empty field", hint=f"give a non-empty {key} response or remove the row")
        if fields[1] == fields[2]:
            raise DataError("chosen and rejected are identical: the pair carries no preference",
                            path=str(path), line=line, column="chosen", reason="chosen == rejected",
                            hint="remove the row or fix one of the responses")
        system = row.get("system")
        pairs.append(PreferencePair(*fields, system=system if isinstance(system, str) else None,
                                    source=f"{path}:{line}"))
    return pairs


def write_jsonl(path: str | Path, rows: list[dict[str, Any]], append: bool = False) -> None:
    """Write rows as JSON Lines (UTF-8, one object per line)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
