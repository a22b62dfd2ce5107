"""One real training run (`dpokit train` on the sample pairs, tiny model) watched the ways a user
watches one: TensorBoard and an offline W&B run beside ``metrics.jsonl``, the margin logs, the
plot, and the model card. The run has an API key in its environment that must end up nowhere."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import wandb

from dpokit.cli import main

SECRET = "sekrit" + "0123456789abcdef" * 2 + "01"  # 40 characters, the shape of a W&B key
BATCH, ACCUM = 4, 2


@pytest.fixture(scope="module")
def run(tmp_path_factory, dpokit_cache):
    """(output dir, stdout + stderr, HOME) of a 4-step run logged at steps 1, 2, 4 and evaluated at 0, 2, 4."""
    root = tmp_path_factory.mktemp("watch")
    out, home = root / "out", root / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_API_KEY", SECRET)
        mp.setenv("HOME", str(home))  # wandb's caches and settings land here, to be searched too
        buffer = io.StringIO()
        with fd_output() as fds, contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            code = main(["train", "--demo", "--output", str(out), "--steps", "4", "--logging-steps", "2", "--batch-size",
                         str(BATCH), "--grad-accum", str(ACCUM), "--eval-fraction", "0.1", "--eval-steps", "2",
                         "--max-length", "128", "--progress", "false", "--report-to", "[tensorboard, wandb]",
                         "--run-name", "watch-test", "--project", "dpokit-tests", "--tags", "[t1, t2]"])
        wandb.teardown()  # the next W&B user in this process reads its settings afresh
    printed = buffer.getvalue() + fds.read().decode(errors="replace")  # Python's prints, child processes' output
    assert code == 0, printed[-3000:]
    return out, printed, home


@contextlib.contextmanager
def fd_output():
    """File descriptors 1 and 2 into a temporary file for the block (what child processes such as
    wandb's service print); the file, rewound, is read after the block."""
    sink = tempfile.TemporaryFile()
    saved = [os.dup(1), os.dup(2)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(sink.fileno(), 1)
    os.dup2(sink.fileno(), 2)
    try:
        yield sink
    finally:
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)
        sink.seek(0)


def metrics(out: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if "eval_loss" in r]


def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file, read with wandb's own protobuf definitions. The file is a
    7-byte W&B header, then LevelDB log records (32 KiB blocks; each chunk a 7-byte header of CRC,
    length, type: 1 full, 2 first, 3 middle, 4 last). wandb 0.31 ships no public reader."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_tensorboard_holds_the_metrics_rows(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = run
    train, evals = metrics(out)
    [run_dir] = (out / "runs").iterdir()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in train] == [1, 2, 4]
    for event, row in zip(events.Scalars("train/rewards/margins"), train):
        assert event.value == pytest.approx(row["rewards/margins"], rel=1e-6, abs=1e-7)
    assert [e.step for e in events.Scalars("eval/loss")] == [r["step"] for r in evals] == [0, 2, 4]  # and at start
    assert "train/memory/rank0_peak_gb" in events.Tags()["scalars"]


