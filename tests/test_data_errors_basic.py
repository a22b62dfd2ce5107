"""Bad plain-JSONL data files: one clear error naming the file and line, before any model loads."""

from __future__ import annotations

import pytest

from dpokit.cli import main
from dpokit.data.jsonl import read_preference_jsonl
from dpokit.errors import DataError

GOOD = '{"prompt": "Hi", "chosen": "Hello there!", "rejected": "Go away."}\n'


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("", r"empty"),
        (GOOD + "{not json\n", r"line 2: invalid JSON"),
        (GOOD + '{"prompt": "Hi", "chosen": "Hello"}\n', r"line 2, column 'rejected': missing"),
        (GOOD + GOOD + '{"prompt": "Hi", "chosen": 5, "rejected": "x"}\n', r"line 3, column 'chosen': expected a string, got int"),
        ("[1, 2, 3]\n", r"line 1: .*(not rows of JSON objects|expected a JSON object)"),
        ('{"prompt": "Hi", "chosen": "same", "rejected": "same"}\n', r"line 1.*identical"),
        ('{"prompt": "Hi", "chosen": "  ", "rejected": "x"}\n', r"line 1, column 'chosen'.*empty"),
    ],
    ids=["empty", "invalid-json", "missing-key", "wrong-type", "not-an-object", "chosen-equals-rejected", "empty-field"],
)
def test_bad_file_gives_one_clear_error(tmp_path, content, pattern):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=pattern) as info:
        read_preference_jsonl(path)
    assert str(path) in str(info.value)
    assert "fix:" in str(info.value)


def test_undecodable_bytes(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD.encode() + '{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"not valid UTF-8"):
        read_preference_jsonl(path)


def test_missing_file_suggests_data_sample(tmp_path, capsys):
    missing = tmp_path / "preference_data.jsonl"
    assert main(["train", "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"preference data not found at {missing}" in err
    assert "dpokit data sample" in err
    assert "Traceback" not in err


def test_train_stops_on_bad_line_before_loading_a_model(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD + '{"prompt": "x", "chosen": [1], "rejected": "y"}\n')
    # A model name that cannot be loaded: the data error must come first.
    assert main(["train", "--data", str(path), "--model", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "column 'chosen'" in err and "no-model" not in err
