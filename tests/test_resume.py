"""Stop, crash, resume: a resumed run is the run that never stopped.

In-process: N steps straight give the same losses and final weights as a run resumed from the
straight run's checkpoint at step K, for DPO, SFT, LoRA (with dropout, so the random state
matters), a precomputed reference, TR-DPO and fp16 loss scaling. Real subprocesses: SIGKILL mid-run
and while a checkpoint is being written, SIGTERM, and a disk that fills, each leaving a loadable
last checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dpokit.cli import main
from dpokit.data.samples import sample_pairs

CASES = {
    "dpo": ["train"],
    "sft": ["sft"],
    "lora": ["train", "--lora", "true", "--lora-r", "4", "--lora-dropout", "0.2"],
    "precomputed": ["train", "--reference", "precomputed"],
    "tr-dpo": ["train", "--ref-refresh-steps", "2", "--ref-refresh-mix", "0.5"],
    "fp16": ["train", "--precision", "fp16"],
}


def write_pairs(path: Path, n: int = 24, seed: int = 0) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in sample_pairs(n, seed)), encoding="utf-8")
    return path


def common(data: Path, model: Path, steps: int = 6, save: int = 3) -> list[str]:
    return ["--data", str(data), "--model", str(model), "--steps", str(steps), "--save-steps", str(save),
            "--batch-size", "2", "--grad-accum", "2", "--lr", "1e-3", "--logging-steps", "1", "--max-length", "96",
            "--precision", "fp32", "--progress", "false", "--device", "cpu", "--eval-fraction", "0.2",
            "--eval-steps", "2"]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(final: Path) -> dict[str, torch.Tensor]:
    found = {}
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        if (final / name).is_file():
            found.update({f"{name}:{k}": v for k, v in load_file(str(final / name)).items()})
    return found


def assert_same_run(straight: Path, resumed: Path, from_step: int) -> None:
    a = {(r["step"], "eval_loss" in r): r for r in rows(straight) if r["step"] > from_step}
    b = {(r["step"], "eval_loss" in r): r for r in rows(resumed) if r["step"] > from_step}
    assert a.keys() == b.keys() and a
    for key, row in a.items():
        for name, value in row.items():
            if name.endswith("loss") or name.startswith(("rewards/", "eval_rewards/", "logps/")) or name == "grad_norm":
                assert b[key][name] == pytest.approx(value, rel=1e-6, abs=1e-7), (key, name)
    wa, wb = weights(straight / "final"), weights(resumed / "final")
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("case", list(CASES))
def test_resumed_run_equals_the_straight_run(tmp_path, llama_dir, case):
    command, *flags = CASES[case]
    data = write_pairs(tmp_path / "d.jsonl")
    args = [*common(data, llama_dir), *flags]  # a later --precision wins
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([command, *args, "--output", str(straight)]) == 0
    assert (straight / "checkpoint-3" / "checkpoint_complete.json").is_file()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    assert main([command, *args, "--output", str(resumed), "--resume", "latest"]) == 0
    assert_same_run(straight, resumed, 3)
    if case == "lora":  # the adapter and optimizer, not the frozen base
        assert not (straight / "checkpoint-3" / "model.safetensors").exists()
        assert (straight / "checkpoint-3" / "adapter_model.safetensors").is_file()
    if case == "tr-dpo":
        assert (straight / "checkpoint-3" / "reference.safetensors").is_file()
    if case == "fp16":
        assert (straight / "checkpoint-3" / "scaler.pt").is_file()


def test_resume_refuses_result_changing_keys_and_allows_harmless_ones(tmp_path, llama_dir, capsys):
    data = write_pairs(tmp_path / "d.jsonl")
    out = tmp_path / "run"
    assert main(["train", *common(data, llama_dir, steps=4, save=2), "--output", str(out)]) == 0
    capsys.readouterr()
    code = main(["train", *common(data, llama_dir, steps=4, save=2), "--output", str(out), "--resume", "latest",
                 "--beta", "0.3", "--batch-size", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "error: --resume" in err and "loss.beta, train.batch_size" in err and "fix:" in err
    # more steps and other logging are fine; the log then holds each step once
    assert main(["train", *common(data, llama_dir, steps=6, save=2), "--output", str(out), "--resume", "latest",
                 "--logging-steps", "2"]) == 0
    steps = [r["step"] for r in rows(out) if "loss" in r]
    assert steps == [1, 2, 4, 6]  # rows past checkpoint-2 (3, 4) were dropped, then logged anew


def test_a_new_run_does_not_mix_with_an_earlier_runs_checkpoints(tmp_path, llama_dir, capsys):
    data = write_pairs(tmp_path / "d.jsonl")
    out = tmp_path / "run"
    assert main(["train", *common(data, llama_dir, steps=4, save=2), "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", *common(data, llama_dir, steps=4, save=2), "--output", str(out)]) == 2
    assert "--resume latest" in capsys.readouterr().err


def test_save_total_limit_keeps_the_newest(tmp_path, llama_dir):
    data = write_pairs(tmp_path / "d.jsonl")
    out = tmp_path / "run"
    assert main(["train", *common(data, llama_dir, steps=6, save=1), "--output", str(out),
                 "--save-total-limit", "2"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]


# ---- real processes ------------------------------------------------------------------------------


def launch(args: list[str], **env: str) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen([sys.executable, "-m", "dpokit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended first: {process.communicate()[1][-2000:]}")
        if time.monotonic() - start > timeout:
            process.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def logged_step(out: Path) -> int:
    try:
        return max((r["step"] for r in rows(out)), default=0)
    except (OSError, json.JSONDecodeError):
        return 0


@pytest.mark.slow
def test_sigkill_mid_run_and_mid_checkpoint_then_resume(tmp_path, llama_dir, one_thread):
    """A kill at any instant costs only the steps since the last complete checkpoint; the resumed
    run ends with the straight run's final metrics, each step logged once. The killed runs are
    processes of one thread (`launch`); the runs in this process take one too (``one_thread``),
    as float sums split over two threads differ in their last digits on some CPUs."""
    data = write_pairs(tmp_path / "d.jsonl")
    args = ["train", *common(data, llama_dir, steps=12, save=4)]
    straight = tmp_path / "straight"
    assert main([*args, "--output", str(straight)]) == 0

    out = tmp_path / "killed"
    run = launch([*args, "--output", str(out)])
    wait_for(lambda: logged_step(out) >= 6 and (out / "checkpoint-4" / "checkpoint_complete.json").is_file(), run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    # Killed again, this time while checkpoint-8 is being written (the writer pauses between files).
    again = launch([*args, "--output", str(out), "--resume", "latest"], DPOKIT_CHECKPOINT_PAUSE="1")
    wait_for(lambda: (out / "checkpoint-8.tmp").is_dir() and any((out / "checkpoint-8.tmp").iterdir()), again)
    again.send_signal(signal.SIGKILL)
    again.wait()
    assert not (out / "checkpoint-8").exists()  # never half a checkpoint under the real name
    assert main([*args, "--output", str(out), "--resume", "latest"]) == 0  # from checkpoint-4
    assert not (out / "checkpoint-8.tmp").exists()
    steps = [r["step"] for r in rows(out) if "loss" in r]
    assert steps == list(range(1, 13))
    assert_same_run(straight, out, 0)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path, llama_dir):
    data = write_pairs(tmp_path / "d.jsonl")
    out = tmp_path / "run"
    run = launch(["train", *common(data, llama_dir, steps=400, save=0), "--output", str(out)])
    wait_for(lambda: logged_step(out) >= 2, run)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err[-2000:]
    found = sorted(out.glob("checkpoint-*"))
    assert len(found) == 1 and (found[0] / "checkpoint_complete.json").is_file()
    step = int(found[0].name.split("-")[1])
    assert f"stopped by SIGTERM after step {step} of 400" in err
    assert "Resume with:" in err and "--resume latest" in err and "Traceback" not in err
    assert not (out / "final").exists()


def test_a_disk_that_fills_keeps_the_last_good_checkpoint(tmp_path, llama_dir, small_disk, capsys):
    data = write_pairs(tmp_path / "d.jsonl")
    args = common(data, llama_dir, steps=6, save=2)
    probe = tmp_path / "probe"
    assert main(["train", *args, "--steps", "2", "--save-steps", "1", "--output", str(probe)]) == 0
    size = sum(f.stat().st_size for f in (probe / "checkpoint-1").rglob("*") if f.is_file())
    disk = small_disk(int(size * 1.6) + 256 * 1024)  # room for one checkpoint and the logs, not two
    out = disk / "run"
    capsys.readouterr()
    code = main(["train", *args, "--output", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "error: could not save the checkpoint" in err and "checkpoint-2, is kept" in err
    assert "fix:" in err and "Traceback" not in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # no half-written save
    shutil.copytree(out / "checkpoint-2", tmp_path / "elsewhere" / "checkpoint-2")
    assert main(["train", *args, "--output", str(tmp_path / "elsewhere"), "--resume", "latest"]) == 0


def test_a_run_that_fails_before_its_first_step_leaves_no_output_directory(tmp_path, capsys):
    data = write_pairs(tmp_path / "d.jsonl")
    out = tmp_path / "new" / "out"
    code = main(["train", *common(data, tmp_path / "no-such-model"), "--output", str(out)])
    assert code == 2 and "error:" in capsys.readouterr().err
    assert not out.exists()


def test_resumed_logs_hold_each_step_once(tmp_path, llama_dir):
    """After a resume, the margin logs and TensorBoard's events hold each step once, like metrics.jsonl."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_pairs(tmp_path / "d.jsonl")
    out = tmp_path / "run"
    args = [*common(data, llama_dir, steps=6, save=3), "--output", str(out), "--report-to", "[tensorboard]"]
    assert main(["train", *args]) == 0
    (out / "final").rename(tmp_path / "first-final")  # as if the run had died after step 6 was logged
    assert main(["train", *args, "--resume", "latest"]) == 0
    margins = [json.loads(line)["step"] for line in (out / "logs" / "margins" / "margins_log.jsonl").open()]
    assert margins == [1, 2, 3, 4, 5, 6]
    [run_dir] = (out / "runs").iterdir()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
