"""An output file checked before the work that fills it, so a bad path fails in seconds, not after
the models have loaded and the answers been generated."""

from __future__ import annotations

from pathlib import Path

from dpokit.errors import ConfigError, RuntimeFault, os_error_message, write_failure


def check_writable(path: str | Path, flag: str = "--output") -> None:
    """A ConfigError naming ``flag`` and ``path`` unless a file can be written there. Leaves nothing
    behind: a folder or file made for the check is removed again."""
    path = Path(path).expanduser()
    blocker = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"{flag} {path}: {blocker} is a file, not a directory\n  fix: choose a path in a directory")
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory\n  fix: pass a file path (for example {path / 'out.json'})")
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write there ({os_error_message(e)})\n  fix: choose a path you "
                          "can write (another directory, or a disk with room)") from None
    finally:
        if not existed and path.is_file():
            path.unlink()
        for folder in missing:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break


CACHE_FIX = "point DPOKIT_CACHE at a disk with room"


def cache_full(path: Path, tmp: Path, error: BaseException, what: str, alternative: str,
               where: str = CACHE_FIX) -> RuntimeFault:
    """The error for a cache entry that could not be written (``error`` from numpy, safetensors or
    the OS: a full disk most often): its temporary file goes, and the message names the place;
    the fix: free space, ``where`` (another place), or ``alternative`` (do without the cache)."""
    import shutil

    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
    return RuntimeFault(f"cannot write the {what} cache entry {path}: {write_failure(error)}\n  fix: free space in "
                        f"{path.parent}, {where}, or {alternative}")
