"""Data set mixtures, as alignment-handbook recipes write them.

.. code-block:: yaml

    dataset_mixture:
      datasets:
        - id: HuggingFaceH4/ultrafeedback_binarized
          split: train_prefs
          weight: 0.7          # take 70% of this data set's rows
          columns: [chosen, rejected]
        - id: my_pairs.jsonl   # a local file works as well
          weight: 0.3
      seed: 0
      test_split_size: 0.05    # hold out 5% of the mixed rows for evaluation (or a row count)

A weight is the **fraction of that data set to take** (alignment-handbook's meaning), not a share
of the mixture: each source is shuffled with the seed, its first ``int(weight * rows)`` rows are
taken, the parts are concatenated and shuffled again with the seed, and ``test_split_size``
carves the evaluation split out of the result. An entry may also give ``config`` (the hub config
name), ``data_dir``, ``format`` and ``columns`` (a list keeps those columns; a mapping renames
them, ``{prompt: question}``). The older ``dataset_mixer: {id: weight}`` form is read as well.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

ENTRY_KEYS = {"id", "split", "config", "data_dir", "weight", "columns", "format"}


@dataclass
class MixtureEntry:
    id: str
    split: str | None = None
    config: str | None = None
    data_dir: str | None = None
    weight: float | None = None
    columns: dict[str, str] | list[str] | None = None
    format: str | None = None


@dataclass
class Mixture:
    datasets: list[MixtureEntry]
    seed: int | None = None
    test_split_size: float | None = None


def parse_mixture(value: Any) -> Mixture:
    """Check and read a ``dataset_mixture`` mapping; raises ValueError saying what is wrong."""
    if not isinstance(value, dict):
        raise ValueError("data.mixture (dataset_mixture) must be a mapping with a 'datasets' list")
    if "datasets" not in value:
        # The older alignment-handbook form: {hub id: weight}.
        if value and all(isinstance(w, (int, float)) for w in value.values()):
            return Mixture([MixtureEntry(str(k), weight=float(w)) for k, w in value.items()])
        raise ValueError("data.mixture (dataset_mixture) needs a 'datasets' list of {id, split, weight}")
    unknown = set(value) - {"datasets", "seed", "test_split_size"}
    if unknown:
        raise ValueError(f"data.mixture: unknown key(s) {', '.join(sorted(unknown))}; "
                         "expected datasets, seed, test_split_size")
    items = value["datasets"]
    if not isinstance(items, list) or not items:
        raise ValueError("data.mixture.datasets must be a non-empty list of {id, split, weight}")
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item:
            raise ValueError(f"data.mixture.datasets[{i}] must be a mapping with at least an 'id'")
        extra = set(item) - ENTRY_KEYS
        if extra:
            raise ValueError(f"data.mixture.datasets[{i}]: unknown key(s) {', '.join(sorted(extra))}; "
                             f"expected {', '.join(sorted(ENTRY_KEYS))}")
        entry = MixtureEntry(**{k: item[k] for k in item})
        if entry.weight is not None and not 0 < float(entry.weight) <= 1:
            raise ValueError(f"data.mixture.datasets[{i}] ({entry.id}): weight {entry.weight} must be in (0, 1], "
                             "the fraction of that data set to take")
        entries.append(entry)
    size = value.get("test_split_size")
    if size is not None and not (0 < size < 1 or (float(size).is_integer() and size >= 1)):
        raise ValueError("data.mixture.test_split_size must be a fraction in (0, 1) or a row count")
    return Mixture(entries, value.get("seed"), size)


def take_fraction(items: list, weight: float | None, seed: int) -> list:
    """The first ``int(weight * len)`` items after a seeded shuffle (all of them, unshuffled, for None)."""
    if weight is None:
        return list(items)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order[: int(float(weight) * len(items))]]


def hold_out(items: list, size: float, seed: int) -> tuple[list, list]:
    """Split ``items`` into (kept, held out): ``size`` is a fraction or a count, chosen with the seed.
    The kept items stay in their order."""
    n = len(items)
    n_out = int(size) if size >= 1 else max(1, round(size * n))
    if n_out >= n:
        raise ValueError(f"cannot hold out {n_out} of {n} pairs for evaluation; lower the held-out size")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:n_out])
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]
