"""What a data source string names: a local file or directory, a preset or a hub id, as a `SourceSpec`.

The order of the checks is described in ``data/sources.py``, which reads the rows of each kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from dpokit.data.jsonl import SAMPLE_HINT
from dpokit.data.presets import find_preset
from dpokit.errors import DataError

PREPARED_MARKER = "dpokit_prepared.json"
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
SPLIT_KINDS = ("hub", "saved", "jsondir")  # sources that have named splits
# File and folder names that put a file of a directory in a split, as `datasets` reads them.
SPLIT_WORDS = {"train": ("train", "training"), "test": ("test", "testing", "eval", "evaluation"),
               "validation": ("validation", "valid", "val", "dev")}
OTHER_DATA_SUFFIXES = (".parquet", ".csv", ".tsv", ".arrow", ".txt", ".csv.gz", ".tsv.gz")


@dataclass
class SourceSpec:
    """One data source, resolved: what it is, where, and how its rows are read."""

    name: str  # as the user wrote it
    kind: str  # "json" | "jsondir" | "parquet" | "csv" | "prepared" | "saved" | "hub" | "sample"
    location: str  # file / directory / hub id
    split: str | None = None
    config_name: str | None = None
    data_dir: str | None = None
    format: str = "auto"
    columns: dict[str, str] | list[str] | None = None

    @property
    def label(self) -> str:
        if self.kind in ("json", "parquet", "csv", "prepared"):
            return self.location
        extra = f", config {self.config_name}" if self.config_name else ""
        return f"{self.location} [{self.split or 'train'}{extra}]"


def resolve_source(name: str, split: str | None = None, config_name: str | None = None,
                   data_dir: str | None = None, fmt: str = "auto",
                   columns: dict[str, str] | list[str] | None = None) -> SourceSpec:
    """Work out what ``name`` is (see the module docstring) and fill in preset defaults."""
    spec = SourceSpec(name, "", name, split, config_name, data_dir, fmt, columns)
    path = Path(name).expanduser()
    if path.is_file():
        lower = path.name.lower()
        if lower.endswith(JSON_SUFFIXES):
            return replace(spec, kind="json", location=str(path))
        if lower.endswith(".parquet"):
            return replace(spec, kind="parquet", location=str(path))
        if lower.endswith((".csv", ".csv.gz", ".tsv")):
            return replace(spec, kind="csv", location=str(path))
        raise DataError(f"{path}: unknown data file type", reason="unknown file type",
                        hint="use a .jsonl, .json, .parquet or .csv file (optionally .gz for JSON)")
    if path.is_dir():
        if (path / PREPARED_MARKER).is_file():
            return replace(spec, kind="prepared", location=str(path), format="prepared")
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() \
                or (path / "state.json").is_file():
            return replace(spec, kind="saved", location=str(path))
        if config_name is None and json_files(path, data_dir):
            return replace(spec, kind="jsondir", location=str(path))
        return replace(spec, kind="hub", location=str(path))
    preset = find_preset(name)
    if preset is not None:
        return replace(spec, kind="hub", location=preset.hub_id, split=split or preset.split,
                       format=preset.format if fmt == "auto" else fmt)
    looks_local = name.startswith((".", "/", "~")) or name.lower().endswith(
        JSON_SUFFIXES + (".parquet", ".csv", ".gz"))
    if HUB_ID.match(name) and not looks_local:
        return replace(spec, kind="hub")
    raise DataError(f"preference data not found at {name}", reason="missing file",
                    hint=f"pass an existing file or directory, a hub id (owner/name), or a preset "
                    f"(ultrafeedback, hh-rlhf, orca); or {SAMPLE_HINT}")


def json_files(directory: Path, data_dir: str | None = None) -> list[Path]:
    """The JSON Lines / JSON files of a directory that holds no other data files (and no dataset card
    declaring its own file layout), which dpokit reads line by line; else [] (`datasets` loads it)."""
    root = directory / data_dir if data_dir else directory
    if not root.is_dir():
        return []
    card = root / "README.md"
    if card.is_file() and "configs:" in card.read_text(encoding="utf-8", errors="replace"):
        return []
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    names = [p.name.lower() for p in files]
    if any(n.endswith(OTHER_DATA_SUFFIXES) for n in names):
        return []
    return [p for p, n in zip(files, names) if n.endswith(JSON_SUFFIXES)]
