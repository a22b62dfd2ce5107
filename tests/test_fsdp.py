"""FSDP2 with 2 real torchrun processes (gloo, CPU): the loss curve of 1 process x 2B, for the copy,
LoRA and precomputed references and with gradient accumulation; sharded checkpoints that resume on
2 processes and on 1; a consolidated final model that loads with ``from_pretrained``.

One module-scoped set of runs serves every assert: each torchrun costs ~20 s here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpokit.cli import main

pytestmark = pytest.mark.slow

STEPS = 10
REFERENCES = {"copy": [], "lora": ["--lora", "true"], "precomputed": ["--reference", "precomputed"]}


def common(data: Path, model: Path) -> list[str]:
    return ["--data", str(data), "--model", str(model), "--steps", str(STEPS), "--lr", "1e-3", "--precision", "fp32",
            "--logging-steps", "1", "--progress", "false", "--max-length", "128", "--warmup-steps", "0",
            "--scheduler", "constant", "--save-steps", "5"]


def torchrun(args: list[str], cache: Path, timeout: int = 300, command: str = "train") -> subprocess.CompletedProcess:
    """``dpokit COMMAND ARGS`` on 2 processes, with its own cache (precomputed log-probs made afresh)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "DPOKIT_CACHE": str(cache)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "dpokit", command, *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dir) -> Path:
    """``one-R`` (1 x 8), ``ddp-R`` and ``fsdp-R`` (2 x 4) for each reference R, ``accum``
    (FSDP2, 2 x 2 x accumulation 2) and SFT's ``one-sft`` and ``fsdp-sft``."""
    root = tmp_path_factory.mktemp("fsdp")
    data = root / "pairs.jsonl"
    assert main(["data", "sample", "--output", str(data), "--n", "32"]) == 0
    args = common(data, tiny_dir)
    for ref, extra in REFERENCES.items():
        assert main(["train", *args, *extra, "--batch-size", "8", "--output", str(root / f"one-{ref}")]) == 0
        for mode in ("ddp", "fsdp"):
            torchrun([*args, *extra, "--batch-size", "4", "--parallelism", mode, "--output", str(root / f"{mode}-{ref}")],
                     root / f"cache-{mode}-{ref}")
    # 9 evaluation pairs in batches of 2: rank 0 takes 3 batches, rank 1 two (and joins the third's gathers).
    evals = root / "eval.jsonl"
    evals.write_text("".join(data.read_text().splitlines(keepends=True)[:9]))
    result = torchrun([*args, "--batch-size", "2", "--grad-accum", "2", "--fsdp", "true", "--eval-data", str(evals),
                       "--eval-steps", "5", "--output", str(root / "accum")], root / "cache-accum")
    (root / "accum.log").write_text(result.stdout + result.stderr)
    sft = [*args[:-2], "--save-steps", "0"]  # SFT on the pairs' chosen answers
    assert main(["sft", *sft, "--batch-size", "8", "--output", str(root / "one-sft")]) == 0
    torchrun([*sft, "--batch-size", "4", "--fsdp", "true", "--output", str(root / "fsdp-sft")], root / "cache-sft",
             command="sft")
    return root


def assert_same_curve(one: list[dict], two: list[dict]) -> None:
    assert [r["step"] for r in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (a["step"], a["loss"], b["loss"])
        assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], rel=1e-4, abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


@pytest.mark.parametrize("ref", list(REFERENCES))
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(runs, mode, ref):
    assert_same_curve(rows(runs / f"one-{ref}"), rows(runs / f"{mode}-{ref}"))


