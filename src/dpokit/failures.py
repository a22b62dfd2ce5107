"""The program's one error policy, applied where every command ends (``cli.main``).

Every failure ends in an ``error:`` line that names the thing (path, key, value) and an indented
``fix:`` line, without a traceback; the exit code is 2 for the user's mistakes (`DpokitError`: bad files,
bad values, models that cannot be loaded, paths that cannot be read or written) and 1 for faults met
while running (`RuntimeFault`: a full disk, too little memory, a diverged run, a failed process of the
run, and anything unexpected). ``--debug`` (anywhere on the command line) or ``DPOKIT_DEBUG=1``
prints the traceback too.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback

from dpokit.errors import DpokitError, os_error_message, rank_prefix

DEBUG_FLAG = "--debug"
RUNTIME_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.ENOMEM}  # the machine's state, not the input
OOM_FIX = ("  fix: lower --batch-size (and raise --grad-accum to keep the step), lower --max-length, keep "
           "--gradient-checkpointing true (the default), train LoRA adapters (--lora true), or use a smaller model")


def debug_wanted(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug``, and whether tracebacks are wanted (the flag or ``DPOKIT_DEBUG``)."""
    wanted = os.environ.get("DPOKIT_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    if DEBUG_FLAG in argv:
        argv, wanted = [a for a in argv if a != DEBUG_FLAG], True
    return argv, wanted


def _generic_fix(command: str) -> str:
    where = f"`dpokit {command} --help`" if command else "`dpokit --help`"
    return f"  fix: correct what the line above names ({where} lists every option and its default)"


def describe(error: BaseException, command: str = "") -> tuple[str, int]:
    """The ``error:`` and ``fix:`` lines for ``error``, and the exit code."""
    torch = sys.modules.get("torch")  # a torch error only where torch was imported
    if isinstance(error, DpokitError):
        text, code = str(error).strip(), error.exit_code
        head, _, fix = text.partition("\n  fix: ")
        if not fix and "\nfix: " in text:
            head, _, fix = text.partition("\nfix: ")
        head = head.rstrip()
        if fix:
            return f"error: {head}\n  fix: {fix.strip()}", code
        return f"error: {head}\n{_generic_fix(command)}", code
    if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
        first = " ".join(str(error).split())[:200]
        return f"error: out of GPU memory ({first})\n{OOM_FIX}", 1
    if isinstance(error, MemoryError):
        return f"error: out of memory (the process could not allocate more)\n{OOM_FIX}", 1
    if isinstance(error, OSError):
        line = os_error_message(error)
        head, _, hint = line.rpartition(" (") if line.endswith(")") else (line, "", "")
        code = 1 if error.errno in RUNTIME_ERRNOS else 2
        fix = hint[:-1] if hint else "check the path and its permissions, or choose another"
        if error.errno == errno.ENOSPC:
            fix = "free disk space there, or choose a path on a disk with room (DPOKIT_CACHE moves the cache)"
        return f"error: {head or line}\n  fix: {fix}", code
    if torch is not None and _is_dist_error(error):
        first = " ".join(str(error).split())[:200]
        return (f"error: a process of the run failed or was killed ({type(error).__name__}: {first})\n  fix: the "
                "first error printed above (of that rank) says why; fix it and resume with --resume latest"), 1
    first = " ".join(str(error).split())[:300] or "(no message)"
    return (f"error: unexpected {type(error).__name__}: {first}\n  fix: rerun with --debug (or DPOKIT_DEBUG=1) "
            "for the traceback, and report it with the command line"), 1


def _is_dist_error(error: BaseException) -> bool:
    try:
        from torch.distributed import DistError
    except ImportError:
        return False
    return isinstance(error, DistError)


def report(error: BaseException, command: str = "", debug: bool = False) -> int:
    """Print ``error`` under the policy (its traceback first with ``debug``); return the exit code."""
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    text, code = describe(error, command)
    print(rank_prefix() + text, file=sys.stderr, flush=True)  # "[rank N] error: ..." on the other ranks
    return code


__all__ = ["debug_wanted", "describe", "report"]
