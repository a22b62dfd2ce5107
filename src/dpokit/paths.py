"""Where dpokit keeps what it builds once and reuses: ``$DPOKIT_CACHE`` (default ``~/.cache/dpokit``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: the built-in tiny model, tokenized data, precomputed reference log-probs."""
    return Path(os.environ.get("DPOKIT_CACHE", Path.home() / ".cache" / "dpokit"))
