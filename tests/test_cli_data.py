"""`dpokit data sample` and `dpokit data add` (the latter through a real pipe)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dpokit.cli import main
from dpokit.data.jsonl import read_preference_jsonl
from dpokit.data.samples import sample_pairs


def test_data_sample_writes_valid_pairs(tmp_path, capsys):
    out = tmp_path / "preference_data.jsonl"
    assert main(["data", "sample", "--output", str(out)]) == 0
    assert len(read_preference_jsonl(out)) == 10
    assert main(["data", "sample", "--output", str(out), "--n", "50"]) == 0
    assert len(read_preference_jsonl(out)) == 50


@pytest.mark.parametrize("n", ["0", "-3"])
def test_data_sample_needs_at_least_one_pair(n, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["data", "sample", "--output", str(out), "--n", n]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --n must be at least 1 (got {n})") and not out.exists()


def test_samples_vary_and_held_out_rows_are_new():
    rows = sample_pairs(240, seed=0)
    prompts = {r["prompt"] for r in rows}
    assert len(prompts) > 150  # topics and wordings vary
    assert len({r["prompt"].split()[0] for r in rows}) >= 5  # many prompt openings
    assert sample_pairs(20, seed=3) == sample_pairs(20, seed=3)
    assert sample_pairs(20, seed=3) != sample_pairs(20, seed=4)
    train, held = rows[:192], rows[192:]
    seen = {r["chosen"] for r in train}
    assert sum(r["chosen"] not in seen for r in held) >= 0.9 * len(held)  # new answers, not copies
    assert not any(" is " in r["chosen"].split(".")[0] for r in rows if r["chosen"].startswith("Bees"))


def test_data_add_reads_a_pipe(tmp_path):
    """Runs `python -m dpokit data add` as a real process with its input on a pipe."""
    out = tmp_path / "my_prefs.jsonl"
    typed = "\n".join([
        "What is 2+2?", "2+2 is 4.", "5",
        "Same?", "yes", "yes",  # chosen == rejected: skipped with a message
        "Name a colour.", "Blue is a colour.", "no",
        "done", "ignored after done",
    ]) + "\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-m", "dpokit", "data", "add", "--output", str(out)],
                            input=typed, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {"prompt": "What is 2+2?", "chosen": "2+2 is 4.", "rejected": "5"},
        {"prompt": "Name a colour.", "chosen": "Blue is a colour.", "rejected": "no"},
    ]
    assert "added 2 pairs" in result.stdout and "skipped" in result.stderr


def test_data_add_appends_and_stops_at_end_of_input(tmp_path, monkeypatch, capsys):
    import io

    out = tmp_path / "p.jsonl"
    monkeypatch.setattr("sys.stdin", io.StringIO("a\nb\nc\n"))
    assert main(["data", "add", "--output", str(out)]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("d\ne\nf\n"))
    assert main(["data", "add", "--output", str(out)]) == 0
    assert len(read_preference_jsonl(out)) == 2
