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

``data/resolve.py`` works out what a name is (a `SourceSpec`); ``data/local.py`` reads the local
files dpokit reads itself (JSON directories, CSV, Parquet); ``data/hub.py`` what `datasets` loads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from dpokit.config import DataConfig
from dpokit.data.hub import dataset_batches, load_datasets
from dpokit.data.jsonl import iter_json_rows
from dpokit.data.local import (
    arrow_batches,
    check_columns,
    csv_rows,
    read_json_dir,
    read_table_file,
    split_files,
    table_rows,
)
from dpokit.data.mixture import hold_out, mixture_rows, parse_mixture
from dpokit.data.pairs import PreferencePair
from dpokit.data.presets import find_preset
from dpokit.data.report import LoadReport, RawRow, collect_pairs
from dpokit.data.resolve import SPLIT_KINDS, SourceSpec, resolve_source
from dpokit.data.samples import sample_pairs
from dpokit.errors import DataError

# ---- reading rows ---------------------------------------------------------------------------


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
        yield from csv_rows(spec)
        return
    if spec.kind == "parquet":
        table = read_table_file(spec)
        check_columns(spec, table)
        yield from table_rows(arrow_batches(table))
        return
    dataset = load_datasets(spec)
    check_columns(spec, dataset.data)
    yield from table_rows(dataset_batches(dataset))


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
        return read_json_dir(spec, max_rows)
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