def test_fsdp_sft_matches_one_process(runs):
    for a, b in zip(rows(runs / "one-sft"), rows(runs / "fsdp-sft"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)


def test_fsdp_with_accumulation_matches(runs):
    train = [r for r in rows(runs / "accum") if "eval_loss" not in r]
    assert_same_curve(rows(runs / "one-copy"), train)
    evals = [r for r in rows(runs / "accum") if "eval_loss" in r]
    assert sorted({r["step"] for r in evals}) == [5, 10]  # uneven shares of the evaluation pairs: no hang
    log = (runs / "accum.log").read_text()
    assert "FSDP2: 4 decoder layers sharded over 2 ranks" in log
    assert log.count("saved the aligned model") == 1  # rank 0 alone reports


def test_precomputed_logps_scored_in_parallel_match(runs, dpokit_cache):
    """Each rank scored its share of the pairs; the gathered cache holds one process's values."""
    from safetensors.torch import load_file

    one = sorted((dpokit_cache / "reference").glob("*.safetensors"))
    two = sorted((runs / "cache-fsdp-precomputed" / "reference").glob("*.safetensors"))
    assert len(two) == 1
    values = load_file(str(two[0]))["logps"]
    match = [p for p in one if p.name == two[0].name]  # the same key: same pairs, weights and settings
    assert match, "the 2-process cache key differs from the 1-process one"
    torch.testing.assert_close(values, load_file(str(match[0]))["logps"], rtol=1e-5, atol=1e-5)


def test_sharded_checkpoint_is_dcp(runs):
    ckpt = runs / "fsdp-copy" / "checkpoint-5"
    assert (ckpt / "checkpoint_complete.json").is_file()
    assert len(list((ckpt / "dcp").glob("*.distcp"))) == 2  # each rank its shards
    assert not (ckpt / "model.safetensors").exists() and not (ckpt / "optimizer.pt").exists()
    assert {"rng_state_0.pt", "rng_state_1.pt"} <= {p.name for p in ckpt.iterdir()}


def final_logps(path: Path, tokenizer_dir: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok(["The capital of France is Paris.", "Water boils at one hundred degrees."], return_tensors="pt",
              padding=True)
    with torch.no_grad():
        logits = model(**ids).logits[:, :-1]  # (B, T-1, V)
    logps = torch.log_softmax(logits, -1).gather(-1, ids["input_ids"][:, 1:, None])[..., 0]  # (B, T-1)
    return (logps * ids["attention_mask"][:, 1:]).sum(-1)  # (B,)


@pytest.mark.parametrize("ref", ["copy", "lora"])
def test_consolidated_final_loads_in_one_process(runs, tiny_dir, ref):
    """``final/`` of the sharded run is one Hugging Face directory with the weights one process trains."""
    final = runs / f"fsdp-{ref}" / "final"
    assert (final / "model.safetensors").is_file()
    if ref == "lora":
        assert (final / "adapter" / "adapter_model.safetensors").is_file()
    torch.testing.assert_close(final_logps(final, tiny_dir), final_logps(runs / f"one-{ref}" / "final", tiny_dir),
                               rtol=1e-4, atol=1e-4)
    assert not torch.allclose(final_logps(final, tiny_dir), final_logps(tiny_dir, tiny_dir), atol=1e-3)  # it trained


@pytest.mark.parametrize("ranks", [2, 1])
def test_sharded_checkpoint_resumes_on_two_and_one(runs, tiny_dir, tmp_path, ranks):
    """A run stopped after step 5 (its checkpoint and log as a killed run leaves them) resumes on 2
    processes, or on 1 with the same 8 pairs a step, and ends where the straight run ends."""
    straight = runs / "fsdp-copy"
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(straight / "checkpoint-5", out / "checkpoint-5")
    lines = (straight / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(lines[:7]) + "\n")  # rows past step 5 are dropped on resume
    args = [*common(runs / "pairs.jsonl", tiny_dir), "--parallelism", "fsdp", "--output", str(out), "--resume", "latest"]
    if ranks == 2:
        torchrun([*args, "--batch-size", "4"], tmp_path / "cache")
    else:
        assert main(["train", *args, "--batch-size", "8"]) == 0
    assert [r["step"] for r in rows(out)] == list(range(1, STEPS + 1))
    for a, b in zip(rows(straight), rows(out)):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
    torch.testing.assert_close(final_logps(out / "final", tiny_dir), final_logps(straight / "final", tiny_dir),
                               rtol=1e-5, atol=1e-5)


def test_sigterm_mid_run_then_resume_finishes_as_straight(runs, tiny_dir, tmp_path):
    """SIGTERM (what SLURM sends) to a 2-process FSDP2 run while it writes checkpoint-5: the ranks
    stop together at the next step boundary with a checkpoint, and the resumed run ends as the
    straight one."""
    import signal
    import time

    out = tmp_path / "killed"
    args = [*common(runs / "pairs.jsonl", tiny_dir), "--batch-size", "4", "--parallelism", "fsdp", "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
           "DPOKIT_CACHE": str(tmp_path / "cache"), "DPOKIT_CHECKPOINT_PAUSE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "dpokit", "train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-5.tmp").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0, stdout[-2000:]
    assert "SIGTERM: stopping at the end of this step with a checkpoint" in stdout
    found = sorted(p.name for p in out.glob("checkpoint-*") if (p / "checkpoint_complete.json").is_file())
    assert found and found[-1] in ("checkpoint-5", "checkpoint-6"), (found, stderr[-2000:])
    torchrun([*args, "--resume", "latest"], tmp_path / "cache")
    assert [r["step"] for r in rows(out)] == list(range(1, STEPS + 1))
    for a, b in zip(rows(runs / "fsdp-copy"), rows(out)):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
