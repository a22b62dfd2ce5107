"""Reading local files that dpokit reads itself: directories of JSON files (split by file name),
CSV / TSV files (every field as text, problems by line) and Parquet files; and the check that a
table has the columns a format needs, made once for the whole table before any row is read."""

from __future__ import annotations

import csv
import gzip
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dpokit.data.fields import RowProblem, missing_column
from dpokit.data.formats import apply_columns
from dpokit.data.jsonl import READ_ERRORS, SAMPLE_HINT, iter_json_rows
from dpokit.data.pairs import PreferencePair
from dpokit.data.report import LoadReport, RawRow, collect_pairs
from dpokit.data.resolve import SPLIT_WORDS, SourceSpec, json_files
from dpokit.errors import DataError

# ---- a local directory of JSON files -------------------------------------------------------------


def _split_word(relative: Path) -> str | None:
    """The split a file's name or folders put it in (``test.jsonl``, ``data/train-00000.jsonl``)."""
    for token in re.split(r"[-._ /0-9]+", relative.as_posix().lower()):
        for split, words in SPLIT_WORDS.items():
            if token in words:
                return split
    return None


def _shard_stem(path: Path) -> str:
    """``train_prefs`` for ``train_prefs.jsonl`` and for a shard ``train_prefs-00000-of-00002.jsonl.gz``."""
    return re.sub(r"-\d+-of-\d+$", "", path.name.split(".")[0])


def split_files(spec: SourceSpec) -> list[Path]:
    """The files of a JSON directory that make up ``spec.split``: those named exactly so (``train_prefs.jsonl``),
    else those whose names say the split (as `datasets` reads them), else, when no name says one, all (train)."""
    root = Path(spec.location) / spec.data_dir if spec.data_dir else Path(spec.location)
    files = json_files(Path(spec.location), spec.data_dir)
    split = spec.split or "train"
    exact = [f for f in files if split in (_shard_stem(f), *f.relative_to(root).parent.parts)]
    if exact:
        return exact
    groups = {f: _split_word(f.relative_to(root)) for f in files}
    if not any(groups.values()):
        groups = dict.fromkeys(files, "train")
    wanted = next((name for name, words in SPLIT_WORDS.items() if split.lower() in words), split)
    chosen = [f for f, group in groups.items() if group == wanted]
    if not chosen:
        found = [name for name in SPLIT_WORDS if name in groups.values()]
        raise DataError(f"no split '{split}' in the directory (its file names give: {', '.join(found)})",
                        path=spec.location, reason="unknown split",
                        hint=f"pick a split with --split (e.g. {found[0]}), or name the files after their "
                        "splits (train.jsonl, test.jsonl)")
    return chosen


def read_json_dir(spec: SourceSpec, max_rows: int | None) -> tuple[list[PreferencePair], LoadReport]:
    """Every file of the split, read line by line (problems name the file and line); the format found
    in the first file that has a good row holds for the rest."""
    report = LoadReport(spec.label, format="" if spec.format == "auto" else spec.format)
    pairs: list[PreferencePair] = []
    guess = ""  # the format of the first file, shown when no file has a good row
    for path in split_files(spec):
        left = None if max_rows is None else max_rows - report.rows
        if left is not None and left <= 0:
            break
        part, part_report = collect_pairs(iter_json_rows(path), str(path), report.format or "auto",
                                          spec.columns, left)
        if part:
            report.format = report.format or part_report.format
        guess = guess or part_report.format
        pairs += part
        report.rows += part_report.rows
        report.problems += part_report.problems
    report.format = report.format or guess
    report.pairs = len(pairs)
    return pairs, report


# ---- tables: CSV / TSV and Parquet ----------------------------------------------------------


def table_rows(batches: Iterator[list[dict[str, Any]]]) -> Iterator[RawRow]:
    index = 0
    for batch in batches:
        for row in batch:
            yield None, index, row
            index += 1


def check_columns(spec: SourceSpec, table: Any) -> None:
    """A table (Parquet, hub split) without the needed columns fails as a whole, at once.
    A column that is null in every row counts as missing (`datasets` gives every split of a
    repository the same columns, so an SFT split shows chosen / rejected full of nulls)."""
    rows = table.num_rows
    _check_names(spec, [n for n in table.column_names if table.column(n).null_count < rows], rows)