def test_wandb_offline_run_holds_config_and_history(run):
    out, _, _ = run
    [wandb_file] = (out / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(wandb_file)
    [start] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert start.display_name == "watch-test" and start.project == "dpokit-tests" and list(start.tags) == ["t1", "t2"]
    config = {item.key: json.loads(item.value_json) for item in start.config.update}
    assert config["loss"]["beta"] == 0.1 and config["train"]["grad_accum"] == ACCUM
    assert config["output"]["report_to"] == ["tensorboard", "wandb"] and config["devices"][0].startswith("CPU")
    logged = {r.history.step.num: {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in r.history.item}
              for r in records if r.WhichOneof("record_type") == "history"}
    train, evals = metrics(out)
    assert sorted(logged) == [0, 1, 2, 4]
    for row in train:  # every numeric metric of the row, under the Trainer's tracker names
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
        assert len(numeric) > 15
        for key, value in numeric.items():
            assert logged[row["step"]][f"train/{key}"] == pytest.approx(value), key
    for row in evals:  # an evaluation at a step joins that step's row
        assert logged[row["step"]]["eval/loss"] == pytest.approx(row["eval_loss"])
    assert (out / "logs" / "wandb_run_id").read_text().strip() == start.run_id


def test_the_api_key_is_in_no_file_and_no_output(run):
    out, printed, home = run
    assert "saved the aligned model" in printed and "wandb sync" in printed  # the capture saw the run
    assert SECRET not in printed
    for root in (out, home):
        for path in root.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path


def test_margin_logs_layout_and_agreement_with_metrics(run):
    out, _, _ = run
    train, _ = metrics(out)
    root = out / "logs" / "margins"
    rows = [json.loads(line) for line in (root / "margins_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 4]
    assert set(rows[0]) == {"step", "epoch", "count", "mean", "std", "min", "q05", "q25", "q50", "q75", "q95", "max",
                            "frac_positive"}
    # Step 1 alone, step 2 alone, steps 3 and 4: the pairs of each logging window.
    assert [r["count"] for r in rows] == [BATCH * ACCUM, BATCH * ACCUM, 2 * BATCH * ACCUM]
    for row, metric in zip(rows, train):
        array = np.load(root / "epoch_000" / f"step_{row['step']:05d}.npy")
        assert array.dtype == np.float32 and array.shape == (row["count"],)
        assert row["mean"] == pytest.approx(metric["rewards/margins"], abs=1e-6)
        assert float(array.mean()) == pytest.approx(metric["rewards/margins"], abs=1e-6)
        assert row["frac_positive"] == pytest.approx(metric["rewards/accuracies"])
        assert row["min"] <= row["q05"] <= row["q25"] <= row["q50"] <= row["q75"] <= row["q95"] <= row["max"]
    assert rows[-1]["std"] > 0  # a trained window: the pairs differ


def test_plot_of_the_finished_run(run, tmp_path, capsys):
    from PIL import Image

    out, _, _ = run
    assert main(["plot", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out / 'plot.png'}"
    image = np.asarray(Image.open(out / "plot.png").convert("RGB"))
    assert image.shape == (900, 1600, 3)
    assert (image.min(axis=2) < 200).mean() > 0.03  # lines, bands, text: not a blank page


def test_model_card_loads_and_names_the_base_model(run, tmp_path):
    from huggingface_hub import ModelCard

    from dpokit.card import write_model_card
    from dpokit.configure import resolve

    out, _, _ = run
    config, _, _ = resolve(["--output", str(out), "--dataset", "hh-rlhf", "--eval-data", "my/eval-pairs"])
    path = write_model_card(out / "final", config, train_pairs=216, eval_pairs=24,
                            reference="frozen copy of the policy")
    card = ModelCard.load(path)
    assert card.data.base_model == "tiny"
    assert card.data.datasets == ["Anthropic/hh-rlhf", "my/eval-pairs"]
    assert card.data.tags == ["dpo", "dpokit"] and card.data.library_name == "transformers"
    train, evals = metrics(out)
    assert f"| loss | {train[-1]['loss']:.4f} | {evals[-1]['eval_loss']:.4f} |" in card.text
    assert "216 for training, 24 for evaluation" in card.text and "`sigmoid`" in card.text
    assert "![Training curves](training_plot.png)" in card.text and (out / "final" / "training_plot.png").is_file()
    assert f'pipeline("text-generation", model="{out / "final"}")' in card.text
    assert "frozen copy of the policy" in card.text and "name_or_path: tiny" in card.text


def test_a_card_of_the_best_checkpoint_reports_its_evaluation(run, tmp_path):
    """With ``load_best_model_at_end`` final/ holds the best evaluation's weights: the card's table
    is of that step (here step 2 of a run evaluated at 0, 2 and 4), not of the last evaluation."""
    from huggingface_hub import ModelCard

    from dpokit.card import write_model_card
    from dpokit.configure import resolve

    out, _, _ = run
    config, _, _ = resolve(["--demo", "--output", str(out), "--load-best-model-at-end", "true"])
    (tmp_path / "final").mkdir()
    path = write_model_card(tmp_path / "final", config, train_pairs=216, eval_pairs=24, run_dir=out,
                            draw_plot=False, best_step=2)
    train, evals = metrics(out)
    [at_two] = [r for r in evals if r["step"] == 2]
    [train_two] = [r for r in train if r["step"] == 2]
    text = ModelCard.load(path).text
    assert "`final/` holds the weights of step 2, the best evaluation by `eval_loss`" in text
    assert f"| loss | {train_two['loss']:.4f} | {at_two['eval_loss']:.4f} |" in text
    assert "From train row of step 2 and eval of step 2" in text
    assert evals[-1]["step"] == 4 and f"| {evals[-1]['eval_loss']:.4f} |" not in text
