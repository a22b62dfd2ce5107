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


class Terminal:
    """`dpokit data add` in a real terminal: a private tmux server (its socket in the test's folder)."""

    def __init__(self, out, socket) -> None:
        import shlex

        self.socket = str(socket)
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in os.environ.items()
                       if k in ("PATH", "HF_HUB_OFFLINE", "DPOKIT_CACHE")) + \
            f" PYTHONPATH={shlex.quote(os.pathsep.join(sys.path))}"
        command = shlex.join([sys.executable, "-m", "dpokit", "data", "add", "--output", str(out)])
        self.tmux("new-session", "-d", "-s", "add", "-x", "200", "-y", "50",
                  f"env {env} {command}; echo EXIT:$?; sleep 120")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    def type(self, text: str) -> None:
        if text:
            self.tmux("send-keys", "-t", "add", "-l", text)
        self.tmux("send-keys", "-t", "add", "Enter")

    def wait_for(self, text: str, count: int = 1, timeout: float = 120) -> str:
        import time

        end = time.time() + timeout
        while time.time() < end:
            screen = self.tmux("capture-pane", "-p", "-J", "-t", "add", "-S", "-1000")
            if screen.count(text) >= count:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{text!r} x{count} never appeared; the terminal shows:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=30)


def test_data_add_in_a_terminal_reasks_confirms_and_ends_at_done_or_ctrl_c(tmp_path):
    """In a real terminal: the missing folder is created with a word; an empty prompt re-asks only the
    prompt, a rejected answer equal to the chosen one only that answer; each saved pair is confirmed
    with the count; "done" at the chosen question ends without storing it; Ctrl-C says what was saved."""
    import shutil

    if shutil.which("tmux") is None:
        pytest.skip("no tmux on this machine; the terminal session cannot be driven")
    out = tmp_path / "new" / "folder" / "pairs.jsonl"
    session = Terminal(out, tmp_path / "tmux.sock")
    try:
        screen = session.wait_for("Prompt:")
        assert f"created the folder {tmp_path / 'new'} for {out}" in screen
        session.type("")  # an empty prompt: the prompt is asked again, not the answers
        screen = session.wait_for("Prompt:", count=2)
        assert "it is empty" in screen and "Chosen" not in screen
        session.type("What is 2+2?")
        session.wait_for("Chosen (better) response:")
        session.type("4")
        session.wait_for("Rejected (worse) response:")
        session.type("4")  # the same as chosen: only the rejected answer is asked again
        screen = session.wait_for("Rejected (worse) response:", count=2)
        assert "the same as the chosen response" in screen and screen.count("Chosen (better)") == 1
        session.type("5")
        session.wait_for(f"saved: pair 1 (1 pair added to {out} so far)")
        session.wait_for("Prompt:", count=3)
        session.type("Name a colour.")
        session.wait_for("Chosen (better) response:", count=2)
        session.type("done")
        screen = session.wait_for("EXIT:")
        assert f"added 1 pair to {out}" in screen and "EXIT:0" in screen
    finally:
        session.close()
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}]  # "done" was not stored

    session = Terminal(out, tmp_path / "tmux2.sock")
    try:
        session.wait_for("Prompt:")
        for question, text in (("Prompt:", "Name a colour."), ("Chosen (better) response:", "Blue."),
                               ("Rejected (worse) response:", "A dog.")):
            session.wait_for(question)
            session.type(text)
        session.wait_for("saved: pair 1 (1 pair added")
        session.wait_for("Prompt:", count=2)
        session.type("Half a question")
        session.wait_for("Chosen (better) response:", count=2)
        session.tmux("send-keys", "-t", "add", "C-c")
        screen = session.wait_for("EXIT:")
        assert f"interrupted: 1 pair saved to {out}; an unfinished pair was not saved" in screen
        assert "EXIT:130" in screen and "Traceback" not in screen
    finally:
        session.close()
    assert len(out.read_text().splitlines()) == 2


def test_data_add_leaves_no_empty_folder_when_nothing_is_saved(tmp_path, monkeypatch, capsys):
    import io

    out = tmp_path / "a" / "b" / "pairs.jsonl"
    monkeypatch.setattr("sys.stdin", io.StringIO("done\n"))
    assert main(["data", "add", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"created the folder {tmp_path / 'a'}" in printed and "added 0 pairs" in printed
    assert not (tmp_path / "a").exists()
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main(["data", "add", "--output", str(blocked / "pairs.jsonl")]) == 2  # a file where a folder should be
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(blocked) in err and "Traceback" not in err


def test_data_add_skips_input_that_is_not_utf8(tmp_path):
    """Bytes that are not UTF-8 on a pipe (a Latin-1 "é") skip that pair with a message; no traceback."""
    out = tmp_path / "pairs.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-m", "dpokit", "data", "add", "--output", str(out)],
                            input="caf\xe9?\nYes.\nNo.\nTea?\nYes.\nNo.\n".encode("latin-1"), capture_output=True,
                            env=env, timeout=120)
    assert result.returncode == 0 and b"Traceback" not in result.stderr
    assert b"skipped: the input is not UTF-8 text" in result.stderr and b"added 1 pair" in result.stdout
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"prompt": "Tea?", "chosen": "Yes.", "rejected": "No."}]
