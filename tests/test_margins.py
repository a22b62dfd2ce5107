"""Margin logs as a unit: the summary's hand-worked values and the files' layout."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dpokit.tracking.margins import MarginLog, epoch_index, margin_summary


def test_summary_hand_worked():
    s = margin_summary(np.array([3.0, -1.0, 0.0, 2.0, 1.0]))
    # sorted -1 0 1 2 3: quantile q sits at position q/100 * 4, linearly between neighbours
    assert s == pytest.approx({"count": 5, "mean": 1.0, "std": math.sqrt(2.0), "min": -1.0, "q05": -0.8,
                               "q25": 0.0, "q50": 1.0, "q75": 2.0, "q95": 2.8, "max": 3.0, "frac_positive": 0.6})


def test_summary_leaves_out_non_finite_values_and_handles_none_left():
    s = margin_summary(np.array([1.0, float("nan"), 3.0, float("inf")]))
    assert s["count"] == 2 and s["mean"] == 2.0 and s["max"] == 3.0
    empty = margin_summary(np.array([float("nan")]))
    assert empty["count"] == 0 and empty["mean"] is None and empty["q50"] is None


@pytest.mark.parametrize(("epoch", "index"), [(0.0, 0), (0.5, 0), (1.0, 0), (1.25, 1), (2.0, 1), (2.0001, 2)])
def test_epoch_of_a_step(epoch, index):
    assert epoch_index(epoch) == index


def test_layout_rows_and_arrays(tmp_path):
    log = MarginLog(tmp_path)
    first = log.log(1, 0.25, torch.tensor([0.5, -0.25, 1.0]))
    log.log(10, 1.5, torch.tensor([2.0, 4.0]))
    log.close()
    root = tmp_path / "logs" / "margins"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "epoch_000/step_00001.npy", "epoch_001/step_00010.npy", "margins_log.jsonl"]
    np.testing.assert_array_equal(np.load(root / "epoch_000" / "step_00001.npy"), np.float32([0.5, -0.25, 1.0]))
    rows = [json.loads(line) for line in (root / "margins_log.jsonl").read_text().splitlines()]
    assert rows[0] == first and rows[0]["step"] == 1 and rows[0]["epoch"] == 0.25
    assert rows[0]["mean"] == pytest.approx(0.4166666667) and rows[0]["frac_positive"] == pytest.approx(2 / 3)
    assert rows[1]["step"] == 10 and rows[1]["count"] == 2 and rows[1]["mean"] == 3.0


def test_arrays_off_and_append(tmp_path):
    log = MarginLog(tmp_path, save_arrays=False)
    log.log(1, 0.1, torch.tensor([1.0]))
    log.close()
    log = MarginLog(tmp_path, save_arrays=False, append=True)  # a resumed run keeps the earlier rows
    log.log(2, 0.2, torch.tensor([2.0]))
    log.close()
    root = tmp_path / "logs" / "margins"
    assert not list(root.rglob("*.npy"))
    assert [json.loads(line)["step"] for line in (root / "margins_log.jsonl").read_text().splitlines()] == [1, 2]
    MarginLog(tmp_path).close()  # a fresh run starts the file again
    assert (root / "margins_log.jsonl").read_text() == ""


def test_not_main_writes_nothing(tmp_path):
    log = MarginLog(tmp_path, is_main=False)
    assert log.log(1, 0.1, torch.tensor([1.0])) is None
    log.close()
    assert not (tmp_path / "logs").exists()
