"""What reading a data source found: rows, the format, and every problem, located and counted.

One policy for bad input everywhere (``data.on_bad_row``):

* **errors** (a row that cannot be used as it is: invalid JSON, undecodable bytes, a missing
  column, a wrong type, an empty field, chosen == rejected, an unknown role, no shared prompt):
  with ``on_bad_row: error`` (the default) ``train`` stops before loading the model and
  ``dpokit data validate`` exits non-zero; with ``on_bad_row: skip`` the rows are skipped, counted
  and reported by reason. Problems with the whole file (missing, empty, not rows of objects, a
  split without the needed columns) always stop.
* **warnings** (a well-formed row with nothing to learn from: an empty completion after prompt
  extraction; at tokenization, a prompt alone reaching ``max_length``): the row is dropped,
  counted and reported by reason; the exit code stays 0.
* **notes**: rows used in an unusual way (HH-RLHF dialogues that differ before the last
  assistant turn), listed so nothing happens silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dpokit.data.fields import RowProblem
from dpokit.data.formats import apply_columns, describe_format, detect_format, normalise_row
from dpokit.data.pairs import PreferencePair
from dpokit.errors import DataError

# A row as the readers yield it: (line in a file or None, row index or None, the row or its problem).
RawRow = tuple[int | None, int | None, Mapping[str, Any] | RowProblem]


@dataclass
class Problem:
    """One located problem (or note) about one row."""

    level: str  # "error" | "warning" | "note"
    reason: str
    message: str
    path: str  # a file, or "hub-id [split]"
    line: int | None = None  # line in the file, counting from 1
    index: int | None = None  # row index (from 0) where a source has no lines (Parquet, hub splits)
    column: str | None = None
    hint: str | None = None

    def error(self) -> DataError:
        return DataError(self.message, path=_path_of(self), line=self.line, column=self.column, hint=self.hint,
                         reason=self.reason)

    def describe(self) -> str:
        return str(self.error())


@dataclass
class LoadReport:
    """Counts and problems from reading one source (or several, merged)."""

    source: str
    format: str = ""
    rows: int = 0  # rows read, good or bad
    pairs: int = 0  # pairs kept
    problems: list[Problem] = field(default_factory=list)

    def of(self, level: str) -> list[Problem]:
        return [p for p in self.problems if p.level == level]

    def counts(self, level: str) -> Counter:
        return Counter(p.reason for p in self.problems if p.level == level)

    def raise_errors(self, on_bad_row: str, source_hint: str | None = None) -> None:
        """With ``on_bad_row: error``, raise the first error (with the count of the others)."""
        errors = self.of("error")
        if not errors or on_bad_row != "error":
            return
        first = errors[0]
        more = ""
        if len(errors) > 1:
            reasons = ", ".join(f"{n} {r}" for r, n in self.counts("error").most_common())
            more = f"{len(errors)} bad rows in all ({reasons}); "
        listing = f"`dpokit data validate {source_hint}` lists them" if source_hint else \
            "`dpokit data validate` lists them"
        hint = (first.hint + "\n  " if first.hint else "") + \
            f"{more}{listing}; `--on-bad-row skip` skips bad rows"
        raise DataError(first.message, path=_path_of(first), line=first.line, column=first.column, hint=hint,
                        reason=first.reason)

    def raise_if_no_pairs(self, source_hint: str | None = None) -> None:
        """A source whose every row was skipped or dropped stops the run, whatever ``on_bad_row`` says."""
        if self.pairs:
            return
        counts = self.counts("error") + self.counts("warning")
        reasons = ", ".join(f"{n} {r}" for r, n in counts.most_common())
        listing = f"`dpokit data validate {source_hint}`" if source_hint else "`dpokit data validate`"
        raise DataError(f"no pairs kept: all {self.rows} rows were left out" + (f" ({reasons})" if reasons else ""),
                        path=self.source, reason="no pairs",
                        hint=f"{listing} lists the rows and why; fix them, or the `format` / `columns` settings")

    def summary(self, on_bad_row: str = "error", limit: int = 10) -> list[str]:
        """Readable lines: rows, format, pairs kept, then counts by level and reason, with locations."""
        lines = [f"{self.source}: {self.rows} row{'s' if self.rows != 1 else ''}, format {describe_format(self.format)}; "
                 f"{self.pairs} pair{'s' if self.pairs != 1 else ''} kept"]
        labels = {"error": "error" if on_bad_row == "error" else "skipped (bad row)",
                  "warning": "warning, dropped", "note": "note, kept"}
        for level in ("error", "warning", "note"):
            for reason, n in self.counts(level).most_common():
                where = locations([p for p in self.problems if p.level == level and p.reason == reason], limit)
                lines.append(f"  {labels[level]}: {n} row{'s' if n != 1 else ''}: {reason} ({where})")
        return lines


def _path_of(problem: Problem) -> str:
    if problem.index is not None and problem.line is None:
        return f"{problem.path}, row index {problem.index}"
    return problem.path


def locations(problems: list[Problem], limit: int = 10) -> str:
    """``lines 87, 517, 926`` / ``row indices 3, 7`` (the first ``limit``, then a count)."""
    if not problems:
        return ""
    by_line = problems[0].line is not None
    values = [p.line if by_line else p.index for p in problems]
    shown = ", ".join(str(v) for v in values[:limit])
    if len(values) > limit:
        shown += f" and {len(values) - limit} more"
    word = ("line" if by_line else "row index") if len(values) == 1 else ("lines" if by_line else "row indices")
    return f"{word} {shown}"


def collect_pairs(
    rows: Iterable[RawRow],
    label: str,
    fmt: str = "auto",
    columns: Mapping[str, str] | list[str] | None = None,
    max_rows: int | None = None,
    source: str = "json",
) -> tuple[list[PreferencePair], LoadReport]:
    """Normalise rows to pairs; every problem is recorded in the report (nothing is raised here).

    ``source`` is the kind of source the rows come from (``"json"``, ``"csv"``, ``"parquet"``,
    ``"dataset"``), for fixes that depend on it (`RowProblem.hint_for`).

    With ``fmt="auto"`` the format is fixed by the first row that normalises without error, never
    by a bad row: rows before it are held back and then read in that format, so one bad first row
    cannot make every good row fail. If no row normalises, each row is judged in the format its
    own keys suggest."""
    report = LoadReport(label, format="" if fmt == "auto" else fmt)
    pairs: list[PreferencePair] = []
    pending: list[tuple[dict[str, Any], Mapping[str, Any] | RowProblem]] = []  # rows before the format is known

    def collect(where: dict[str, Any], row: Mapping[str, Any] | RowProblem, fmt: str) -> None:
        try:
            if isinstance(row, RowProblem):
                raise row
            pair, note = normalise_row(apply_columns(row, columns), fmt)
        except RowProblem as p:
            report.problems.append(_problem(p, where, source))
            return
        if note is not None:
            report.problems.append(_problem(note, where, source))
        line, index = where["line"], where["index"]
        pair.source = f"{label}:{line}" if line is not None else f"{label}#{index}"
        pairs.append(pair)

    for line, index, row in _limit(rows, max_rows):
        report.rows += 1
        where = dict(path=label, line=line, index=index)
        if not report.format and not isinstance(row, RowProblem):
            guess = guess_format(row, columns)
            if _normalises(row, columns, guess):
                report.format = guess
                for earlier, earlier_row in pending:
                    collect(earlier, earlier_row, guess)
                pending = []
        if report.format:
            collect(where, row, report.format)
        else:
            pending.append((where, row))
    if pending:  # no row normalised
        report.format = next((guess_format(r, columns) for _, r in pending if not isinstance(r, RowProblem)), "")
        for where, row in pending:
            collect(where, row, "" if isinstance(row, RowProblem) else guess_format(row, columns))
    report.pairs = len(pairs)
    return pairs, report


def guess_format(row: Mapping[str, Any], columns: Mapping[str, str] | list[str] | None) -> str:
    """The format a row's keys suggest, after the column mapping where it applies."""
    try:
        return detect_format(apply_columns(row, columns))
    except RowProblem:
        return detect_format(row)


def _normalises(row: Mapping[str, Any], columns: Mapping[str, str] | list[str] | None, fmt: str) -> bool:
    try:
        normalise_row(apply_columns(row, columns), fmt)
    except RowProblem:
        return False
    return True


def _problem(p: RowProblem, where: dict[str, Any], source: str = "json") -> Problem:
    return Problem(p.level, p.reason, p.message, column=p.column, hint=p.hint_for(source), **where)


def _limit(rows: Iterable[RawRow], max_rows: int | None) -> Iterator[RawRow]:
    for n, row in enumerate(rows):
        if max_rows is not None and n >= max_rows:
            return
        yield row
