"""Faults outside the data path: bad model directories, too long a context, a full disk at the final
save, a read-only output, weights inside the output, a diverged run, out of memory, --debug. Each
ends in an `error:` line and a `fix:` line, the documented exit code, no traceback, and the files
it should keep."""

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

from dpokit.cli import main
from dpokit.data.samples import sample_pairs
from dpokit.errors import ConfigError


def write_pairs(path: Path, n: int = 16, seed: int = 0) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in sample_pairs(n, seed)), encoding="utf-8")
    return path


def error_and_fix(err: str) -> tuple[str, str]:
    """The last two lines of stderr: exactly one `error:` line, then its `fix:` line; no traceback."""
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) >= 2, err
    assert lines[-2].startswith("error: ") and lines[-1].startswith("fix: "), err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    return lines[-2], lines[-1]


def train_args(data: Path, model: str | Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", str(model), "--steps", "2", "--batch-size", "2",
            "--max-length", "64", "--precision", "fp32", "--progress", "false", "--logging-steps", "1",
            "--output", str(out), *extra]


# ---- model directories ------------------------------------------------------------------------


def test_a_cut_short_safetensors_file_is_named_before_any_load(tmp_path, tiny_dir, capsys):
    broken = shutil.copytree(tiny_dir, tmp_path / "broken")
    weights = broken / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)  # the header is whole, the tensors are not
    assert main(["generate", "--model", str(broken), "--prompt", "hi"]) == 2
    error, fix = error_and_fix(capsys.readouterr().err)
    assert f"{weights} is cut short" in error and "copy or save the model again" in fix


def test_missing_tokenizer_files_say_so_in_full(tmp_path, tiny_dir, capsys):
    bare = shutil.copytree(tiny_dir, tmp_path / "bare")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink()
    data = write_pairs(tmp_path / "d.jsonl")
    assert main(train_args(data, bare, tmp_path / "out")) == 2
    error, fix = error_and_fix(capsys.readouterr().err)
    assert f"--model {bare}: the tokenizer files are missing" in error and error.rstrip().endswith(")")
    assert "tokenizer" in fix
    assert not (tmp_path / "out").exists()  # nothing trained: no empty output directory


def test_a_library_error_while_loading_keeps_its_whole_sentence(tmp_path, tiny_dir, capsys):
    odd = shutil.copytree(tiny_dir, tmp_path / "odd")
    (odd / "config.json").write_text('{"model_type": "llama", "hidden_size": ')  # cut short
    assert main(["generate", "--model", str(odd), "--prompt", "hi"]) == 2
    error, fix = error_and_fix(capsys.readouterr().err)
    assert f"--model {odd}: cannot load the model" in error and "config.json" in error
    assert "complete model directory" in fix


@pytest.mark.slow
def test_a_path_like_model_that_does_not_exist_fails_at_once_without_the_hub(tmp_path):
    """`dpo_checkpoints/nope` beside a real dpo_checkpoints/ is a path: no hub retries, even online."""
    (tmp_path / "dpo_checkpoints").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "dpokit", "generate", "--model", "dpo_checkpoints/nope",
                             "--prompt", "hi"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    error, _ = error_and_fix(result.stderr)
    assert "--model dpo_checkpoints/nope does not exist" in error and "huggingface" not in result.stderr
    assert "taken as a path because ./dpo_checkpoints is a directory here" in error
    assert time.monotonic() - start < 30  # the import of torch, not 48 s of retries


# ---- context length, read from the config ---------------------------------------------------


