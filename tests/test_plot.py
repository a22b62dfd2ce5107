"""``dpokit plot`` on runs written by the real writers (`MetricsLog`, `MarginLog`): one still in
progress (a half-written last line, no ``final/``), two overlaid, and directories without
metrics. The plot of a finished training run is in test_watch_run.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dpokit.cli import main
from dpokit.plot import load_run, plot_runs
from dpokit.tracking import MarginLog, MetricsLog


def write_run(path, steps: int, scale: float = 1.0, half_line: bool = True):
    """A run's logs as the loop writes them: train rows every step, an evaluation every 2 steps."""
    path.mkdir(parents=True)
    log, margins = MetricsLog(path / "metrics.jsonl"), MarginLog(path)
    generator = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        pairs = scale * (0.1 * step + 0.2 * torch.randn(16, generator=generator))
        chosen = 0.6 * pairs
        log.log({"step": step, "loss": -math.log(1 / (1 + math.exp(-float(pairs.mean())))),
                 "rewards/chosen": float(chosen.mean()), "rewards/rejected": float((chosen - pairs).mean()),
                 "rewards/margins": float(pairs.mean()), "rewards/accuracies": float((pairs > 0).float().mean()),
                 "learning_rate": 1e-4 * (1 - step / (steps + 1)), "grad_norm": 2.0 / step, "epoch": step / 10})
        margins.log(step, step / 10, pairs)
        if step % 2 == 0:
            log.log({"step": step, "eval_loss": 0.69 - 0.02 * step, "eval_rewards/margins": 0.1 * step,
                     "eval_rewards/accuracies": min(1.0, 0.5 + 0.1 * step)})
    log.close()
    margins.close()
    if half_line:  # the run is writing its next row right now
        with open(path / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": steps + 1, "loss": 0.4123})[:-5])  # a row cut short
        with open(path / "logs" / "margins" / "margins_log.jsonl", "a") as f:
            f.write(json.dumps({"step": steps + 1, "mean": 0.25})[:-3])
    return path


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_plot_of_a_run_in_progress(tmp_path):
    run = write_run(tmp_path / "running", steps=6)
    logs = load_run(run)
    assert [r["step"] for r in logs.train] == [1, 2, 3, 4, 5, 6] and [r["step"] for r in logs.evals] == [2, 4, 6]
    assert len(logs.margins) == 6 and not logs.finished and logs.last_step == 6
    image = pixels(plot_runs([run], tmp_path / "p.png"))
    assert image.shape == (900, 1600, 3)
    assert (image.min(axis=2) < 200).mean() > 0.03  # not a blank page
    margin_panel = image[470:, 1080:]  # lower right: the quantile bands are tinted blue
    assert ((margin_panel[..., 2] - margin_panel[..., 0]) > 25).mean() > 0.01


def test_two_runs_overlay_from_the_command_line(tmp_path, monkeypatch, capsys):
    a = write_run(tmp_path / "a", steps=4)
    b = write_run(tmp_path / "b", steps=6, scale=2.0, half_line=False)
    (b / "final").mkdir()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()  # the writers' console lines
    assert main(["plot", str(a), str(b)]) == 0
    assert capsys.readouterr().out.strip() == "wrote comparison.png"
    image = pixels(tmp_path / "comparison.png")
    assert image.shape == (900, 1600, 3)
    orange = (image[..., 0] > 200) & (image[..., 1] > 100) & (image[..., 1] < 160) & (image[..., 2] < 60)
    assert orange.sum() > 200  # the second run's colour (tab:orange) is drawn
    assert main(["plot", str(a), "--output", str(tmp_path / "x" / "mine.png")]) == 0
    assert pixels(tmp_path / "x" / "mine.png").shape == (900, 1600, 3)


def test_directories_without_metrics_are_clear_errors(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: no metrics.jsonl there\n  fix: pass the output directory")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "lo')  # started, nothing complete yet
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics rows yet\n  fix: wait for the run's first logged step" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "missing: no such directory" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("key", ["q05", "q50"])
def test_margin_rows_without_values_are_left_out(tmp_path, key):
    run = write_run(tmp_path / "r", steps=2, half_line=False)
    with open(run / "logs" / "margins" / "margins_log.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "count": 0, key: None, "q50": None}) + "\n")
    assert pixels(plot_runs([run], tmp_path / "p.png")).shape == (900, 1600, 3)
