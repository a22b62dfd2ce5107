"""Where training and evaluation pairs come from, normalised to `PreferencePair`.

A source is named by one string (``data.path``), read in this order:

1. an existing local path: a ``.jsonl`` / ``.json`` (optionally ``.gz``) file, read and checked
   line by line by dpokit (``data/jsonl.py``); a ``.parquet`` file (read with pyarrow); a
   ``.csv`` / ``.tsv`` file (read with the csv module, every field as text, by line); a
   directory written by ``dpokit data prepare``; a directory saved by `datasets`
   (``save_to_disk``); a directory of JSON Lines / JSON files only, read file by file like one
   file (``train.jsonl``, ``test.jsonl``: the file names give the splits, as in `datasets`); any
   other directory, loaded with ``datasets.load_dataset(dir, ...)`` like a hub repository;
2. a preset name (``ultrafeedback``, ``hh-rlhf``, ``orca``: ``data/presets.py``);
3. a hub id (``owner/name``), loaded with ``datasets.load_dataset(id, config_name, split=split)``.

Each row goes through format detection and normalisation (``data/formats.py``); problems are
collected in a `LoadReport` and handled by one policy (``data/report.py``). `load_train_eval`
is the single entry point of training, and raises `DataError` before any model is loaded.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dpokit.config import DataConfig
from dpokit.data.formats import RowProblem, _missing, apply_columns
from dpokit.data.jsonl import READ_ERRORS, SAMPLE_HINT, iter_json_rows
from dpokit.data.mixture import hold_out, mixture_rows, parse_mixture
from dpokit.data.pairs import PreferencePair
from dpokit.data.presets import find_preset
from dpokit.data.report import LoadReport, RawRow, collect_pairs
from dpokit.data.samples import sample_pairs
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


# ---- a local directory of JSON files -------------------------------------------------------------


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


def _split_word(relative: Path) -> str | None:
    """The split a file's name or folders put it in (``test.jsonl``, ``data/train-00000.jsonl``)."""
    for token in re.split(r"[-._ /0-9]+", relative.as_posix().lower()):
        for split, words in SPLIT_WORDS.items():
            if token in words:
                return split
    return None


def _shard_stem(path: Path) -> str:
    """``train_prefs`` for ``train_prefs.jsonl`` and for a shard ``train_prefs-00000-of-00002.jsonl.gz``."""
    return re.sub(r"-\d+-of-\d+$", "", path.name.split(".")[0])


def split_files(spec: SourceSpec) -> list[Path]:
    """The files of a JSON directory that make up ``spec.split``: those named exactly so (``train_prefs.jsonl``),
    else those whose names say the split (as `datasets` reads them), else, when no name says one, all (train)."""
    root = Path(spec.location) / spec.data_dir if spec.data_dir else Path(spec.location)
    files = json_files(Path(spec.location), spec.data_dir)
    split = spec.split or "train"
    exact = [f for f in files if split in (_shard_stem(f), *f.relative_to(root).parent.parts)]
    if exact:
        return exact
    groups = {f: _split_word(f.relative_to(root)) for f in files}
    if not any(groups.values()):
        groups = dict.fromkeys(files, "train")
    wanted = next((name for name, words in SPLIT_WORDS.items() if split.lower() in words), split)
    chosen = [f for f, group in groups.items() if group == wanted]
    if not chosen:
        found = [name for name in SPLIT_WORDS if name in groups.values()]
        raise DataError(f"no split '{split}' in the directory (its file names give: {', '.join(found)})",
                        path=spec.location, reason="unknown split",
                        hint=f"pick a split with --split (e.g. {found[0]}), or name the files after their "
                        "splits (train.jsonl, test.jsonl)")
    return chosen


def _read_json_dir(spec: SourceSpec, max_rows: int | None) -> tuple[list[PreferencePair], LoadReport]:
    """Every file of the split, read line by line (problems name the file and line); the format found
    in the first file that has a good row holds for the rest."""
    report = LoadReport(spec.label, format="" if spec.format == "auto" else spec.format)
    pairs: list[PreferencePair] = []
    guess = ""  # the format of the first file, shown when no file has a good row
    for path in split_files(spec):
        left = None if max_rows is None else max_rows - report.rows
        if left is not None and left <= 0:
            break
        part, part_report = collect_pairs(iter_json_rows(path), str(path), report.format or "auto",
                                          spec.columns, left)
        if part:
            report.format = report.format or part_report.format
        guess = guess or part_report.format
        pairs += part
        report.rows += part_report.rows
        report.problems += part_report.problems
    report.format = report.format or guess
    report.pairs = len(pairs)
    return pairs, report


# ---- reading rows ---------------------------------------------------------------------------


