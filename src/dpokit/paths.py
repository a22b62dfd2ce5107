"""Where dpokit keeps what it builds once and reuses: ``$DPOKIT_CACHE`` (default ``~/.cache/dpokit``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """The cache root: the built-in tiny model, tokenized data, precomputed reference log-probs."""
    return Path(os.environ.get("DPOKIT_CACHE", Path.home() / ".cache" / "dpokit"))


def remembered(cache: Path, key: str, measure: Callable[[], Any]) -> Any:
    """The value kept under ``key`` in the JSON file ``cache``, else ``measure()``, kept there.

    For probes of the machine, measured once (`dpokit.peak`, `dpokit.attention`). The file is
    replaced whole, so two runs probing at once never leave it half written; a read-only or full
    cache only means measuring again next time.
    """
    try:
        known = json.loads(Path(cache).read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if key not in known:
        known[key] = measure()
        tmp = Path(f"{cache}.tmp{os.getpid()}")
        try:
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(known, indent=1))
            os.replace(tmp, cache)
        except OSError:
            tmp.unlink(missing_ok=True)
    return known[key]
