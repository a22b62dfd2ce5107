"""Ctrl-C on a real `dpokit train` process: the first saves a checkpoint at the next step boundary
and prints the resume command (exit 130); a second, while that save is still being written (held
between files by the fault-injection variable), exits at once and leaves no half checkpoint."""

from __future__ import annotations

import signal
import time

import pytest
from test_resume import common, launch, logged_step, main, rows, wait_for, write_pairs


@pytest.mark.slow
def test_ctrl_c_saves_and_says_how_to_resume_and_a_second_quits_at_once(tmp_path, llama_dir):
    data = write_pairs(tmp_path / "d.jsonl")
    args = ["train", *common(data, llama_dir, steps=400, save=0)]

    out = tmp_path / "run"
    run = launch([*args, "--output", str(out)])
    wait_for(lambda: logged_step(out) >= 2, run)
    run.send_signal(signal.SIGINT)
    printed, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    [saved] = out.glob("checkpoint-*")
    assert (saved / "checkpoint_complete.json").is_file()
    step = int(saved.name.split("-")[1])
    assert "SIGINT: stopping at the end of this step with a checkpoint (Ctrl-C again to quit at once)" in printed
    assert f"stopped by SIGINT after step {step} of 400" in err
    assert "Resume with:" in err and "--resume latest" in err and "Traceback" not in err
    assert max(r["step"] for r in rows(out)) == step

    held = tmp_path / "held"
    again = launch([*args, "--output", str(held)], DPOKIT_CHECKPOINT_PAUSE="30")
    wait_for(lambda: logged_step(held) >= 2, again)
    again.send_signal(signal.SIGINT)
    wait_for(lambda: any(p.is_dir() for p in held.glob("checkpoint-*.tmp")), again)
    start = time.monotonic()
    again.send_signal(signal.SIGINT)
    _, err = again.communicate(timeout=60)
    assert time.monotonic() - start < 20  # not after the held save's 30 s pauses
    assert again.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert not [p for p in held.glob("checkpoint-*") if not p.name.endswith(".tmp")]  # no half save by its name
    # The held save never became a checkpoint: `--resume latest` finds none.
    assert main([*args, "--steps", "2", "--output", str(held), "--resume", "latest"]) == 2
