"""Errors a user can cause. Each one says what was wrong, where, and what to do."""

from __future__ import annotations

import os


class DpokitError(Exception):
    """An error caused by the user's input or configuration; the CLI prints it without a traceback."""

    exit_code = 2  # the user's mistake; `RuntimeFault` is 1


class RuntimeFault(DpokitError):
    """A fault met while running, not caused by the input: a full disk, too little memory, a diverged
    run, a process of the run that failed. The CLI prints it without a traceback, exit code 1."""

    exit_code = 1


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


_OS_HINTS = {
    "ENOTDIR": "a part of the path is a file; choose another path",
    "EISDIR": "pass a file path, not a directory",
    "ENOENT": "check the path",
    "EACCES": "no permission there; choose a path you can read or write",
    "EPERM": "no permission there; choose a path you can read or write",
    "EROFS": "that file system is read-only; choose another path",
    "ENOSPC": "the disk is full; free space or choose another path",
    "EEXIST": "something is already there; choose another path",
}


def os_error_message(error: OSError) -> str:
    """One line for an OSError a user's path caused: the path, what went wrong, what to do."""
    import errno

    if error.strerror is None:
        return str(error) or type(error).__name__
    hint = _OS_HINTS.get(errno.errorcode.get(error.errno or 0, ""), "")
    text = error.strerror.lower() + (f" ({hint})" if hint else "")
    if error.filename is None:
        return text
    path = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 else "")
    return f"{path}: {text}"


def rank_prefix() -> str:
    """``[rank N] `` on the processes of a launch other than rank 0 (their messages are told apart),
    else empty. Read from the launcher's ``RANK``, so it holds after the process group is gone."""
    rank = os.environ.get("RANK", "0")
    return f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 and rank != "0" else ""


def write_failure(error: BaseException) -> str:
    """What went wrong in a failed write, in a few words: an OSError as `os_error_message` says it, a
    full disk or denied permission from a library that raises its own type (safetensors'
    ``SafetensorError`` is no OSError) by its text, else the error's type and first words."""
    if isinstance(error, OSError):
        return os_error_message(error)
    text = " ".join(str(error).split())
    if "No space left" in text or "StorageFull" in text:
        return "no space left on device"
    if "Permission denied" in text or "PermissionDenied" in text:
        return "permission denied"
    return f"{type(error).__name__}: {text[:300]}"
