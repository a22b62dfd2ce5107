"""Reading local JSON Lines / JSON files line by line, with problems that name the file and line.

The `datasets` JSON loader hides line numbers and accepts wrong types silently (ANCHORS.md), so
local JSON is read here: each line is decoded and parsed on its own, so one bad line is one
located problem (an error, or a skipped row under ``on_bad_row: skip``) rather than a failed
file. A ``.json`` file may also hold one JSON array of objects. ``.gz`` files are read as well.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dpokit.data.fields import RowProblem
from dpokit.data.pairs import PreferencePair
from dpokit.data.report import RawRow, collect_pairs
from dpokit.errors import DataError

SAMPLE_HINT = "create sample pairs with `dpokit data sample --output preference_data.jsonl`"
INVALID_UNICODE = "invalid Unicode"
ROW_HINT = 'each line must be one JSON object, e.g. {"prompt": "...", "chosen": "...", "rejected": "..."}'


# What a corrupt or truncated file raises while it is read (gzip.BadGzipFile is an OSError).
READ_ERRORS = (OSError, EOFError, zlib.error)


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _unreadable(path: Path, error: BaseException, line: int | None = None) -> DataError:
    """A file that breaks off or is corrupt (a truncated download, a bad .gz): one located error."""
    detail = str(error).strip() or type(error).__name__
    if path.suffix == ".gz":
        return DataError(f"cannot read the gzip file: it is corrupt or truncated ({detail})", path=str(path),
                         line=line, reason="unreadable file",
                         hint="download or compress it again (`gzip -t FILE` checks a .gz file), or pass the "
                         "uncompressed file")
    return DataError(f"cannot read the file ({detail})", path=str(path), line=line, reason="unreadable file",
                     hint="check that the file is complete and readable")


def check_file(path: Path, what: str = "a data file") -> None:
    if not path.exists():
        raise DataError(f"preference data not found at {path}", hint=SAMPLE_HINT, reason="missing file")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not {what}", hint="pass the path of a .jsonl file",
                        reason="not a file")


def _not_rows(path: Path, line: int | None, got: str, hint: str = ROW_HINT) -> DataError:
    return DataError(f"expected a JSON object, got {got}: the file is not rows of JSON objects", path=str(path),
                     line=line, reason="not rows of objects", hint=hint)


def iter_json_rows(path: str | Path) -> Iterator[RawRow]:
    """Yield ``(line, None, row or RowProblem)`` for each row of a JSON Lines or JSON-array file.

    Problems of single lines (invalid JSON, undecodable bytes, a non-object) are yielded as
    `RowProblem` so the caller's policy decides; problems of the whole file (missing, empty, not
    rows of objects) raise `DataError`.
    """
    path = Path(path)
    check_file(path)
    try:
        with _open_binary(path) as f:
            head = f.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    except READ_ERRORS:
        head = b""  # reading line by line below finds the line where the file breaks off
    if head.startswith(b"["):
        yield from _iter_array(path)
        return
    seen = 0
    for number, raw in _raw_lines(path):
        if number == 1:
            raw = raw.lstrip(b"\xef\xbb\xbf")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            seen += 1
            yield number, None, RowProblem(
                "undecodable bytes", f"the line is not valid UTF-8 (byte {e.start} of the line cannot be "
                f"decoded: {raw[e.start:e.start + 4]!r})", hint="save the file as UTF-8")
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if seen == 0:
                _check_single_object(path)
            seen += 1
            yield number, None, RowProblem("invalid JSON", f"invalid JSON ({_json_error(e, line)})", hint=ROW_HINT)
            continue
        if not isinstance(row, dict):
            if seen == 0:
                raise _not_rows(path, number, f"a JSON {_json_type(row)}")
            seen += 1
            yield number, None, RowProblem("not an object", f"expected a JSON object, got a JSON {_json_type(row)}",
                                           hint=ROW_HINT)
            continue
        seen += 1
        yield number, None, (_SURROGATE_ESCAPE.search(line) and lone_surrogate(row, line)) or row
    if seen == 0:
        raise DataError("the file is empty: no rows", path=str(path), reason="empty file", hint=SAMPLE_HINT)


# Text decoded from UTF-8 holds no surrogate; only a JSON escape (\ud800-\udfff) can put one in a string.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _surrogate(value: Any) -> str | None:
    """The first lone UTF-16 surrogate (U+D800-U+DFFF) in a parsed JSON value's strings, keys included."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return None
        except UnicodeEncodeError as e:
            return value[e.start]
    if isinstance(value, dict):
        return next((s for item in value.items() for s in map(_surrogate, item) if s), None)
    if isinstance(value, list):
        return next((s for s in map(_surrogate, value) if s), None)
    return None


