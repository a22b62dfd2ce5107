"""Bad input, one policy everywhere: each error names file, line (or row index), column and fix;
`validate` exits non-zero, `train` stops before the model loads, `--on-bad-row skip` counts and skips;
warnings drop the row, count it and exit 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpokit.cli import main
from dpokit.config import DataConfig
from dpokit.data.sources import load_train_eval, read_source, resolve_source
from dpokit.errors import DataError

GOOD = {"prompt": "What is 2 + 2?", "chosen": "2 + 2 is 4.", "rejected": "5"}
GOOD2 = {"prompt": "Name a colour.", "chosen": "Blue is a colour.", "rejected": "A dog."}
NO_MODEL = "/nonexistent/model-dir"  # train must fail on the data before it would try to load this


def write(path: Path, lines: list) -> Path:
    """Write lines (dicts as JSON, bytes and str as they are) as a JSONL file."""
    with open(path, "wb") as f:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            f.write((line.encode("utf-8") if isinstance(line, str) else line) + b"\n")
    return path


# (name, bad line, expected text, column, reason) -- the bad row is always line 2.
ROW_ERRORS = [
    ("invalid_json", '{"prompt": "a", "chosen": "b" "rejected": "c"}', "invalid JSON", None, "invalid JSON"),
    ("missing_column", {"prompt": "a", "chosen": "b"}, "missing column 'rejected'", "rejected", "missing column"),
    ("wrong_type", {"prompt": "a", "chosen": 5, "rejected": "c"}, "expected a string, got int (5)", "chosen",
     "wrong type"),
    ("empty_field", {"prompt": "a", "chosen": "   ", "rejected": "c"}, "'chosen' is empty", "chosen", "empty field"),
    ("same", {"prompt": "a", "chosen": "same", "rejected": "same"}, "identical", "chosen", "chosen == rejected"),
    ("undecodable", b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}', "not valid UTF-8", None,
     "undecodable bytes"),
    ("lone_surrogate", '{"prompt": "caf\\ud800", "chosen": "b", "rejected": "c"}',
     "invalid Unicode: a lone UTF-16 surrogate (\\ud800) at character 16 of the line", "prompt", "invalid Unicode"),
    ("control_character", '{"prompt": "a\tb", "chosen": "b", "rejected": "c"}',
     "(Invalid control character at character 14 of the line)", None, "invalid JSON"),
    ("unknown_role", {"chosen": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                      "rejected": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "no"}]},
     '2 messages have unknown roles: chosen[0] "human", rejected[0] "human"', "chosen", "unknown role"),
]


@pytest.mark.parametrize("name,bad,text,column,reason", ROW_ERRORS, ids=[c[0] for c in ROW_ERRORS])
def test_row_error(tmp_path, capsys, name, bad, text, column, reason):
    first = GOOD if name != "unknown_role" else {
        "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}
    path = write(tmp_path / f"{name}.jsonl", [first, bad, first])

    # validate: non-zero, and the report names file, line, column and the fix
    assert main(["data", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    where = f"{path}, line 2" + (f", column '{column}'" if column else "")
    assert where in out and text in out and "fix:" in out
    assert f"1 row: {reason} (line 2)" in out

    # train: stops on the data, before the (missing) model is loaded
    assert main(["train", "--data", str(path), "--model", NO_MODEL, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert where in err and text in err and "fix:" in err and NO_MODEL not in err
    assert not (tmp_path / "out").exists()

    # --on-bad-row skip: the row is skipped, counted and reported by reason
    assert main(["data", "validate", str(path), "--on-bad-row", "skip"]) == 0
    out = capsys.readouterr().out
    assert f"skipped (bad row): 1 row: {reason} (line 2)" in out and "2 pairs kept" in out
    train, _ = load_train_eval(DataConfig(path=str(path), on_bad_row="skip"), seed=0)
    assert len(train) == 2


def test_error_counts_all_bad_rows(tmp_path, capsys):
    path = write(tmp_path / "bad.jsonl", [GOOD, {"prompt": "a", "chosen": 1, "rejected": "b"}, GOOD2,
                                          "not json", {"prompt": "a", "chosen": "x", "rejected": "x"}])
    assert main(["train", "--data", str(path), "--model", NO_MODEL]) == 2
    err = capsys.readouterr().err
    assert "line 2, column 'chosen'" in err  # the first one in full
    assert "3 bad rows in all" in err and "1 invalid JSON" in err and "--on-bad-row skip" in err
    assert main(["data", "validate", str(path), "--on-bad-row", "skip"]) == 0
    out = capsys.readouterr().out
    for line in ("wrong type (line 2)", "invalid JSON (line 4)", "chosen == rejected (line 5)"):
        assert line in out


FILE_ERRORS = [
    ("empty", [], "the file is empty"),
    ("blank_lines", ["", "   "], "the file is empty"),
    ("arrays", ["[1, 2, 3]", "[4]"], "not rows of JSON objects"),
    ("strings", ['"just a string"'], "not rows of JSON objects"),
    ("one_object", ["{", '  "data": [{"prompt": "a", "chosen": "b", "rejected": "c"}]', "}"],
     "not rows of JSON objects"),
]


@pytest.mark.parametrize("name,lines,text", FILE_ERRORS, ids=[c[0] for c in FILE_ERRORS])
def test_file_error(tmp_path, capsys, name, lines, text):
    path = write(tmp_path / f"{name}.jsonl", lines) if lines else tmp_path / "empty.jsonl"
    if not lines:
        path.write_bytes(b"")
    # validate's verdict on faulty data is exit 1, as for bad rows; train stops as for any user mistake (2)
    for argv, code in ((["data", "validate", str(path)], 1), (["data", "validate", str(path), "--on-bad-row", "skip"], 1),
                       (["train", "--data", str(path), "--model", NO_MODEL], 2)):
        assert main(argv) == code
        err = capsys.readouterr().err
        assert str(path) in err and text in err and "fix:" in err and NO_MODEL not in err
        assert err.startswith("error: ") and "Traceback" not in err
    if name == "one_object":
        assert "under 'data'" in err


def test_json_array_of_non_objects(tmp_path, capsys):
    path = tmp_path / "numbers.json"
    path.write_text("[1, 2, 3]")
    assert main(["data", "validate", str(path)]) == 1
    assert "not rows of JSON objects" in capsys.readouterr().err


def test_sft_split_has_no_rejected_column(tmp_path, capsys, monkeypatch):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    root = tmp_path / "ultrafeedback_binarized"
    (root / "data").mkdir(parents=True)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    pq.write_table(pa.Table.from_pylist([{"prompt": "hi", "prompt_id": "0", "messages": messages}] * 3),
                   root / "data" / "train_sft-00000-of-00001.parquet")
    for argv, code in ((["data", "validate", str(root), "--split", "train_sft"], 1),  # as for the JSONL file below
                       (["train", "--data", str(root), "--split", "train_sft", "--model", NO_MODEL], 2)):
        assert main(argv) == code
        err = capsys.readouterr().err
        assert "[train_sft]" in err and "missing column 'chosen'" in err and "train_prefs" in err
    # A JSONL file of SFT rows gets the same advice, located by line.
    path = write(tmp_path / "sft.jsonl", [{"prompt": "hi", "messages": messages}])
    assert main(["data", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "line 1, column 'chosen'" in out and "SFT data" in out


def test_wrong_type_in_a_parquet_file_names_the_row_index(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, {"prompt": "a", "chosen": "", "rejected": "c"}]), path)
    assert main(["data", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}, row index 1, column 'chosen'" in out and "empty" in out


def test_warning_empty_completion_after_prompt_extraction(tmp_path, capsys):
    rows = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"},
            {"chosen": "\n\nHuman: hey\n\nAssistant: ", "rejected": "\n\nHuman: hey\n\nAssistant: what"},
            {"chosen": "\n\nHuman: yo\n\nAssistant: sup", "rejected": "\n\nHuman: yo\n\nAssistant: no"}]
    path = write(tmp_path / "hh.jsonl", rows)
    assert main(["data", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "warning, dropped: 1 row: empty completion after prompt extraction (line 2)" in out
    assert "2 pairs kept" in out and "validate: ok" in out
    train, _ = load_train_eval(DataConfig(path=str(path)), seed=0)  # no error: dropped, not fatal
    assert len(train) == 2


def test_warning_prompt_alone_longer_than_max_length(tmp_path, capsys):
    long = {"prompt": "Tell me everything about " + "the history of the water cycle " * 20, "chosen": "Sure.",
            "rejected": "No."}
    path = write(tmp_path / "long.jsonl", [GOOD, long, GOOD2])
    assert main(["data", "validate", str(path), "--model", "tiny", "--max-length", "48"]) == 0
    out = capsys.readouterr().out
    assert "warning, dropped: 1 row: prompt alone reaches max_length (line 2)" in out
    assert "validate: ok" in out


# ---- located precisely: JSON positions, empty messages, mixed completion types -------------------


@pytest.mark.parametrize(("line", "char"), [('{"prompt":"a","chosen":"b"', 27),
                                            ('{"prompt": "a", "chosen": "b" "rejected": "c"}', 31)],
                         ids=["cut-off", "no-comma"])
def test_invalid_json_names_the_character_in_the_line(tmp_path, line, char):
    path = write(tmp_path / "bad.jsonl", [GOOD, line, GOOD2])
    pairs, report = read_source(resolve_source(str(path)))
    assert len(pairs) == 2
    (problem,) = report.problems
    assert problem.line == 2 and problem.reason == "invalid JSON"
    assert f"Expecting ',' delimiter at character {char} of the line" in problem.message


def test_invalid_json_in_an_array_names_line_and_character(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": "a" "chosen": "b"}\n]\n')
    with pytest.raises(DataError, match=r"line 3: invalid JSON \(Expecting ',' delimiter at character 18 of the line\)"):
        read_source(resolve_source(str(path)))


def _turns(*contents: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in contents]


EMPTY_MESSAGES = [
    ("user", {"chosen": _turns(("user", ""), ("assistant", "Paris.")),
              "rejected": _turns(("user", ""), ("assistant", "Lyon."))}, "chosen", "message 0 (user) is empty"),
    ("assistant-in-rejected", {"chosen": _turns(("user", "Capital?"), ("assistant", "Paris.")),
                               "rejected": _turns(("user", "Capital?"), ("assistant", "  "))},
     "rejected", "message 1 (assistant) is empty"),
    ("explicit-prompt", {"prompt": _turns(("user", "")), "chosen": _turns(("assistant", "Paris.")),
                         "rejected": _turns(("assistant", "Lyon."))}, "prompt", "message 0 (user) is empty"),
]


@pytest.mark.parametrize(("row", "column", "text"), [c[1:] for c in EMPTY_MESSAGES], ids=[c[0] for c in EMPTY_MESSAGES])
def test_an_empty_user_or_assistant_message_is_an_empty_field(tmp_path, row, column, text):
    first = {"chosen": _turns(("user", "Hi"), ("assistant", "Hello.")),
             "rejected": _turns(("user", "Hi"), ("assistant", "Go away."))}
    path = write(tmp_path / "chat.jsonl", [first, row])
    pairs, report = read_source(resolve_source(str(path)))
    assert len(pairs) == 1
    (problem,) = report.problems
    assert (problem.line, problem.column, problem.reason, problem.level) == (2, column, "empty field", "error")
    assert text in problem.message and problem.hint


def test_an_empty_system_message_is_dropped(tmp_path):
    system = {"role": "system", "content": ""}
    row = {"chosen": [system, *_turns(("user", "Capital?"), ("assistant", "Paris."))],
           "rejected": [system, *_turns(("user", "Capital?"), ("assistant", "Lyon."))]}
    pairs, report = read_source(resolve_source(str(write(tmp_path / "chat.jsonl", [row]))))
    assert not report.problems
    assert pairs[0].prompt == _turns(("user", "Capital?")) and pairs[0].chosen == _turns(("assistant", "Paris."))


@pytest.mark.parametrize(("text_side", "list_side"), [("chosen", "rejected"), ("rejected", "chosen")])
def test_a_string_beside_a_message_list_is_a_wrong_type(tmp_path, capsys, text_side, list_side):
    row = {"prompt": "Capital?", text_side: "Paris.",
           list_side: _turns(("user", "Capital?"), ("assistant", "Lyon."))}
    path = write(tmp_path / "mixed.jsonl", [row])
    _, report = read_source(resolve_source(str(path)))
    (problem,) = report.problems
    assert (problem.column, problem.reason) == (text_side, "wrong type")
    assert f"make {text_side} a list of chat messages like {list_side}" in problem.hint
    assert main(["data", "validate", str(path)]) == 1
    assert f"line 1, column '{text_side}'" in capsys.readouterr().out


def test_string_completions_after_a_message_prompt_are_assistant_messages(tmp_path):
    row = {"prompt": _turns(("user", "Capital?")), "chosen": "Paris.", "rejected": "Lyon."}
    pairs, report = read_source(resolve_source(str(write(tmp_path / "chat.jsonl", [row]))))
    assert not report.problems and report.format == "conversational"
    assert pairs[0].chosen == _turns(("assistant", "Paris.")) and pairs[0].rejected == _turns(("assistant", "Lyon."))
