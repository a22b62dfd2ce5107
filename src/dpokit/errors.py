"""Errors a user can cause. Each one says what was wrong, where, and what to do."""

from __future__ import annotations


class DpokitError(Exception):
    """An error caused by the user's input or configuration; the CLI prints it without a traceback."""


class ConfigError(DpokitError):
    """A configuration key or value that cannot be used."""


class DataError(DpokitError):
    """A problem with a data file or row, located by file, line (or row index) and column."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        column: str | None = None,
        hint: str | None = None,
        reason: str = "invalid",
    ) -> None:
        self.path, self.line, self.column, self.hint, self.reason = path, line, column, hint, reason
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
        if column is not None:
            where += f"{', ' if where else ''}column '{column}'"
        text = f"{where}: {message}" if where else message
        if hint:
            text += f"\n  fix: {hint}"
        super().__init__(text)
