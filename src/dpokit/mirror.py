"""``output.mirror_dir``: copies of a run in a second place (a mounted bucket, a network disk).

Each copy is written under a temporary name inside the mirror, then renamed into place, so the
mirror never holds half a checkpoint: a directory there under its real name is complete. An older
copy of the same name is moved aside first and removed after; between the two renames the name is
briefly absent, never partial. (Atomic where the file system renames atomically: local disks and
NFS do; some bucket mounts emulate a rename by copying, where this is the best they allow.)

Layout: ``<mirror>/checkpoint-N`` as each checkpoint is written, ``<mirror>/dpo_model`` for the
final model, ``<mirror>/logs`` for the logs at the end (``metrics.jsonl``, ``config.yaml``, the
margin logs, TensorBoard's ``runs/``, the plot).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from dpokit.errors import DpokitError

# What `Mirror.logs` copies from the output directory, when there.
LOG_ITEMS = ("metrics.jsonl", "config.yaml", "plot.png", "logs", "runs")


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move the complete ``tmp`` to ``dest``, replacing an older ``dest``."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


class Mirror:
    """Copies into ``root``; each method returns the copy's path."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".dpokit-write-check-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise DpokitError(f"mirror_dir {self.root}: cannot write there ({e.strerror or e})\n"
                              "  fix: mount the bucket or choose a directory you can write") from None

    def _write(self, name: str, fill: Callable[[Path], None], what: str) -> Path:
        """Build ``<root>/<name>`` under a temporary name with ``fill(tmp)``, then rename it in."""
        dest, tmp = self.root / name, self.root / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            fill(tmp)
            _replace_dir(tmp, dest)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DpokitError(f"mirror_dir: copying {what} to {dest} failed ({e.strerror or e})\n"
                              "  fix: check the mirror's free space and mount; the run's own output is intact") from None
        return dest

    def copy(self, source: Path, name: str) -> Path:
        """Copy the directory ``source`` to ``<root>/<name>`` atomically."""
        return self._write(name, lambda tmp: shutil.copytree(source, tmp), str(source))

    def checkpoint(self, path: Path) -> Path:
        """A checkpoint, as it is written: ``<root>/<its name>``."""
        return self.copy(path, Path(path).name)

    def remove(self, name: str) -> None:
        """Drop ``<root>/<name>`` (a checkpoint the run's rotation removed)."""
        shutil.rmtree(self.root / name, ignore_errors=True)

    def final(self, path: Path) -> Path:
        """The final model: ``<root>/dpo_model``."""
        return self.copy(path, "dpo_model")

    def logs(self, output_dir: Path) -> Path:
        """The run's logs, gathered in one directory: ``<root>/logs``."""
        output_dir = Path(output_dir)

        def fill(tmp: Path) -> None:
            tmp.mkdir()
            for item in LOG_ITEMS:
                if (output_dir / item).is_dir():
                    shutil.copytree(output_dir / item, tmp / item)
                elif (output_dir / item).is_file():
                    shutil.copy2(output_dir / item, tmp / item)

        return self._write("logs", fill, f"the logs of {output_dir}")
