"""Where training and evaluation pairs come from, normalised to `PreferencePair`."""

from __future__ import annotations

import random

from dpokit.config import DataConfig
from dpokit.data.jsonl import read_preference_jsonl
from dpokit.data.pairs import PreferencePair
from dpokit.data.samples import sample_pairs


def load_pairs(source: str | None, sample_size: int = 200, seed: int = 0) -> list[PreferencePair]:
    """Pairs from a JSONL file, or ``sample_size`` built-in sample pairs when ``source`` is None."""
    if source is None:
        return [PreferencePair(**row, source=f"sample:{i}") for i, row in enumerate(sample_pairs(sample_size, seed))]
    return read_preference_jsonl(source)


def load_train_eval(cfg: DataConfig, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Training pairs and evaluation pairs (empty when no eval data is configured)."""
    train = load_pairs(cfg.path, cfg.sample_size, seed)
    evaluation = load_pairs(cfg.eval_path) if cfg.eval_path else []
    if cfg.eval_fraction > 0:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, round(cfg.eval_fraction * len(train)))
        held = set(order[:n_eval])
        evaluation += [train[i] for i in sorted(held)]
        train = [p for i, p in enumerate(train) if i not in held]
    if cfg.max_samples is not None:
        train = train[: cfg.max_samples]
    return train, evaluation
