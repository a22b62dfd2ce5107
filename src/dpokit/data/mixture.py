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
of the mixture, and the rows are those alignment-handbook's ``get_dataset`` picks for the same
recipe, with `datasets`' own operations: each source ``shuffle(seed)`` and its first ``int(rows *
weight)`` rows ``select``-ed (a weight left out is 1.0), the parts concatenated and shuffled with the
seed (0 when left out), and ``test_split_size`` (a fraction or a row count) split off with
``train_test_split(test_size, seed)``. An entry may also give ``config`` (the hub config name),
``data_dir``, ``format`` and ``columns`` (a list keeps those columns; a mapping renames them,
``{prompt: question}``). The older ``dataset_mixer: {id: weight}`` form is read as the handbook's
``mix_datasets`` read it: the first ``int(weight * rows)`` rows of each source's train split, unshuffled,
then the concatenation shuffled with seed 42; the test splits are taken whole.
(With ``on_bad_row: skip``, skipped rows are not counted, so the picks shift past them.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

ENTRY_KEYS = {"id", "split", "config", "data_dir", "weight", "columns", "format"}
LEGACY_SEED = 42  # the fixed seed of alignment-handbook's ``mix_datasets``


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
    seed: int = 0
    test_split_size: float | None = None
    legacy: bool = False  # the older ``dataset_mixer`` form


def parse_mixture(value: Any) -> Mixture:
    """Check and read a ``dataset_mixture`` mapping; raises ValueError saying what is wrong."""
    if not isinstance(value, dict):
        raise ValueError("data.mixture (dataset_mixture) must be a mapping with a 'datasets' list")
    if "datasets" not in value:
        # The older alignment-handbook form: {hub id: weight}.
        if value and all(isinstance(w, (int, float)) for w in value.values()):
            entries = [MixtureEntry(str(k), weight=float(w)) for k, w in value.items()]
            for entry in entries:
                _check_weight(entry, entry.id)
            return Mixture(entries, LEGACY_SEED, legacy=True)
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
        entries.append(_check_weight(MixtureEntry(**item), f"data.mixture.datasets[{i}] ({item['id']})"))
    size = value.get("test_split_size")
    if size is not None and not (0 < size < 1 or (float(size).is_integer() and size >= 1)):
        raise ValueError("data.mixture.test_split_size must be a fraction in (0, 1) or a row count")
    seed = value.get("seed")
    return Mixture(entries, 0 if seed is None else int(seed), size)


def _check_weight(entry: MixtureEntry, where: str) -> MixtureEntry:
    if entry.weight is not None and not 0 < float(entry.weight) <= 1:
        raise ValueError(f"{where}: weight {entry.weight} must be in (0, 1], the fraction of that data set to take")
    return entry


Ids = list[tuple[int, int]]  # (source, row) pairs


def mixture_rows(sizes: list[int], mixture: Mixture) -> tuple[Ids, Ids]:
    """The (source, row) ids of the training and test rows alignment-handbook picks from sources of
    ``sizes`` rows, in its order, by the same `datasets` operations (this module's docstring).

    Only the row counts matter to `datasets`' shuffles (``np.random.default_rng(seed)`` permutations),
    so an index table stands in for the rows themselves."""
    import datasets

    parts = []
    for i, (n, entry) in enumerate(zip(sizes, mixture.datasets)):
        part = datasets.Dataset.from_dict({"source": [i] * n, "row": list(range(n))})
        weight = 1.0 if entry.weight is None else float(entry.weight)
        if mixture.legacy:
            part = part.select(range(int(weight * n)))
        else:
            part = part.shuffle(seed=mixture.seed).select(range(int(n * weight)))
        parts.append(part)
    mixed = datasets.concatenate_datasets(parts).shuffle(seed=mixture.seed)
    if mixture.test_split_size is None:
        return _ids(mixed), []
    size = mixture.test_split_size
    try:
        split = mixed.train_test_split(test_size=int(size) if size >= 1 else size, seed=mixture.seed)
    except ValueError as e:  # `datasets` says why: too large a test split for the rows
        raise ValueError(f"cannot hold out test_split_size {size} of {len(mixed)} mixed pairs ({e})") from None
    return _ids(split["train"]), _ids(split["test"])


def _ids(dataset: Any) -> Ids:
    return list(zip(dataset["source"], dataset["row"]))


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
