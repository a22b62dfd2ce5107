"""Trackers as units: `MetricsLog` (today's behaviour, with sinks), the progress bar's postfix,
``report_to`` names, TensorBoard read back with its own reader, and the clear errors of a tracker
that cannot start (a missing package, W&B not logged in). The W&B offline run of a real training
run is checked in test_watch_run.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dpokit.cli import main
from dpokit.configure import resolve
from dpokit.errors import ConfigError, DpokitError
from dpokit.tracking import MetricsLog, build_tracker, progress_postfix, resolve_report_to


class Recorder:
    """A real sink that keeps what it was given (the interface has three methods)."""

    name = "recorder"

    def __init__(self) -> None:
        self.logged: list[tuple[dict, int]] = []
        self.closed = 0

    def start(self, run) -> None:
        pass

    def log(self, row, step) -> None:
        self.logged.append((row, step))

    def close(self) -> None:
        self.closed += 1


class Bar:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)


def test_metrics_log_writes_jsonl_console_and_sinks(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    sink = Recorder()
    log = MetricsLog(path, sinks=[sink])
    log.log({"step": 3, "loss": 0.25, "rewards/margins": float("nan"), "learning_rate": 1e-4})
    log.print("a note")
    log.progress = Bar()  # the loop sets the bar after setup: lines go through it
    log.log({"step": 4, "loss": 0.125})
    log.close()
    log.close()  # a second close does nothing
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 4] and rows[0]["rewards/margins"] is None and "time" in rows[0]
    assert log.rows == rows
    assert [step for _, step in sink.logged] == [3, 4] and sink.logged[0][0]["rewards/margins"] is None
    assert sink.closed == 1
    out = capsys.readouterr().out.splitlines()
    assert out == ["step     3 | loss 0.2500 | lr 1.0e-04", "a note"]
    assert log.progress.lines == ["step     4 | loss 0.1250"]


def test_disabled_metrics_log_writes_nothing(tmp_path, capsys):
    sink = Recorder()
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=False, sinks=[sink])
    log.log({"step": 1, "loss": 0.5})
    log.print("x")
    log.close()
    assert not (tmp_path / "metrics.jsonl").exists() and sink.logged == [] and capsys.readouterr().out == ""


def test_progress_postfix_from_a_row():
    row = {"step": 5, "loss": 0.51234, "rewards/margins": 0.0349, "tokens_per_second": 23456.0}
    assert progress_postfix(row) == {"tok/s": "23.5k", "loss": "0.5123", "margin": "+0.035"}
    assert progress_postfix({"step": 5, "loss": 1.0, "tokens_per_second": 812.4}) == {"tok/s": "812", "loss": "1.0000"}
    assert progress_postfix({"step": 5, "loss": None}) == {}


def test_report_to_names(monkeypatch):
    assert resolve_report_to([]) == [] and resolve_report_to(None) == [] and resolve_report_to(["none"]) == []
    assert resolve_report_to(["jsonl"]) == []  # always on: nothing to start
    assert resolve_report_to("wandb, tensorboard,wandb") == ["wandb", "tensorboard"]
    assert resolve_report_to(["tensorboard,wandb"]) == ["tensorboard", "wandb"]  # `--report-to tensorboard,wandb`
    assert resolve_report_to(["all"]) == ["tensorboard", "wandb"]
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now fails, as when it is not installed
    assert resolve_report_to(["all"]) == ["tensorboard"]
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'.*\n  fix: did you mean 'tensorboard'"):
        resolve_report_to(["tensorbord"])
    with pytest.raises(ConfigError, match="'none' together with wandb"):
        resolve_report_to(["none", "wandb"])


def test_tensorboard_events_read_back_at_their_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    config, _, _ = resolve(["--demo", "--output", str(tmp_path), "--report-to", "[tensorboard]", "--lr", "3e-4",
                            "--run-name", "tb-unit"])
    log = build_tracker(config, tmp_path, devices=["CPU: test"])
    for step, loss in ((1, 0.69), (2, 0.5), (4, 0.25)):
        log.log({"step": step, "loss": loss, "rewards/margins": step / 10, "note": "text is not a scalar"})
    log.log({"step": 4, "eval_loss": 0.3, "eval_rewards/margins": float("inf")})
    log.close()
    [run_dir] = (tmp_path / "runs").iterdir()
    assert run_dir.name.endswith("_tb-unit")
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss")] == [(1, 0.69), (2, 0.5), (4, 0.25)]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train/rewards/margins")] == [(1, 0.1), (2, 0.2),
                                                                                               (4, 0.4)]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("eval/loss")] == [(4, 0.3)]
    assert "eval/rewards/margins" not in events.Tags()["scalars"]  # not finite: left out, no fake value
    assert "train/note" not in events.Tags()["scalars"]
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.lr"].number_value == pytest.approx(3e-4)
    assert start.hparams["model.name_or_path"].string_value == "tiny"
    assert "config/text_summary" in events.Tags()["tensors"]


def test_only_the_main_process_reports(tmp_path, monkeypatch):
    config, _, _ = resolve(["--demo", "--output", str(tmp_path), "--report-to", "[tensorboard]"])
    log = build_tracker(config, tmp_path, is_main=False)
    log.log({"step": 1, "loss": 0.5})
    log.close()
    assert list(tmp_path.iterdir()) == []  # no metrics.jsonl, no runs/
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match="not installed"):  # every rank checks, so none waits for the others
        build_tracker(config, tmp_path, is_main=False)


def test_missing_tracker_package_stops_before_data_loads(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails, as when not installed
    assert main(["train", "--demo", "--output", str(out), "--steps", "1", "--report-to", "[tensorboard]", "--progress",
                 "false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: report_to tensorboard: the 'tensorboard' package is not installed\n")
    assert "  fix: pip install 'dpokit[tensorboard]'" in err and "Traceback" not in err
    assert not out.exists()  # stopped before the data, the model and the output directory

    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(["sft", "--demo", "--output", str(out), "--steps", "1", "--report-to", "[wandb]"]) == 2
    assert "the 'wandb' package is not installed\n  fix: pip install 'dpokit[wandb]'" in capsys.readouterr().err


def test_wandb_without_login_is_a_clear_error(tmp_path, monkeypatch):
    import wandb

    from dpokit.tracking.sinks import RunInfo
    from dpokit.tracking.wandb_sink import WandbSink

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no stored login
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    wandb.teardown()  # forget settings an earlier run in this process read
    try:
        with pytest.raises(DpokitError) as caught:
            WandbSink().start(RunInfo(tmp_path, "no-login"))
    finally:
        wandb.teardown()
    text = str(caught.value)
    assert text.startswith("report_to wandb: W&B is not logged in")
    assert "\n  fix: set WANDB_API_KEY" in text and "wandb login" in text and "WANDB_MODE=offline" in text
    assert not Path(tmp_path / "logs" / "wandb_run_id").exists()
