"""Data sets loaded with `datasets`: a hub id, a directory saved by ``save_to_disk``, or any other
local directory `datasets` can read; the library's many errors become one `DataError` with a fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dpokit.data.resolve import SourceSpec
from dpokit.errors import DataError


def load_datasets(spec: SourceSpec) -> Any:
    """A `datasets.Dataset` for a saved directory, a local dataset directory or a hub id."""
    import datasets

    split = spec.split or "train"
    try:
        if spec.kind == "saved":
            loaded = datasets.load_from_disk(spec.location)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"no split '{split}' (it has: {', '.join(loaded)})", path=spec.location,
                                    reason="unknown split", hint=f"pick a split with --split, e.g. {next(iter(loaded))}")
                loaded = loaded[split]
            return loaded
        return datasets.load_dataset(spec.location, spec.config_name, split=split, data_dir=spec.data_dir)
    except DataError:
        raise
    except Exception as e:  # the library's many error types all become one clear message
        text = str(e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        if "split" in text.lower() and ("unknown" in text.lower() or "should be one of" in text.lower()):
            hint = "pick one of the splits the error lists with --split (preference splits: e.g. train_prefs)"
            reason = "unknown split"
        elif "config" in text.lower() and ("name" in text.lower() or "not found" in text.lower()):
            hint = "pick a config name with --config-name (the error lists them)"
            reason = "unknown config"
        elif Path(spec.location).is_dir():
            hint = ("check that the directory holds data files `datasets` can read (.parquet, .csv, .json, "
                    ".jsonl, .arrow) or was written by `save_to_disk`; or pass one file")
            reason = "cannot load"
        else:
            hint = ("check the id and your network (hub data needs it; HF_HUB_OFFLINE=1 allows only cached data), "
                    "or pass a local file")
            reason = "cannot load"
        raise DataError(f"cannot load the data set: {first}", path=spec.label, reason=reason, hint=hint) from None


def dataset_batches(dataset: Any) -> Iterator[list[dict[str, Any]]]:
    for batch in dataset.iter(batch_size=1000):
        keys = list(batch)
        n = len(batch[keys[0]]) if keys else 0
        yield [{k: batch[k][i] for k in keys} for i in range(n)]
