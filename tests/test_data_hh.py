"""Real HH-RLHF pairs end to end: validate reports the README's rough rows by line, stats runs,
prepare tokenizes once, and short training runs complete (from the file and from the prepared data)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dpokit.cli import main

HH_RLHF = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
SHORT = ["--steps", "2", "--batch-size", "2", "--max-length", "96", "--max-prompt-length", "64",
         "--save-steps", "0", "--output.progress", "false", "--precision", "fp32"]

pytestmark = pytest.mark.skipif(not HH_RLHF.is_file(), reason="the shared HH-RLHF sample is not here")


def test_validate_reports_the_readme_rows(capsys):
    assert main(["data", "validate", str(HH_RLHF)]) == 0
    out = capsys.readouterr().out
    assert "2312 rows, format implicit prompt" in out and "2308 pairs kept" in out
    assert "warning, dropped: 4 rows: empty completion after prompt extraction (lines 87, 517, 926, 1104)" in out
    assert "note, kept: 5 rows: dialogues differ before the last assistant turn " \
           "(lines 1255, 1689, 1951, 1953, 2037)" in out
    assert "validate: ok" in out and "chosen == rejected" not in out


def test_stats(capsys):
    assert main(["data", "stats", str(HH_RLHF), "--model", "tiny", "--max-length", "512"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if re.match(r"(prompt|chosen|rejected) +\d", line)}
    p50, p90, p99, mx = (int(v) for v in rows["prompt"][:4])
    assert 0 < p50 <= p90 <= p99 <= mx  # percentiles in order
    assert int(rows["chosen"][0]) < p50  # HH: the prompt is most of each sequence (README)
    assert "pairs would be dropped" in out and "duplicates: 0 pairs repeat" in out
    assert "chosen == rejected: 0 rows" in out


def test_short_training_run(tmp_path, tiny_dir, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(HH_RLHF), "--model", str(tiny_dir), "--max-samples", "100",
                 "--output", str(out), *SHORT]) == 0
    printed = capsys.readouterr().out
    assert "100 rows" in printed and "99 pairs kept" in printed  # --max-samples reads no further
    assert "empty completion after prompt extraction (line 87)" in printed
    assert (out / "final" / "config.json").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2


def test_prepare_then_train_reads_the_prepared_directory(tmp_path, tiny_dir, capsys, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))  # prepared data, not the cache, must serve it
    prepared = tmp_path / "dpo_hh"
    assert main(["data", "prepare", str(HH_RLHF), "--output_dir", str(prepared), "--model", str(tiny_dir),
                 "--max-length", "96", "--max-prompt-length", "64", "--max-samples", "30",
                 "--eval-fraction", "0.2", "--data.tokenized-cache", "false"]) == 0
    printed = capsys.readouterr().out
    assert "prepared 24 train / 6 eval pairs" in printed
    info = json.loads((prepared / "dpokit_prepared.json").read_text())
    assert info["train_pairs"] == 24 and len(info["tokenized"]) == 2
    assert not (tmp_path / "cache" / "tokenized").exists()
    out = tmp_path / "run"
    assert main(["train", "--data", str(prepared), "--model", str(tiny_dir), "--output", str(out), *SHORT]) == 0
    printed = capsys.readouterr().out
    assert printed.count(f"read from the cache ({prepared}") == 2  # train and eval, nothing re-tokenized
    assert "24 train / 6 eval pairs" in printed
    assert (out / "final" / "config.json").is_file()
