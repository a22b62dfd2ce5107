"""`--resume PATH` and what `--resume` refuses; a QLoRA run resumed equals the straight run.

`test_resume.py` resumes with `--resume latest` in the run's own output; here a checkpoint is named
by its path and resumed into another output, a checkpoint without its completion marker (a save
that never finished) is refused, and so is `--resume latest` where no checkpoint is.
"""

from __future__ import annotations

import shutil

import pytest
from test_resume import assert_same_run, common, rows, write_pairs

from dpokit.cli import main


def test_resume_from_a_checkpoint_path_into_another_output(tmp_path, llama_dir):
    data = write_pairs(tmp_path / "d.jsonl")
    args = common(data, llama_dir, steps=4, save=2)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", *args, "--output", str(straight)]) == 0
    assert main(["train", *args, "--output", str(resumed), "--resume", str(straight / "checkpoint-2")]) == 0
    assert [r["step"] for r in rows(resumed) if "loss" in r] == [3, 4]
    assert_same_run(straight, resumed, 2)


def test_resume_refuses_an_unfinished_checkpoint_and_a_missing_one(tmp_path, llama_dir, capsys):
    data = write_pairs(tmp_path / "d.jsonl")
    args = common(data, llama_dir, steps=2, save=1)
    out = tmp_path / "run"
    assert main(["train", *args, "--output", str(out)]) == 0
    unfinished = tmp_path / "unfinished" / "checkpoint-1"
    shutil.copytree(out / "checkpoint-1", unfinished)
    (unfinished / "checkpoint_complete.json").unlink()  # as a save killed before its marker
    capsys.readouterr()
    for resume, expected in ((str(unfinished), "not a complete checkpoint"),
                             (str(tmp_path / "nowhere"), "no such directory"),
                             ("latest", "no complete checkpoint in")):
        code = main(["train", *args, "--output", str(tmp_path / "empty"), "--resume", resume])
        err = capsys.readouterr().err
        assert code == 2, err[-2000:]
        assert f"error: --resume {resume}" in err and expected in err and "fix:" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "empty" / "final").exists()


def test_qlora_resumed_run_equals_the_straight_run(tmp_path, llama_dir):
    """QLoRA: the checkpoint holds the adapter and its optimizer, not the 4-bit base."""
    pytest.importorskip("bitsandbytes")
    data = write_pairs(tmp_path / "d.jsonl")
    args = [*common(data, llama_dir), "--load-in-4bit", "true", "--lora-r", "4", "--lora-dropout", "0.2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", *args, "--output", str(straight)]) == 0
    saved = straight / "checkpoint-3"
    assert (saved / "adapter_model.safetensors").is_file() and not (saved / "model.safetensors").exists()
    shutil.copytree(saved, resumed / "checkpoint-3")
    assert main(["train", *args, "--output", str(resumed), "--resume", "latest"]) == 0
    assert_same_run(straight, resumed, 3)


@pytest.mark.parametrize("strategy", ["model", "none"])
def test_resumed_run_equals_the_straight_run_with_the_other_references(tmp_path, llama_dir, gpt2_dir, strategy,
                                                                      capsys):
    """A separate reference model (`--ref-model`) and no reference (SimPO): neither changes during
    the run, so the checkpoint holds nothing of it and the resumed run still equals the straight one."""
    data = write_pairs(tmp_path / "d.jsonl")
    flags = ["--ref-model", str(gpt2_dir)] if strategy == "model" else ["--loss-type", "simpo"]
    args = [*common(data, llama_dir), *flags]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", *args, "--output", str(straight)]) == 0
    assert not (straight / "checkpoint-3" / "reference.safetensors").exists()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    assert main(["train", *args, "--output", str(resumed), "--resume", "latest"]) == 0
    banner = [line for line in capsys.readouterr().out.splitlines() if "resuming" in line]
    assert len(banner) == 1 and ("separate model" if strategy == "model" else "loss simpo") in banner[0], banner
    assert_same_run(straight, resumed, 3)


def test_resume_refuses_data_that_changed_under_the_same_config(tmp_path, llama_dir, capsys):
    """Rows appended to the data file (as `data label` does between rounds) would shift every later
    batch: the resume is refused before any model loads; the unchanged data resumes."""
    data = write_pairs(tmp_path / "d.jsonl", n=24)
    out = tmp_path / "run"
    assert main(["train", *common(data, llama_dir, steps=3, save=2), "--output", str(out)]) == 0
    original = data.read_text(encoding="utf-8")
    with data.open("a", encoding="utf-8") as f:
        f.write(write_pairs(tmp_path / "more.jsonl", n=16, seed=5).read_text(encoding="utf-8"))
    capsys.readouterr()
    assert main(["train", *common(data, llama_dir, steps=4, save=2), "--output", str(out), "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert "the training data differs from the data the run started with" in err and "fix:" in err
    assert "Traceback" not in err and not (out / "checkpoint-4").exists()
    data.write_text(original, encoding="utf-8")
    assert main(["train", *common(data, llama_dir, steps=4, save=2), "--output", str(out), "--resume", "latest"]) == 0