def _table_rows(batches: Iterator[list[dict[str, Any]]]) -> Iterator[RawRow]:
    index = 0
    for batch in batches:
        for row in batch:
            yield None, index, row
            index += 1


def _check_columns(spec: SourceSpec, table: Any) -> None:
    """A table (Parquet, hub split) without the needed columns fails as a whole, at once.
    A column that is null in every row counts as missing (`datasets` gives every split of a
    repository the same columns, so an SFT split shows chosen / rejected full of nulls)."""
    rows = table.num_rows
    _check_names(spec, [n for n in table.column_names if table.column(n).null_count < rows], rows)


def _check_names(spec: SourceSpec, names: list[str], rows: int) -> None:
    if rows == 0:
        if spec.kind == "csv":
            raise DataError("the file has a header but no rows", path=spec.label, reason="empty file",
                            hint="add rows below the header, one pair per line, or pass another file")
        if spec.kind == "parquet":
            raise DataError("the file has no rows", path=spec.label, reason="empty file",
                            hint="write the pairs into it (one row per pair), or pass another file")
        raise DataError("the data set has no rows", path=spec.label, reason="empty file",
                        hint="check the split name (--split) and the data set's files")
    try:
        mapped = apply_columns(dict.fromkeys(names), spec.columns)
    except RowProblem as p:
        raise DataError(p.message, path=spec.label, column=p.column, hint=p.hint, reason=p.reason) from None
    needed = ["chosen", "rejected"] + {"plain": ["prompt"], "orca": ["question"]}.get(spec.format, [])
    for key in needed:
        if key not in mapped:
            p = _missing(mapped, key)
            hint = p.hint
            if (spec.split or "").endswith("_sft"):
                hint = (f"split '{spec.split}' holds SFT data (no chosen/rejected pairs); use a preference split "
                        f"such as '{spec.split[:-4]}_prefs'")
            raise DataError(p.message.replace("(the row has", "(its columns are"), path=spec.label, column=key,
                            hint=hint, reason="missing column")


def _read_csv(spec: SourceSpec) -> list[tuple[int, list[str]]]:
    """``(line, fields)`` of each record of a CSV / TSV file, the header first. Every field is read
    as text, as written (pyarrow would turn a quoted "4" or "true" into a number or a boolean);
    bytes that are not UTF-8 are kept (as surrogates) so each bad row is reported at its line."""
    path = Path(spec.location)
    records: list[tuple[int, list[str]]] = []
    start = 1
    limit = csv.field_size_limit(2**31 - 1)  # one long completion is one field; the default allows 128 KiB
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            reader = csv.reader(f, delimiter="\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ",")
            for fields in reader:
                if any(field.strip() for field in fields):
                    records.append((start, fields))
                start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"cannot read it as CSV: {e}", path=str(path), line=start, reason="unreadable file",
                        hint='quote fields that hold the delimiter, a quote or a line break ("...", with "" '
                        "for a quote inside)") from None
    except READ_ERRORS as e:
        raise DataError(f"cannot read it as CSV: {e}", path=str(path), reason="unreadable file",
                        hint="check that the file is complete and of the type its name says") from None
    finally:
        csv.field_size_limit(limit)
    if not records:
        raise DataError("the file is empty: no header and no rows", path=str(path), reason="empty file",
                        hint=SAMPLE_HINT)
    return records


def _csv_rows(spec: SourceSpec) -> Iterator[RawRow]:
    """Rows of a CSV / TSV file by line; a column empty in every row counts as missing."""
    (_, header), *records = _read_csv(spec)
    if _undecodable(header):
        raise DataError("the header is not valid UTF-8", path=spec.location, line=1, reason="undecodable bytes",
                        hint="save the file as UTF-8")
    filled = [name for i, name in enumerate(header) if any(i < len(f) and f[i] for _, f in records)]
    _check_names(spec, filled, len(records))
    for line, fields in records:
        if len(fields) != len(header):
            yield line, None, RowProblem(
                "wrong number of fields", f"expected {len(header)} fields (as in the header), got {len(fields)}",
                hint='quote fields that hold the delimiter or a line break ("...")')
            continue
        bad = next((i for i, field in enumerate(fields) if _undecodable([field])), None)
        if bad is not None:
            raw = bytes(ord(ch) - 0xDC00 for ch in fields[bad] if "\udc80" <= ch <= "\udcff")
            yield line, None, RowProblem("undecodable bytes", f"the line is not valid UTF-8 (the field holds bytes "
                                         f"that cannot be decoded: {raw[:4]!r})", column=header[bad],
                                         hint="save the file as UTF-8")
            continue
        yield line, None, dict(zip(header, fields))


