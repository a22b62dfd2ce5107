"""A DDP run under two real torchrun processes, stopped at a checkpoint and resumed on two
processes, is the run that never stopped: each rank restores its own random state (LoRA dropout
draws differ per rank) and the data order is the same."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from test_resume import assert_same_run, common, write_pairs


def torchrun(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "dpokit", *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_rank_run_resumed_on_two_ranks_equals_the_straight_run(tmp_path, llama_dir):
    data = write_pairs(tmp_path / "d.jsonl")
    args = ["train", *common(data, llama_dir), "--lora", "true", "--lora-r", "4", "--lora-dropout", "0.2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torchrun([*args, "--output", str(straight)])
    checkpoint = straight / "checkpoint-3"
    assert (checkpoint / "checkpoint_complete.json").is_file()
    assert {p.name for p in checkpoint.glob("rng_state_*.pt")} == {"rng_state_0.pt", "rng_state_1.pt"}
    shutil.copytree(checkpoint, resumed / "checkpoint-3")
    torchrun([*args, "--output", str(resumed), "--resume", "latest"])
    assert_same_run(straight, resumed, 3)
