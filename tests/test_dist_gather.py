"""The gathers of `dpokit.dist` and what is built on them (every rank's margins and memory reach
rank 0), in two real gloo processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch


def _worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as td

    from dpokit import dist
    from dpokit.tracking.margins import MarginLog
    from dpokit.tracking.memory import device_names, memory_row

    torch.set_num_threads(1)
    td.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        ragged = dist.all_gather_1d(torch.arange(rank + 2, dtype=torch.float32) + 10 * rank)  # lengths 2 and 3
        objects = dist.all_gather_object({"rank": rank})
        if rank == 1:  # rank 1 holds ~256 MiB more at its peak, so its figure must differ from rank 0's
            ballast = torch.ones(64 * 2**20, dtype=torch.float32)
            ballast.add_(1.0)
        memory = memory_row(torch.device("cpu"))
        names = device_names(torch.device("cpu"))
        margins = MarginLog(Path(tmp) / "out", is_main=rank == 0)
        row = margins.log(3, 0.5, torch.tensor([rank + 0.5] * (rank + 1)))  # rank 0: 1 pair, rank 1: 2 pairs
        margins.close()
        result = {"ragged": ragged.tolist(), "objects": objects, "memory": memory, "names": names, "row": row}
        Path(tmp, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.shutdown()


def test_two_gloo_ranks_gather_to_rank_zero(tmp_path):
    import torch.multiprocessing as mp

    # A parent with a high peak: a rank's own peak must not be read as its parent's (getrusage keeps
    # the peak across the exec that starts a rank).
    ballast = torch.ones(128 * 2**20, dtype=torch.float32)
    ballast.add_(1.0)
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    del ballast
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for result in results:  # both ranks see everyone's, in rank order
        assert result["ragged"] == [0.0, 1.0, 10.0, 11.0, 12.0]
        assert result["objects"] == [{"rank": 0}, {"rank": 1}]
        assert result["names"][0].startswith("CPU: ") and len(result["names"]) == 2
        assert set(result["memory"]) == {"memory/rank0_peak_gb", "memory/rank1_peak_gb"}
    memory = results[0]["memory"]
    assert results[1]["memory"] == memory
    assert memory["memory/rank1_peak_gb"] - memory["memory/rank0_peak_gb"] > 0.2  # each rank's own peak
    row = results[0]["row"]
    assert results[1]["row"] is None and row["count"] == 3
    assert row["mean"] == pytest.approx((0.5 + 1.5 + 1.5) / 3)
    array = np.load(tmp_path / "out" / "logs" / "margins" / "epoch_000" / "step_00003.npy")
    np.testing.assert_array_equal(array, np.float32([0.5, 1.5, 1.5]))  # every rank's pairs, rank order