def _undecodable(fields: list[str]) -> bool:
    """Whether a field read with ``errors="surrogateescape"`` holds bytes that were not UTF-8."""
    return any(any("\udc80" <= ch <= "\udcff" for ch in field) for field in fields)


def _arrow_batches(table: Any) -> Iterator[list[dict[str, Any]]]:
    for batch in table.to_batches(max_chunksize=1000):
        yield batch.to_pylist()


def _read_table_file(spec: SourceSpec) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if Path(spec.location).stat().st_size == 0:
        raise DataError("the file is empty (0 bytes)", path=spec.location, reason="empty file",
                        hint="write the pairs into it (one row per pair), or pass another file")
    try:
        return pq.read_table(spec.location)
    except (pa.ArrowInvalid, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        empty = "empty" in first.lower()
        raise DataError(f"cannot read it as {spec.kind.upper()}: {first}", path=spec.location,
                        reason="empty file" if empty else "unreadable file",
                        hint="check that the file is complete and of the type its name says") from None


def _load_datasets(spec: SourceSpec) -> Any:
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


def iter_rows(spec: SourceSpec) -> Iterator[RawRow]:
    """The raw rows of a source (file-level problems raise `DataError` here)."""
    if spec.kind == "json":
        yield from iter_json_rows(spec.location)
        return
    if spec.kind == "jsondir":
        for path in split_files(spec):
            yield from iter_json_rows(path)
        return
    if spec.kind == "csv":
        yield from _csv_rows(spec)
        return
    if spec.kind == "parquet":
        table = _read_table_file(spec)
        _check_columns(spec, table)
        yield from _table_rows(_arrow_batches(table))
        return
    dataset = _load_datasets(spec)
    _check_columns(spec, dataset.data)
    yield from _table_rows(_dataset_batches(dataset))


def _dataset_batches(dataset: Any) -> Iterator[list[dict[str, Any]]]:
    for batch in dataset.iter(batch_size=1000):
        keys = list(batch)
        n = len(batch[keys[0]]) if keys else 0
        yield [{k: batch[k][i] for k in keys} for i in range(n)]


def read_prepared(directory: str | Path, part: str) -> list[PreferencePair]:
    """Normalised pairs written by ``dpokit data prepare`` (``train`` or ``eval``)."""
    path = Path(directory) / f"{part}.jsonl"
    if not path.is_file():
        return []
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                pairs.append(PreferencePair.from_dict(json.loads(line), source=f"{path}:{number}"))
    return pairs


def read_source(spec: SourceSpec, max_rows: int | None = None) -> tuple[list[PreferencePair], LoadReport]:
    """All pairs of one source and the report of what was found; nothing is raised for bad rows."""
    if spec.kind == "prepared":
        pairs = read_prepared(spec.location, "train")[:max_rows]
        return pairs, LoadReport(spec.label, "prepared", len(pairs), len(pairs))
    if spec.kind == "jsondir":
        return _read_json_dir(spec, max_rows)
    return collect_pairs(iter_rows(spec), spec.label, spec.format, spec.columns, max_rows, _source_kind(spec))


def _source_kind(spec: SourceSpec) -> str:
    """What kind of source a spec's rows come from, for fixes that depend on it (`RowProblem.hint_for`):
    a value's type is set by quoting in JSON, by the column's type in Parquet or a `datasets` data set."""
    return {"json": "json", "jsondir": "json", "csv": "csv", "parquet": "parquet"}.get(spec.kind, "dataset")


# ---- train / eval -----------------------------------------------------------------------------


def main_spec(cfg: DataConfig, split: str | None = None, name: str | None = None) -> SourceSpec:
    return resolve_source(name or cfg.path, split or cfg.split, cfg.config_name, cfg.data_dir, cfg.format,
                          cfg.columns)


def load_pairs(source: str | None, sample_size: int = 200, seed: int = 0) -> list[PreferencePair]:
    """Pairs from a source (first bad row raises), or ``sample_size`` built-in sample pairs for None."""
    if source is None:
        return _samples(sample_size, seed)
    pairs, report = read_source(resolve_source(source))
    report.raise_errors("error", source)
    return pairs


def _samples(n: int, seed: int) -> list[PreferencePair]:
    return [PreferencePair(**row, source=f"sample:{i}") for i, row in enumerate(sample_pairs(n, seed))]


def read_train_eval(
    cfg: DataConfig, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair], list[tuple[LoadReport, str]], float]:
    """Read every configured source; returns train and eval pairs, one report per source (with the
    name to show), and the fraction (or count) still to hold out. Bad rows are left out and
    reported, never raised: the caller applies the policy."""
    reports: list[tuple[LoadReport, str]] = []
    holdout: float = cfg.eval_fraction
    evaluation: list[PreferencePair] = []
    if cfg.mixture:
        train, evaluation, reports, size = _load_mixture(cfg, seed)
        holdout = size or holdout
    elif cfg.path is None:
        train = _samples(cfg.sample_size, seed)
    else:
        spec = main_spec(cfg)
        train, report = read_source(spec, cfg.max_samples)
        reports.append((report, spec.name))
        evaluation_spec = eval_spec(cfg, spec)
        if evaluation_spec is not None:
            evaluation, eval_report = read_source(evaluation_spec)
            reports.append((eval_report, evaluation_spec.name))
        elif spec.kind == "prepared":
            evaluation = read_prepared(spec.location, "eval")
    return train, evaluation, reports, holdout


