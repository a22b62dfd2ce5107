"""A rank killed mid-run ends the whole torchrun run at once (no rank left waiting in a collective),
with a failure exit code, and the last complete checkpoint stays loadable for `--resume latest`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpokit.cli import main


def logged_steps(out: Path) -> int:
    try:
        return sum(1 for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line)
    except OSError:
        return 0


@pytest.mark.slow
def test_a_killed_rank_stops_every_rank_and_keeps_the_last_checkpoint(tmp_path, tiny_dir):
    data = tmp_path / "pairs.jsonl"
    assert main(["data", "sample", "--output", str(data), "--n", "32"]) == 0
    out = tmp_path / "run"
    args = ["--data", str(data), "--model", str(tiny_dir), "--steps", "400", "--save-steps", "2", "--lr", "1e-4",
            "--precision", "fp32", "--logging-steps", "1", "--progress", "false", "--max-length", "96",
            "--batch-size", "2", "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "dpokit", "train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env, start_new_session=True)
    try:
        start = time.monotonic()
        while not (logged_steps(out) >= 3 and (out / "checkpoint-2" / "checkpoint_complete.json").is_file()):
            assert run.poll() is None, run.communicate()[1][-2000:]
            assert time.monotonic() - start < 240, "the run did not reach step 3"
            time.sleep(0.1)
        ranks = subprocess.run(["pgrep", "-f", "-P", str(run.pid), "dpokit train"], capture_output=True, text=True)
        pids = [int(p) for p in ranks.stdout.split()]
        assert len(pids) == 2, ranks.stdout
        os.kill(pids[-1], signal.SIGKILL)
        killed = time.monotonic()
        _, err = run.communicate(timeout=120)  # a rank waiting forever in a collective would time out here
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode != 0 and time.monotonic() - killed < 90
    assert "SIGKILL" in err  # torchrun names the rank that died first
    assert not (out / "final").exists()  # no final model from a run that did not finish
    saved = sorted(p for p in out.glob("checkpoint-*") if (p / "checkpoint_complete.json").is_file())
    assert saved and json.loads((saved[-1] / "trainer_state.json").read_text())["counters"]["step"] >= 2
    # the last complete checkpoint resumes, here on one process with the same pairs per step
    step = int(saved[-1].name.split("-")[1])
    again = [a for a in args]
    again[again.index("--steps") + 1], again[again.index("--batch-size") + 1] = str(step + 1), "4"
    assert main(["train", *again, "--resume", "latest"]) == 0
    assert (out / "final" / "model.safetensors").is_file()