@pytest.fixture(scope="module")
def short_gpt2(tmp_path_factory, tiny_tokenizer) -> Path:
    """A GPT-2 with 128 positions."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2-128")
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=128, vocab_size=len(tiny_tokenizer),
                               bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
                    ).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_max_length_past_the_model_context_fails_before_the_model_loads(tmp_path, short_gpt2, capsys):
    data = write_pairs(tmp_path / "d.jsonl")
    assert main([*train_args(data, short_gpt2, tmp_path / "out")[:-2], "--max-length", "256",
                 "--output", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    error, fix = error_and_fix(captured.err)
    assert "--max-length 256 is past the context" in error and "128 positions" in error
    assert "--max-length 128 or less" in fix
    assert "params" not in captured.out  # the models never loaded


def test_the_default_max_length_is_clamped_with_a_note(short_gpt2, tiny_dir):
    from dpokit.config import DataConfig
    from dpokit.modelcheck import fit_context

    said: list[str] = []
    data = DataConfig()  # max_length 1024, the default
    fit_context(data, str(short_gpt2), False, said.append)
    assert data.max_length == 128 and "using --max-length 128" in said[0]
    tiny = DataConfig(max_length=700)  # any length past the built-in tiny model's 512
    fit_context(tiny, str(tiny_dir), True, said.append)
    assert tiny.max_length == 512 and "built-in tiny model's 512 positions" in said[1]
    with pytest.raises(ConfigError, match="past the context"):
        fit_context(DataConfig(max_length=300), str(short_gpt2), False, said.append)


# ---- saving -----------------------------------------------------------------------------------


def test_a_full_disk_at_the_final_save_keeps_the_earlier_final(tmp_path, tiny_dir, small_disk, capsys):
    data = write_pairs(tmp_path / "d.jsonl")
    probe = tmp_path / "probe"
    assert main(train_args(data, tiny_dir, probe)) == 0
    size = sum(f.stat().st_size for f in (probe / "final").rglob("*") if f.is_file())
    disk = small_disk(int(size * 1.5) + 256 * 1024)  # one final/ and the logs, not a second one beside it
    out = disk / "run"
    assert main(train_args(data, tiny_dir, out)) == 0
    before = (out / "final" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(train_args(data, tiny_dir, out, "--seed", "1")) == 1  # a runtime fault
    error, fix = error_and_fix(capsys.readouterr().err)
    assert f"could not save the final model {out / 'final'}: no space left on device" in error
    assert f"the earlier {out / 'final'} is kept as it was" in error and "free disk space" in fix
    assert (out / "final" / "model.safetensors").read_bytes() == before
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.old"))


def test_a_read_only_output_fails_in_seconds(tmp_path, tiny_dir, small_disk, capsys):
    disk = small_disk(64 * 1024, readonly=True)
    data = write_pairs(tmp_path / "d.jsonl")
    assert main(train_args(data, tiny_dir, disk / "out")) == 2
    error, fix = error_and_fix(capsys.readouterr().err)
    assert f"--output {disk / 'out'}: cannot write there" in error and "another directory" in fix


def test_weights_inside_the_output_are_never_overwritten(tmp_path, tiny_dir, capsys):
    data = write_pairs(tmp_path / "d.jsonl")
    out = tmp_path / "out"
    assert main(train_args(data, tiny_dir, out, "--save-steps", "1")) == 0
    kept = {p: p.read_bytes() for p in (out / "checkpoint-1").iterdir()}
    final = (out / "final" / "model.safetensors").read_bytes()
    for weights in (out / "checkpoint-1", out / "final"):
        capsys.readouterr()
        assert main(train_args(data, "tiny", out, "--weights", str(weights))) == 2
        error, fix = error_and_fix(capsys.readouterr().err)
        assert f"--weights {weights} lies in --output {out}" in error and "new --output" in fix
    assert {p: p.read_bytes() for p in (out / "checkpoint-1").iterdir()} == kept
    assert (out / "final" / "model.safetensors").read_bytes() == final


def test_leftover_tmp_directories_are_cleaned_and_never_listed(tmp_path, tiny_dir, capsys):
    data = write_pairs(tmp_path / "d.jsonl")
    out = tmp_path / "out"
    (out / "checkpoint-3.tmp").mkdir(parents=True)
    (out / "checkpoint-3.tmp" / "model.safetensors").write_bytes(b"half")
    assert main(train_args(data, tiny_dir, out)) == 0
    captured = capsys.readouterr()
    assert f"removed {out / 'checkpoint-3.tmp'}, an unfinished save" in captured.out + captured.err
    assert not (out / "checkpoint-3.tmp").exists() and (out / "final").is_dir()


def test_the_saved_config_records_the_precision_that_ran(tmp_path, tiny_dir):
    from dpokit.models import resolve_device, resolve_precision

    data = write_pairs(tmp_path / "d.jsonl")
    out = tmp_path / "out"
    args = train_args(data, tiny_dir, out)
    args[args.index("--precision") + 1] = "auto"
    assert main(args) == 0
    ran = resolve_precision("auto", resolve_device("cpu"))
    for path in (out / "config.yaml", out / "final" / "dpokit_config.yaml"):
        assert f"precision: {ran}" in path.read_text() and "precision: auto" not in path.read_text()


# ---- divergence -------------------------------------------------------------------------------


def diverging(data: Path, out: Path, *extra: str, steps: int = 6) -> list[str]:
    return ["train", "--data", str(data), "--model", "tiny", "--steps", str(steps), "--batch-size", "4", "--max-length",
            "64", "--lr", "10", "--logging-steps", "1", "--save-steps", "2", "--precision", "fp32", "--progress",
            "false", "--output", str(out), *extra]


def test_a_diverged_run_stops_before_a_broken_final(tmp_path, capsys):
    data = write_pairs(tmp_path / "d.jsonl", n=32)
    out = tmp_path / "out"
    assert main(diverging(data, out)) == 1
    error, fix = error_and_fix(capsys.readouterr().err)
    assert "training diverged" in error and "no final/ is saved" in error
    assert f"The last good checkpoint is {out / 'checkpoint-2'}" in error
    assert f"--weights {out / 'checkpoint-2'}" in fix and "lower --lr" in fix
    assert not (out / "final").exists() and (out / "checkpoint-2" / "checkpoint_complete.json").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] < 6  # stopped on its third out-of-bounds row, not at the end


def test_on_divergence_warn_trains_on(tmp_path, capsys):
    data = write_pairs(tmp_path / "d.jsonl", n=32)
    out = tmp_path / "out"
    assert main(diverging(data, out, "--on-divergence", "warn", steps=5)) == 0
    captured = capsys.readouterr()
    assert "warning: training diverged" in captured.out + captured.err and (out / "final").is_dir()


def test_divergence_bounds_on_rows():
    from dpokit.divergence import Diverged, Divergence

    watch = Divergence(rows=2)
    healthy = {"step": 1, "loss": 0.693, "logps/chosen": -50.0, "tokens/chosen": 50.0}
    watch.observe(healthy, Path("/nonexistent"), print)
    low_logps = {"step": 2, "loss": 0.5, "logps/chosen": -40_000.0, "tokens/chosen": 50.0}
    assert "nats per token" in watch.why(low_logps)
    watch.observe(low_logps, Path("/nonexistent"), print)
    watch.observe({**healthy, "step": 3}, Path("/nonexistent"), print)  # a healthy row resets the count
    watch.observe({"step": 4, "loss": 7.0}, Path("/nonexistent"), print)  # under 10 x max(1, 0.693)
    with pytest.raises(Diverged, match=r"loss 60 > 10 .* at step 6 \(out of bounds at logged steps 5, 6\)"):
        watch.observe({"step": 5, "loss": 50.0}, Path("/nonexistent"), print)
        watch.observe({"step": 6, "loss": 60.0}, Path("/nonexistent"), print)
    assert watch.last_good_step == 4


# ---- the policy at the boundary ---------------------------------------------------------------


def test_out_of_memory_is_a_runtime_fault_with_fixes():
    import torch

    from dpokit.failures import describe

    text, code = describe(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    error, fix = text.splitlines()
    assert code == 1 and error.startswith("error: out of GPU memory (CUDA out of memory")
    assert "--batch-size" in fix and "--gradient-checkpointing" in fix


def test_debug_shows_the_traceback_and_still_ends_with_error_and_fix(tmp_path, capsys, monkeypatch):
    argv = ["generate", "--model", str(tmp_path / "nope"), "--prompt", "hi"]
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-2].startswith("error: ")
    monkeypatch.setenv("DPOKIT_DEBUG", "1")
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("DPOKIT_DEBUG", "0")
    assert main(argv) == 2
    error_and_fix(capsys.readouterr().err)


def test_every_message_gets_a_fix_line(capsys):
    assert main(["data", "sample", "--n", "0"]) == 2
    error, fix = error_and_fix(capsys.readouterr().err)
    assert "--n must be at least 1" in error and "`dpokit data sample --help`" in fix


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(tmp_path, tiny_dir):
    data = write_pairs(tmp_path / "d.jsonl")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    args = train_args(data, tiny_dir, out)
    args[args.index("--steps") + 1] = "400"
    run = subprocess.Popen([sys.executable, "-m", "dpokit", *args], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True, env=env)
    start = time.monotonic()
    while not ((out / "metrics.jsonl").is_file() and '"loss"' in (out / "metrics.jsonl").read_text()):
        assert run.poll() is None and time.monotonic() - start < 120, "the run ended or hung before a step"
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130 and "Traceback" not in err, err[-2000:]
    [found] = out.glob("checkpoint-*")
    assert (found / "checkpoint_complete.json").is_file() and "--resume latest" in err


def test_a_full_cache_names_its_path_and_leaves_no_half_entry(tmp_path, tiny_dir, small_disk, monkeypatch, capsys):
    cache = small_disk(64 * 1024)
    (cache / "filler").write_bytes(b"\0" * (56 * 1024))  # 8k left: less than the tokenized pairs need
    monkeypatch.setenv("DPOKIT_CACHE", str(cache))
    data = write_pairs(tmp_path / "d.jsonl", n=200)
    assert main(train_args(data, tiny_dir, tmp_path / "out")) == 1
    error, fix = error_and_fix(capsys.readouterr().err)
    assert f"cannot write the tokenized cache entry {cache / 'tokenized'}/" in error and "no space left" in error
    assert "DPOKIT_CACHE" in fix and "--tokenized-cache false" in fix
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]
    assert not (tmp_path / "out").exists()  # failed before training: no empty output directory


def test_resuming_from_a_damaged_checkpoint_names_the_file(tmp_path, tiny_dir, capsys):
    data = write_pairs(tmp_path / "d.jsonl")
    out = tmp_path / "out"
    args = train_args(data, tiny_dir, out, "--save-steps", "1")
    args[args.index("--steps") + 1] = "3"
    straight = tmp_path / "straight"
    assert main([*args[:-4], "--output", str(straight), "--save-steps", "1"]) == 0
    shutil.copytree(straight / "checkpoint-2", out / "checkpoint-2")
    weights = out / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    capsys.readouterr()
    assert main([*args, "--resume", "latest"]) == 2
    error, fix = error_and_fix(capsys.readouterr().err)
    assert f"--resume: {weights} is cut short" in error and "another checkpoint" in fix
    assert weights.stat().st_size == 4096  # left for the user to look at


def test_an_unexpected_error_is_a_runtime_fault_pointing_at_debug():
    from dpokit.failures import describe

    text, code = describe(ZeroDivisionError("division by zero"), "train")
    error, fix = (line.strip() for line in text.splitlines())
    assert code == 1 and error == "error: unexpected ZeroDivisionError: division by zero"
    assert fix.startswith("fix: rerun with --debug")


def test_a_non_finite_step_names_the_checkpoint_it_keeps(tmp_path, capsys):
    data = write_pairs(tmp_path / "d.jsonl", n=32)
    out = tmp_path / "out"
    assert main(diverging(data, out, "--on-divergence", "warn", steps=40)) == 1  # warn: on until it breaks
    error, fix = error_and_fix(capsys.readouterr().err)
    assert "the run is stopped before the update" in error and "lower --lr" in fix
    newest = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert f"the last checkpoint, {newest}, is intact" in error and not (out / "final").exists()


def test_tiny_with_the_default_max_length_trains_with_a_note(tmp_path, capsys):
    data = write_pairs(tmp_path / "d.jsonl")
    out = tmp_path / "out"
    assert main(["train", "--data", str(data), "--model", "tiny", "--steps", "1", "--batch-size", "2",
                 "--precision", "fp32", "--progress", "false", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert ("note: --max-length 1024 is past the built-in tiny model's 512 positions; using --max-length 512"
            in captured.out + captured.err)
    assert "max_length: 512" in (out / "config.yaml").read_text()  # what ran


@pytest.mark.parametrize("argv,needle", [(["generate", "--max-new-tokens", "x"], "invalid int value: 'x'"),
                                         (["eval"], "the following arguments are required: --model, --data"),
                                         (["nosuch"], "invalid choice: 'nosuch'")])
def test_usage_errors_end_as_every_error_does(argv, needle, capsys):
    assert main(argv) == 2
    error, fix = error_and_fix(capsys.readouterr().err)
    assert needle in error and "--help` lists its options" in fix


def test_an_empty_safetensors_file_given_as_weights(tmp_path, tiny_dir, capsys):
    start = shutil.copytree(tiny_dir, tmp_path / "start")
    (start / "model.safetensors").write_bytes(b"")
    data = write_pairs(tmp_path / "d.jsonl")
    assert main(train_args(data, "tiny", tmp_path / "out", "--weights", str(start))) == 2
    error, _ = error_and_fix(capsys.readouterr().err)
    assert f"--weights: {start / 'model.safetensors'} is empty (0 bytes)" in error
    assert not (tmp_path / "out").exists()