def eval_spec(cfg: DataConfig, spec: SourceSpec) -> SourceSpec | None:
    """The evaluation source for the training source ``spec``: ``data.eval_path``, else
    ``data.eval_split`` of the training source, else (no eval data, split or fraction configured)
    the eval split of a preset (``ultrafeedback`` -> ``test_prefs``); None for no eval source."""
    if cfg.eval_split and not cfg.eval_path and spec.kind not in SPLIT_KINDS:
        raise DataError(f"data.eval_split '{cfg.eval_split}' given, but {spec.name} is a file, which has no "
                        "splits", reason="no splits", hint="use data.eval_path (a file) or data.eval_fraction")
    if cfg.eval_path or cfg.eval_split:
        return main_spec(cfg, cfg.eval_split, cfg.eval_path)
    preset = find_preset(spec.name) if spec.kind == "hub" and not Path(spec.location).exists() else None
    if preset is None or preset.eval_split is None or cfg.eval_fraction or spec.split == preset.eval_split:
        return None
    return replace(spec, split=preset.eval_split)


def load_train_eval(
    cfg: DataConfig, seed: int, log: Callable[[str], None] | None = None
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Training pairs and evaluation pairs (empty when no eval data is configured).

    Bad rows raise `DataError` here under ``on_bad_row: error`` (before any model is loaded);
    under ``skip`` they are left out. What was read, dropped and skipped goes to ``log``.
    """
    train, evaluation, reports, holdout = read_train_eval(cfg, seed)
    for report, name in reports:
        report.raise_errors(cfg.on_bad_row, name)
        report.raise_if_no_pairs(name)
    if log is not None:
        for report, _ in reports:
            for line in report.summary(cfg.on_bad_row):
                log(f"data: {line}")
    if cfg.max_samples is not None:  # a smoke run: the held-out pairs come out of these too
        train = train[: cfg.max_samples]
    if holdout:
        try:
            train, held = hold_out(train, holdout, seed)
        except ValueError as e:
            raise DataError(str(e), hint="lower data.eval_fraction / test_split_size, or add data") from None
        evaluation = evaluation + held
    if not train:
        raise DataError(f"no usable training pairs in {cfg.path or 'the mixture'}", reason="no pairs",
                        hint="`dpokit data validate` shows what was dropped and why")
    return train, evaluation


def _load_mixture(cfg: DataConfig, seed: int):
    """The mixture's pairs, picked as alignment-handbook picks them (`mixture_rows`, by the mixture's own
    seed); evaluation splits (``data.eval_split``) are taken whole, as the handbook does."""
    mixture = parse_mixture(cfg.mixture)
    sources: list[list[PreferencePair]] = []
    evaluation: list[PreferencePair] = []
    reports = []
    for entry in mixture.datasets:
        fmt = entry.format or cfg.format
        spec = resolve_source(entry.id, entry.split or cfg.split, entry.config, entry.data_dir, fmt,
                              entry.columns if entry.columns is not None else cfg.columns)
        pairs, report = read_source(spec)
        reports.append((report, entry.id))
        if entry.weight is not None:
            taken = int(len(pairs) * float(entry.weight))
            report.source += f" (weight {entry.weight}: {taken} of {len(pairs)} pairs taken)"
        sources.append(pairs)
        if cfg.eval_split and spec.kind in SPLIT_KINDS:
            eval_spec = replace(spec, split=cfg.eval_split)
            eval_pairs, eval_report = read_source(eval_spec)
            reports.append((eval_report, entry.id))
            evaluation += eval_pairs
    try:
        train_ids, test_ids = mixture_rows([len(pairs) for pairs in sources], mixture)
    except ValueError as e:
        raise DataError(str(e), reason="mixture", hint="lower the mixture's test_split_size, or add data") from None
    return [sources[s][r] for s, r in train_ids], evaluation + [sources[s][r] for s, r in test_ids], reports, 0.0
