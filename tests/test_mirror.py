"""``mirror_dir``: whole copies or none, an older copy replaced safely, the layout users expect."""

from __future__ import annotations

import os

import pytest

from dpokit.errors import DpokitError
from dpokit.mirror import Mirror


def checkpoint(path, text: str):
    (path / "sub").mkdir(parents=True)
    (path / "model.safetensors").write_text(text)
    (path / "sub" / "config.json").write_text("{}")
    return path


def leftovers(root):
    return [p.name for p in root.iterdir() if p.name.startswith(".")]


def test_checkpoints_final_model_and_logs(tmp_path):
    mirror = Mirror(tmp_path / "bucket")
    out = tmp_path / "out"
    copy = mirror.checkpoint(checkpoint(out / "checkpoint-10", "step 10"))
    assert copy == tmp_path / "bucket" / "checkpoint-10"
    assert (copy / "model.safetensors").read_text() == "step 10" and (copy / "sub" / "config.json").is_file()
    assert mirror.final(checkpoint(out / "final", "final")) == tmp_path / "bucket" / "dpo_model"
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "config.yaml").write_text("a: 1\n")
    (out / "logs" / "margins").mkdir(parents=True)
    (out / "logs" / "margins" / "margins_log.jsonl").write_text("{}\n")
    (out / "runs" / "r1").mkdir(parents=True)
    (out / "runs" / "r1" / "events.out.tfevents.1").write_bytes(b"\x00")
    logs = mirror.logs(out)
    assert sorted(str(p.relative_to(logs)) for p in logs.rglob("*") if p.is_file()) == [
        "config.yaml", "logs/margins/margins_log.jsonl", "metrics.jsonl", "runs/r1/events.out.tfevents.1"]
    assert not leftovers(tmp_path / "bucket")
    mirror.remove("checkpoint-10")  # the run's rotation dropped it
    assert sorted(p.name for p in (tmp_path / "bucket").iterdir()) == ["dpo_model", "logs"]


def test_a_newer_copy_replaces_the_older_whole(tmp_path):
    mirror = Mirror(tmp_path / "bucket")
    source = checkpoint(tmp_path / "final", "first")
    (source / "only-in-first").write_text("x")
    mirror.final(source)
    (source / "only-in-first").unlink()
    (source / "model.safetensors").write_text("second")
    copy = mirror.final(source)
    assert (copy / "model.safetensors").read_text() == "second"
    assert not (copy / "only-in-first").exists()  # no mix of the two copies
    assert not leftovers(tmp_path / "bucket")


def test_a_failed_copy_leaves_the_older_copy_and_no_half_copy(tmp_path):
    mirror = Mirror(tmp_path / "bucket")
    source = checkpoint(tmp_path / "final", "good")
    mirror.final(source)
    (source / "model.safetensors").write_text("newer")
    os.symlink(tmp_path / "nowhere", source / "broken-link")  # copying it fails midway
    with pytest.raises(DpokitError, match="mirror_dir: copying .* failed .*\n  fix: check the mirror's free space"):
        mirror.final(source)
    assert (tmp_path / "bucket" / "dpo_model" / "model.safetensors").read_text() == "good"
    assert not leftovers(tmp_path / "bucket")


def test_a_mirror_that_cannot_be_written_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DpokitError, match=r"mirror_dir .*file/bucket: cannot write there .*\n  fix: mount the bucket"):
        Mirror(tmp_path / "file" / "bucket")