def _check_names(spec: SourceSpec, names: list[str], rows: int) -> None:
    if rows == 0:
        if spec.kind == "csv":
            raise DataError("the file has a header but no rows", path=spec.label, reason="empty file",
                            hint="add rows below the header, one pair per line, or pass another file")
        if spec.kind == "parquet":
            raise DataError("the file has no rows", path=spec.label, reason="empty file",
                            hint="write the pairs into it (one row per pair), or pass another file")
        raise DataError("the data set has no rows", path=spec.label, reason="empty file",
                        hint="check the split name (--split) and the data set's files")
    try:
        mapped = apply_columns(dict.fromkeys(names), spec.columns)
    except RowProblem as p:
        raise DataError(p.message, path=spec.label, column=p.column, hint=p.hint, reason=p.reason) from None
    needed = ["chosen", "rejected"] + {"plain": ["prompt"], "orca": ["question"]}.get(spec.format, [])
    for key in needed:
        if key not in mapped:
            p = missing_column(mapped, key)
            hint = p.hint
            if (spec.split or "").endswith("_sft"):
                hint = (f"split '{spec.split}' holds SFT data (no chosen/rejected pairs); use a preference split "
                        f"such as '{spec.split[:-4]}_prefs'")
            raise DataError(p.message.replace("(the row has", "(its columns are"), path=spec.label, column=key,
                            hint=hint, reason="missing column")


def _read_csv(spec: SourceSpec) -> list[tuple[int, list[str]]]:
    """``(line, fields)`` of each record of a CSV / TSV file, the header first. Every field is read
    as text, as written (pyarrow would turn a quoted "4" or "true" into a number or a boolean);
    bytes that are not UTF-8 are kept (as surrogates) so each bad row is reported at its line."""
    path = Path(spec.location)
    records: list[tuple[int, list[str]]] = []
    start = 1
    limit = csv.field_size_limit(2**31 - 1)  # one long completion is one field; the default allows 128 KiB
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            reader = csv.reader(f, delimiter="\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ",")
            for fields in reader:
                if any(field.strip() for field in fields):
                    records.append((start, fields))
                start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"cannot read it as CSV: {e}", path=str(path), line=start, reason="unreadable file",
                        hint='quote fields that hold the delimiter, a quote or a line break ("...", with "" '
                        "for a quote inside)") from None
    except READ_ERRORS as e:
        raise DataError(f"cannot read it as CSV: {e}", path=str(path), reason="unreadable file",
                        hint="check that the file is complete and of the type its name says") from None
    finally:
        csv.field_size_limit(limit)
    if not records:
        raise DataError("the file is empty: no header and no rows", path=str(path), reason="empty file",
                        hint=SAMPLE_HINT)
    return records


def csv_rows(spec: SourceSpec) -> Iterator[RawRow]:
    """Rows of a CSV / TSV file by line; a column empty in every row counts as missing."""
    (_, header), *records = _read_csv(spec)
    if _undecodable(header):
        raise DataError("the header is not valid UTF-8", path=spec.location, line=1, reason="undecodable bytes",
                        hint="save the file as UTF-8")
    filled = [name for i, name in enumerate(header) if any(i < len(f) and f[i] for _, f in records)]
    _check_names(spec, filled, len(records))
    for line, fields in records:
        if len(fields) != len(header):
            yield line, None, RowProblem(
                "wrong number of fields", f"expected {len(header)} fields (as in the header), got {len(fields)}",
                hint='quote fields that hold the delimiter or a line break ("...")')
            continue
        bad = next((i for i, field in enumerate(fields) if _undecodable([field])), None)
        if bad is not None:
            raw = bytes(ord(ch) - 0xDC00 for ch in fields[bad] if "\udc80" <= ch <= "\udcff")
            yield line, None, RowProblem("undecodable bytes", f"the line is not valid UTF-8 (the field holds bytes "
                                         f"that cannot be decoded: {raw[:4]!r})", column=header[bad],
                                         hint="save the file as UTF-8")
            continue
        yield line, None, dict(zip(header, fields))


def _undecodable(fields: list[str]) -> bool:
    """Whether a field read with ``errors="surrogateescape"`` holds bytes that were not UTF-8."""
    return any(any("\udc80" <= ch <= "\udcff" for ch in field) for field in fields)


def arrow_batches(table: Any) -> Iterator[list[dict[str, Any]]]:
    for batch in table.to_batches(max_chunksize=1000):
        yield batch.to_pylist()


def read_table_file(spec: SourceSpec) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if Path(spec.location).stat().st_size == 0:
        raise DataError("the file is empty (0 bytes)", path=spec.location, reason="empty file",
                        hint="write the pairs into it (one row per pair), or pass another file")
    try:
        return pq.read_table(spec.location)
    except (pa.ArrowInvalid, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        empty = "empty" in first.lower()
        raise DataError(f"cannot read it as {spec.kind.upper()}: {first}", path=spec.location,
                        reason="empty file" if empty else "unreadable file",
                        hint="check that the file is complete and of the type its name says") from None
