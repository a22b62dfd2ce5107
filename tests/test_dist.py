"""Two real torchrun processes with batch 4 take the same steps as one process with batch 8, for
DPO (`dpokit train`) and SFT (`dpokit sft`); rank 0 logs both ranks' memory and margins."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dpokit.cli import main


@pytest.mark.parametrize("command", ["train", "sft"])
def test_torchrun_two_ranks_match_one_process(tmp_path, tiny_dir, command):
    data = tmp_path / "pairs.jsonl"
    assert main(["data", "sample", "--output", str(data), "--n", "32"]) == 0
    common = ["--data", str(data), "--model", str(tiny_dir), "--steps", "3", "--lr", "1e-3", "--precision", "fp32", "--logging-steps", "1",
              "--progress", "false", "--max-length", "128", "--warmup-steps", "0", "--scheduler", "constant"]
    assert main([command, *common, "--batch-size", "8", "--output", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "dpokit", command, *common, "--batch-size", "4", "--output", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("one", "two")}
    assert [r["step"] for r in rows["two"]] == [1, 2, 3]
    for a, b in zip(rows["one"], rows["two"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        if command == "train":
            assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], abs=1e-6)
        assert {"memory/rank0_peak_gb", "memory/rank1_peak_gb"} <= set(b)  # every rank's memory, in one row
    if command == "train":  # the margin arrays of the two ranks hold all 8 pairs of a step, as one process's
        for step in (1, 2, 3):
            one, two = (np.load(tmp_path / name / "logs" / "margins" / "epoch_000" / f"step_{step:05d}.npy")
                        for name in ("one", "two"))
            assert two.shape == (8,)
            np.testing.assert_allclose(np.sort(two), np.sort(one), atol=1e-5)
