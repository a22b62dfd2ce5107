"""Edge cases of reading data sources: a bad first row, no pairs kept, corrupt .gz files, CSV text
columns and bad bytes, text after a JSON array, local directories of JSON files, presets' eval split.
Real files in tmp_path; nothing is mocked and nothing is downloaded."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from dpokit.cli import main
from dpokit.config import DataConfig
from dpokit.data.sources import eval_spec, load_train_eval, main_spec, read_source, resolve_source
from dpokit.errors import DataError

GOOD = [{"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."},
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "A dog."}]
NO_MODEL = "/nonexistent/model-dir"  # train must fail on the data before it would try to load this


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- 1. the format comes from the first good row; no pairs kept is an error ----------------------


@pytest.mark.parametrize(("first", "columns"), [
    ({"chosen": "a", "rejected": "b"}, None),  # looks implicit, the rest are plain
    ({"question": "q0", "good": "a"}, {"prompt": "question", "chosen": "good", "rejected": "bad"}),  # fails the mapping
], ids=["no-prompt", "fails-column-mapping"])
def test_a_bad_first_row_does_not_decide_the_format(tmp_path, capsys, first, columns):
    rows = GOOD
    if columns:
        rows = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in GOOD]
    path = write(tmp_path / "pairs.jsonl", [first, *rows])
    cfg = DataConfig(path=str(path), columns=columns, on_bad_row="skip")
    train, _ = load_train_eval(cfg, seed=0)
    assert [p.prompt for p in train] == [r["prompt"] for r in GOOD]
    pairs, report = read_source(main_spec(cfg))
    assert report.format == "plain" and report.pairs == 2
    assert [(p.line, p.reason) for p in report.problems] == [(1, "missing column")]
    argv = ["data", "validate", str(path)] + (["--columns", json.dumps(columns)] if columns else [])
    assert main(argv) == 1  # one bad row, reported at line 1
    out = capsys.readouterr().out
    assert f"{path}, line 1, column" in out and "2 pairs kept" in out


def test_no_pairs_kept_fails_validate_and_train(tmp_path, capsys):
    path = write(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b"}, {"prompt": "c", "chosen": 5, "rejected": "d"}])
    assert main(["data", "validate", str(path), "--on-bad-row", "skip"]) == 1
    out = capsys.readouterr().out
    assert "0 pairs kept" in out and "validate: ok" not in out and "no pairs kept" in out
    assert main(["train", "--data", str(path), "--on-bad-row", "skip", "--model", NO_MODEL]) == 2
    err = capsys.readouterr().err
    assert f"{path}: no pairs kept: all 2 rows were left out (1 missing column, 1 wrong type)" in err
    assert "dpokit data validate" in err


def test_an_eval_source_with_no_pairs_kept_stops_training(tmp_path):
    train = write(tmp_path / "train.jsonl", GOOD)
    evaluation = write(tmp_path / "eval.jsonl", [{"prompt": "a", "chosen": "same", "rejected": "same"}])
    cfg = DataConfig(path=str(train), eval_path=str(evaluation), on_bad_row="skip")
    with pytest.raises(DataError, match="no pairs kept") as info:
        load_train_eval(cfg, seed=0)
    assert str(evaluation) in str(info.value)


# ---- 2. corrupt or truncated .gz ----------------------------------------------------------------


def test_truncated_gz_names_the_file_and_line(tmp_path):
    rows = [{"prompt": f"question {i}", "chosen": f"answer {i}", "rejected": f"no {i}"} for i in range(4000)]
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"line \d+: cannot read the gzip file: it is corrupt or truncated") as info:
        load_train_eval(DataConfig(path=str(path)), seed=0)
    assert str(path) in str(info.value) and "gzip -t" in str(info.value)
    assert info.value.line > 100 and info.value.reason == "unreadable file"


@pytest.mark.parametrize("content", [b"not gzip at all\n", gzip.compress(b'{"prompt": "a"}\n')[:12]],
                         ids=["not-gzip", "cut-in-header"])
def test_corrupt_gz_is_a_data_error(tmp_path, capsys, content):
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="cannot read the gzip file"):
        read_source(resolve_source(str(path)))
    assert main(["data", "validate", str(path)]) == 1  # a faulty file: validate's verdict
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err


def test_truncated_gz_json_array(tmp_path):
    data = gzip.compress(json.dumps(GOOD * 200, indent=1).encode())
    path = tmp_path / "pairs.json.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read the gzip file"):
        read_source(resolve_source(str(path)))


# ---- 3. CSV: every field is text; bad bytes and ragged rows by line ------------------------------


def test_csv_fields_are_read_as_text(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('prompt,chosen,rejected\n"What is 2+2?","4","5"\nIs it true?,true,false\n1,2,3\n', encoding="utf-8")
    pairs, report = read_source(resolve_source(str(path)))
    assert not report.problems
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("What is 2+2?", "4", "5"), ("Is it true?", "true", "false"), ("1", "2", "3")]
    assert pairs[0].source == f"{path}:2"


def test_csv_bad_bytes_and_ragged_rows_are_located_by_line(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b'prompt,chosen,rejected\nq1,a,b\nq2,caf\xe9,d\n"multi\nline",e,f\nq4,g\nq5,h,i\n')
    pairs, report = read_source(resolve_source(str(path)))
    assert [p.prompt for p in pairs] == ["q1", "multi\nline", "q5"]
    assert [(p.line, p.reason, p.column) for p in report.problems] == [
        (3, "undecodable bytes", "chosen"), (6, "wrong number of fields", None)]
    assert "\\xe9" in report.problems[0].message
    with pytest.raises(DataError, match=r"line 3, column 'chosen': the line is not valid UTF-8"):
        load_train_eval(DataConfig(path=str(path)), seed=0)


def test_tsv_and_an_all_empty_column(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("prompt\tchosen\trejected\nq\t\t\n", encoding="utf-8")
    with pytest.raises(DataError, match="missing column 'chosen'"):  # empty in every row counts as missing
        read_source(resolve_source(str(path)))


# ---- 4. text after a top-level JSON array --------------------------------------------------------


@pytest.mark.parametrize(("tail", "line"), [("\n[{\"prompt\": \"q\"}]\n", 2), ("  \n\n x", 3)], ids=["array", "text"])
def test_text_after_the_json_array_is_an_error(tmp_path, tail, line):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(GOOD) + tail, encoding="utf-8")
    with pytest.raises(DataError, match=rf"line {line}: unexpected text after the JSON array's closing"):
        read_source(resolve_source(str(path)))


def test_blank_text_after_the_json_array_is_fine(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(GOOD, indent=2) + "\n\n  \n", encoding="utf-8")
    pairs, _ = read_source(resolve_source(str(path)))
    assert len(pairs) == 2


# ---- 5. a local directory of JSON files ----------------------------------------------------------


def test_json_directory_is_read_line_by_line_with_splits(tmp_path):
    root = tmp_path / "mydata"
    root.mkdir()
    write(root / "train.jsonl", [GOOD[0], {"prompt": "q", "chosen": 5, "rejected": "x"}, GOOD[1]])
    write(root / "test.jsonl", [GOOD[1]])
    spec = resolve_source(str(root))
    assert spec.kind == "jsondir"
    with pytest.raises(DataError, match=rf"{root / 'train.jsonl'}, line 2, column 'chosen': expected a string"):
        load_train_eval(DataConfig(path=str(root)), seed=0)
    train, evaluation = load_train_eval(DataConfig(path=str(root), eval_split="test", on_bad_row="skip"), seed=0)
    assert [p.source for p in train] == [f"{root / 'train.jsonl'}:1", f"{root / 'train.jsonl'}:3"]
    assert [p.source for p in evaluation] == [f"{root / 'test.jsonl'}:1"]
    with pytest.raises(DataError, match="no split 'validation'.*train, test"):
        read_source(resolve_source(str(root), split="validation"))


def test_json_directory_with_named_and_sharded_files(tmp_path):
    root = tmp_path / "uf"
    write(_mkdir(root / "data") / "train_prefs-00000-of-00002.jsonl", GOOD[:1])
    with gzip.open(root / "data" / "train_prefs-00001-of-00002.jsonl.gz", "wt") as f:
        f.write(json.dumps(GOOD[1]) + "\n")
    write(root / "data" / "test_prefs-00000-of-00001.jsonl", GOOD)
    train, evaluation = load_train_eval(DataConfig(path=str(root), split="train_prefs", eval_split="test_prefs"),
                                        seed=0)
    assert len(train) == 2 and len(evaluation) == 2
    pairs, report = read_source(resolve_source(str(root), split="train_prefs"), max_rows=1)
    assert len(pairs) == 1 and report.rows == 1


def test_json_directory_without_split_names_is_all_train(tmp_path):
    root = _mkdir(tmp_path / "plain")
    write(root / "part-a.jsonl", GOOD[:1])
    write(root / "part-b.jsonl", GOOD[1:])
    pairs, report = read_source(resolve_source(str(root)))
    assert len(pairs) == 2 and report.format == "plain"


def test_a_failing_local_directory_gets_a_local_hint(tmp_path):
    root = _mkdir(tmp_path / "nothing")
    (root / "notes.md").write_text("no data here\n")
    with pytest.raises(DataError) as info:
        read_source(resolve_source(str(root)))
    assert "directory" in info.value.hint and "network" not in info.value.hint


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


# ---- 6. a preset's eval split ---------------------------------------------------------------------


def test_a_preset_evaluates_on_its_eval_split_unless_told_otherwise():
    def evaluated_on(**kwargs):
        cfg = DataConfig(**kwargs)
        spec = eval_spec(cfg, main_spec(cfg))  # resolves names only: nothing is downloaded
        return spec and (spec.location, spec.split)

    uf = "HuggingFaceH4/ultrafeedback_binarized"
    assert evaluated_on(path="ultrafeedback") == (uf, "test_prefs")
    assert evaluated_on(path=uf) == (uf, "test_prefs")
    assert evaluated_on(path="hh-rlhf", data_dir="harmless-base") == ("Anthropic/hh-rlhf", "test")
    assert evaluated_on(path="ultrafeedback", eval_split="test_gen") == (uf, "test_gen")
    assert evaluated_on(path="ultrafeedback", eval_fraction=0.1) is None
    assert evaluated_on(path="hh-rlhf", split="test") is None  # trains on the eval split: nothing to add
    assert evaluated_on(path="orca") is None  # no eval split


def test_a_local_directory_named_like_a_preset_gets_no_preset_eval(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(_mkdir(tmp_path / "ultrafeedback") / "train.jsonl", GOOD)
    train, evaluation = load_train_eval(DataConfig(path="ultrafeedback"), seed=0)
    assert len(train) == 2 and evaluation == []


# ---- 7. fixes that fit the source: empty local files, typed columns ------------------------------


def _parquet(path: Path, table_rows: list[dict] | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if table_rows:
        pq.write_table(pa.Table.from_pylist(table_rows), path)
    else:
        pq.write_table(pa.table({k: pa.array([], pa.string()) for k in ("prompt", "chosen", "rejected")}), path)
    return path


@pytest.mark.parametrize("kind", ["csv-header-only", "parquet-no-rows", "parquet-0-bytes"])
def test_an_empty_local_file_says_the_file_has_no_rows(tmp_path, kind):
    if kind == "csv-header-only":
        path = tmp_path / "pairs.csv"
        path.write_text("prompt,chosen,rejected\n", encoding="utf-8")
    elif kind == "parquet-no-rows":
        path = _parquet(tmp_path / "pairs.parquet")
    else:
        path = tmp_path / "pairs.parquet"
        path.write_bytes(b"")
    with pytest.raises(DataError) as info:
        read_source(resolve_source(str(path)))
    error, message = info.value, str(info.value).split("\n")[0]
    assert error.reason == "empty file" and message.startswith(f"{path}: the file")
    assert "no rows" in message or "empty" in message
    assert "add" in error.hint or "write" in error.hint
    assert "split" not in str(error) and "data set" not in str(error)


def test_a_typed_column_of_the_wrong_type_gets_a_fix_for_its_source(tmp_path):
    bad = {"prompt": "What is 2 + 2?", "chosen": 4, "rejected": "5"}
    path = _parquet(tmp_path / "pairs.parquet", [bad])
    _, report = read_source(resolve_source(str(path)))
    (problem,) = report.problems
    assert problem.column == "chosen" and problem.reason == "wrong type"
    assert "quotes" not in problem.hint and "store chosen as text (string)" in problem.hint

    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_list([bad]).save_to_disk(str(saved))
    _, report = read_source(resolve_source(str(saved)))
    (problem,) = report.problems
    assert problem.column == "chosen" and "quotes" not in problem.hint and "string" in problem.hint

    _, report = read_source(resolve_source(str(write(tmp_path / "pairs.jsonl", [bad]))))  # JSON: quote it
    assert "quotes" in report.problems[0].hint
