"""Writing a directory so that a kill at any instant leaves the old one or the new one, never half.

The directory is filled under a temporary name (``NAME.tmp``), every file is fsynced, then it is
renamed into place in one step (an older directory of that name is moved aside first and removed
once the new one stands). Under several processes each writes its part into the same temporary
directory and all agree on success before rank 0 renames it; a failure anywhere removes the
temporary directory and raises `SaveError` on every rank, so none hangs and what was there stays.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpokit import dist
from dpokit.errors import RuntimeFault, write_failure

PAUSE_ENV = "DPOKIT_CHECKPOINT_PAUSE"  # fault injection: seconds the writer waits between files (tests)
MARKER = "checkpoint_complete.json"


class SaveError(RuntimeFault):
    """A checkpoint or model that could not be written; what was there before is kept."""


def pause() -> None:
    seconds = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if seconds > 0:
        time.sleep(seconds)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(Path(dirpath) / name, "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], None], marker: dict[str, Any] | None = None,
                     what: str = "checkpoint", kept: str = "") -> None:
    """Fill ``path`` through ``write(tmp)`` on every rank, then (rank 0) fsync, mark and rename it
    into place, replacing an older ``path`` only once the new one is whole. On any rank's failure
    the temporary directory goes, ``path`` stays as it was, and every rank raises `SaveError`."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    main = dist.is_main()
    error: BaseException | None = None
    try:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
    except OSError as e:
        error = e
    failed = dist.any_true(error is not None)
    if not failed:
        try:
            write(tmp)
        except Exception as e:  # noqa: BLE001 (safetensors, torch and OS errors alike: reported below)
            error = e
        failed = dist.any_true(error is not None)
    if not failed and main:
        try:
            _fsync_tree(tmp)
            if marker is not None:
                pause()
                (tmp / MARKER).write_text(json.dumps(marker), encoding="utf-8")
                _fsync_tree(tmp)
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        except OSError as e:
            error = e
    failed = dist.any_true(error is not None)
    if failed:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.is_dir() and not path.exists():  # failed between the two renames: put the old one back
                os.replace(old, path)
            if path.is_dir():
                kept = f"; the earlier {path} is kept as it was{kept}"
        why = write_failure(error) if error is not None else "another process could not write its part"
        raise SaveError(f"could not save the {what} {path}: {why}{kept}\n  fix: free disk space or choose another "
                        "--output (the space it needs is about the size of the model and optimizer state)")