def lone_surrogate(row: dict[str, Any], text: str) -> RowProblem | None:
    """A row whose strings hold a lone UTF-16 surrogate (JSON ``"\\ud800"`` with no pair): valid JSON, but
    not Unicode text, which no tokenizer can encode and no UTF-8 file can hold. ``text`` is the row's JSON,
    to find the escape's character in it."""
    for key, value in row.items():
        ch = _surrogate(key) or _surrogate(value)
        if ch is None:
            continue
        escape = f"\\u{ord(ch):04x}"
        found = re.search(r"(?<!\\)(?:\\\\)*" + re.escape(escape), text, flags=re.I)
        at = f" at character {found.end() - len(escape) + 1} of the line" if found else ""
        return RowProblem(INVALID_UNICODE, f"invalid Unicode: a lone UTF-16 surrogate ({escape}){at}, with no "
                          "partner to make one character", column=str(key) if _surrogate(value) else None,
                          hint=f"replace {escape} with the character it was meant to be (a pair such as "
                          "\\ud83d\\ude00 is one character and is fine), or remove the row")
    return None


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` of a file; a read that fails (a corrupt or truncated .gz) is a `DataError`."""
    number = 0
    try:
        with _open_binary(path) as f:
            for number, raw in enumerate(f, start=1):
                yield number, raw
    except READ_ERRORS as e:
        raise _unreadable(path, e, None if isinstance(e, gzip.BadGzipFile) else number + 1) from None


def _json_error(e: json.JSONDecodeError, line: str | None = None) -> str:
    """``Expecting ',' delimiter at character 27 of the line``: counted from 1 within the line.

    ``e.colno`` is not that for one line of JSON Lines: the line still ends with its newline, so an
    object cut off at the end of the line fails on the next (empty) line, at its column 1."""
    msg = e.msg.removesuffix(" at")  # "Invalid control character at": the position follows
    if line is None:  # a whole file: json counts lines and columns itself
        return f"{msg} at character {e.colno} of the line"
    line = line.rstrip("\r\n")
    at_end = ", where it ends: is the object cut off?" if e.pos >= len(line.rstrip()) else ""
    return f"{msg} at character {min(e.pos, len(line)) + 1} of the line{at_end}"


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _read_text(path: Path) -> str:
    try:
        with _open_binary(path) as f:
            data = f.read()
    except READ_ERRORS as e:
        raise _unreadable(path, e) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError("the file is not valid UTF-8", path=str(path), line=line, reason="undecodable bytes",
                        hint="save the file as UTF-8") from None


def _check_single_object(path: Path) -> None:
    """A pretty-printed JSON object spread over lines is one object, not rows: say so."""
    try:
        whole = json.loads(_read_text(path))
    except (json.JSONDecodeError, DataError):
        return
    if isinstance(whole, dict):
        inner = [k for k, v in whole.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        hint = (f"the rows seem to be under '{inner[0]}': write them one JSON object per line (JSON Lines), "
                "or as a top-level JSON array" if inner else ROW_HINT)
        raise _not_rows(path, None, "one JSON object holding the whole file", hint)


def _iter_array(path: Path) -> Iterator[RawRow]:
    """Rows of a file holding one JSON array of objects; each row's line is where it starts."""
    text = _read_text(path)
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted, seen = 1, 0, 0
    escapes = _SURROGATE_ESCAPE.search(text) is not None  # else no string can hold a surrogate

    def skip(p: int) -> int:
        while p < len(text) and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip(pos)
    while pos < len(text) and text[pos] != "]":
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON ({_json_error(e)})", path=str(path), line=e.lineno, reason="invalid JSON",
                            hint="fix the JSON array, or write one JSON object per line (JSON Lines)") from None
        if not isinstance(row, dict):
            if seen == 0:
                raise _not_rows(path, line, f"a JSON {_json_type(row)}")
            yield line, None, RowProblem("not an object", f"expected a JSON object, got a JSON {_json_type(row)}",
                                         hint="make each item of the array an object with prompt / chosen / rejected")
        else:
            yield line, None, (escapes and lone_surrogate(row, "")) or row
        seen += 1
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < len(text) and text[pos] != "]":
            line += text.count("\n", counted, pos)
            raise DataError("invalid JSON (expected ',' or ']' between array items)", path=str(path),
                            line=line, reason="invalid JSON", hint="fix the JSON array")
    if pos >= len(text):
        raise DataError("invalid JSON (the array is never closed with ']')", path=str(path),
                        line=text.count("\n") + 1, reason="invalid JSON", hint="fix the JSON array")
    after = skip(pos + 1)
    if after < len(text):  # a second array, or rows after it: never drop them silently
        raise DataError(f"unexpected text after the JSON array's closing ']' ({text[after:after + 20]!r})",
                        path=str(path), line=text.count("\n", 0, after) + 1, reason="invalid JSON",
                        hint="a .json file holds one JSON array of objects: put every row inside it, or write "
                        "one JSON object per line (JSON Lines)")
    if seen == 0:
        raise DataError("the file is empty: an empty JSON array", path=str(path), reason="empty file",
                        hint=SAMPLE_HINT)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` for each row; the first bad line raises `DataError`."""
    for line, _, row in iter_json_rows(path):
        if isinstance(row, RowProblem):
            raise DataError(row.message, path=str(path), line=line, column=row.column, hint=row.hint,
                            reason=row.reason)
        yield line, row  # type: ignore[misc]


def read_preference_jsonl(path: str | Path, fmt: str = "auto") -> list[PreferencePair]:
    """Pairs from a local JSON Lines / JSON file in any format (``data/formats.py``); the first bad row
    raises `DataError` naming the file, line, column and the fix."""
    pairs, report = collect_pairs(iter_json_rows(path), str(path), fmt)
    report.raise_errors("error", str(path))
    return pairs


def write_jsonl(path: str | Path, rows: list[dict[str, Any]], append: bool = False) -> None:
    """Write rows as JSON Lines (UTF-8, one object per line)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
