"""Mistakes a user can make on the command line end in one `error: ...` line and exit code 2."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from dpokit.cli import main
from dpokit.configure import resolve
from dpokit.data.samples import sample_pairs
from dpokit.errors import ConfigError


def one_error_line(capsys) -> str:
    """The single `error:` line the command printed, followed by its `fix:` line (no traceback)."""
    err = capsys.readouterr().err
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 2, err
    assert lines[0].startswith("error: ") and lines[1].startswith("fix: "), err
    return lines[0]


def data_file(tmp_path: Path, n: int = 8) -> Path:
    path = tmp_path / "pd.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in sample_pairs(n, seed=1)), encoding="utf-8")
    return path


# ---- paths that cannot be written -----------------------------------------------------------------


def test_data_sample_to_a_path_under_a_file(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    target = blocker / "x.jsonl"  # like /dev/full/x.jsonl: a parent that is a file
    assert main(["data", "sample", "--output", str(target)]) == 2
    line = one_error_line(capsys)
    assert str(blocker) in line and "not a directory" in line


def test_data_sample_to_a_directory(tmp_path, capsys):
    assert main(["data", "sample", "--output", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path) in line and "is a directory" in line


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_names_the_path(capsys):
    assert main(["data", "sample", "--output", "/dev/full"]) == 1  # a runtime fault, not the user's mistake
    line = one_error_line(capsys)
    assert "/dev/full" in line and "no space left" in line
    assert main(["data", "sample", "--output", "/dev/full/x.jsonl"]) == 2
    assert "/dev/full/x.jsonl: not a directory" in one_error_line(capsys)


def test_data_add_to_an_unwritable_path_stops_before_asking(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setattr("sys.stdin", io.StringIO("a\nb\nc\n"))
    assert main(["data", "add", "--output", str(blocker / "prefs.jsonl")]) == 2
    assert str(blocker) in one_error_line(capsys)
    assert main(["data", "add", "--output", str(tmp_path)]) == 2
    assert "is a directory" in one_error_line(capsys)


def test_data_add_leaves_no_empty_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "new" / "prefs.jsonl"
    monkeypatch.setattr("sys.stdin", io.StringIO("done\n"))
    assert main(["data", "add", "--output", str(out)]) == 0
    assert not out.exists()


def test_train_output_under_a_file(tmp_path, tiny_dir, capsys, one_thread):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["train", "--data", str(data_file(tmp_path)), "--model", str(tiny_dir), "--steps", "2",
                 "--precision", "fp32", "--progress", "false", "--output", str(blocker / "x")]) == 2
    err = capsys.readouterr().err
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(error) == 1 and str(blocker) in error[0]


def test_train_oserror_anywhere_is_one_line(tmp_path, tiny_dir, monkeypatch, capsys, one_thread):
    """An OSError from deep inside (here: a cache folder that is a file) names its path, no traceback."""
    blocker = tmp_path / "cache_is_a_file"
    blocker.write_text("x")
    monkeypatch.setenv("DPOKIT_CACHE", str(blocker))
    assert main(["train", "--data", str(data_file(tmp_path)), "--model", str(tiny_dir), "--steps", "2",
                 "--precision", "fp32", "--progress", "false", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-2].startswith(f"error: {blocker}") and "not a directory" in err.splitlines()[-2]
    assert err.splitlines()[-1].startswith("  fix: ")


# ---- generate -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, value, expected", [
    ("--max-new-tokens", "0", "--max-new-tokens must be at least 1 (got 0)"),
    ("--temperature", "-1", "--temperature must be 0 or more (got -1.0)"),
    ("--top-p", "2", "--top-p must be in (0, 1] (got 2.0)"),
    ("--top-p", "0", "--top-p must be in (0, 1] (got 0.0)"),
    ("--top-k", "-3", "--top-k must be 0 or more (got -3)"),
])
def test_generate_sampling_ranges(flag, value, expected, capsys):
    assert main(["generate", "--prompt", "hi", flag, value]) == 2
    assert expected in one_error_line(capsys)


@pytest.mark.parametrize("argv, expected", [
    (["generate", "--prompt", "hi", "--tempreature", "1"], "unknown option '--tempreature' for `dpokit generate`; "
                                                          "did you mean '--temperature'?"),
    (["generate", "--prompt-file=p.txt"], "did you mean '--prompts-file'?"),
    (["data", "sample", "--outptu", "x.jsonl"], "unknown option '--outptu' for `dpokit data sample`; "
                                                "did you mean '--output'?"),
])
def test_argparse_commands_suggest_the_closest_flag(argv, expected, capsys):
    assert main(argv) == 2
    assert expected in one_error_line(capsys)


def test_generate_prompts_file_not_utf8(tmp_path, capsys):
    path = tmp_path / "prompts.txt"
    path.write_bytes("first prompt\nsecond caf\u00e9\n".encode("latin-1"))
    assert main(["generate", "--prompts-file", str(path)]) == 2
    line = one_error_line(capsys)
    assert f"--prompts-file {path}, line 2: not UTF-8" in line and "save the file as UTF-8" in line


@pytest.mark.parametrize("model", ["dpo_checkpoints/final", "./runs/final", "runs/out/checkpoint-10",
                                   "~/no-such-dpokit-model", "/no/such/model"])
def test_generate_missing_local_model_says_train_first(model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--prompt", "hi", "--model", model]) == 2
    line = one_error_line(capsys)
    assert "does not exist" in line and "dpokit train" in line and "huggingface" not in line


def test_default_generate_model_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--prompt", "hi"]) == 2
    line = one_error_line(capsys)
    assert "--model dpo_checkpoints/final does not exist" in line and "`dpokit train`" in line


def test_hub_ids_are_not_local_paths():
    from dpokit.modelcheck import looks_local

    assert not looks_local("gpt2") and not looks_local("org/name") and not looks_local("Qwen/Qwen2.5-0.5B")
    assert looks_local("./x") and looks_local("/x") and looks_local("~/x") and looks_local("out/final")
    assert looks_local("a/checkpoint-5") and looks_local("a/b/c")


# ---- config mistakes ----------------------------------------------------------------------------


def test_weights_missing_directory_is_caught_in_the_config(tmp_path, capsys):
    missing = tmp_path / "no_such_run" / "final"
    expected = (f"--weights {missing}: no such directory; pass an earlier run's output, "
                "for example dpo_checkpoints/final")
    with pytest.raises(ConfigError, match="no such directory"):
        resolve(["--data", "x.jsonl", "--weights", str(missing)])
    assert main(["train", "--data", "x.jsonl", "--weights", str(missing), "--print-config"]) == 2
    assert one_error_line(capsys) == f"error: {expected}"
    config, _, _ = resolve(["--data", "x.jsonl", "--weights", str(tmp_path)])
    assert config.model.weights == str(tmp_path)


@pytest.mark.parametrize("name", ["pd.jsonl", "pairs.json", "pairs.csv", "pairs.parquet", "pairs.jsonl.gz"])
def test_data_file_as_positional_argument(name, tmp_path, capsys):
    path = tmp_path / name
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    assert main(["train", str(path)]) == 2
    assert f"{path} looks like a data file; pass it with --data" in one_error_line(capsys)


def test_non_number_for_a_number_flag(capsys):
    assert main(["train", "--data", "x.jsonl", "--beta", "abc", "--print-config"]) == 2
    line = one_error_line(capsys)
    assert "'abc'" in line and "--beta" in line and "expects a number (float" in line and "Union" not in line
    assert main(["train", "--data", "x.jsonl", "--steps", "many", "--print-config"]) == 2
    line = one_error_line(capsys)
    assert "'many'" in line and "--steps" in line and "whole number (int" in line


# ---- metrics.jsonl ------------------------------------------------------------------------------


def test_second_run_into_one_directory_starts_a_fresh_metrics_file(tmp_path, tiny_dir, capsys, one_thread):
    data, out = data_file(tmp_path), tmp_path / "out"
    argv = ["train", "--data", str(data), "--model", str(tiny_dir), "--steps", "2", "--precision", "fp32",
            "--progress", "false", "--logging-steps", "1", "--output", str(out)]

    def rows() -> list[dict]:
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    assert main(argv) == 0
    first = rows()
    assert [r["step"] for r in first if "loss" in r] == [1, 2]
    assert main([*argv, "--seed", "7"]) == 0
    second = rows()
    assert len(second) == len(first) and [r["step"] for r in second if "loss" in r] == [1, 2]
    assert min(r["time"] for r in second) > max(r["time"] for r in first)  # only the second run's rows


def test_metrics_log_appends_only_when_asked(tmp_path):
    from dpokit.tracking import MetricsLog

    path = tmp_path / "metrics.jsonl"
    for append in (False, False, True):
        log = MetricsLog(path, progress=None, append=append)
        log.log({"step": 1, "loss": 0.5})
        log.close()
    assert len(path.read_text().splitlines()) == 2
