"""Every `dpokit` subcommand, given a missing, an empty and a corrupt model directory (a run directory
for `plot`), and an output it cannot write, ends in one `error:` line and a `fix:` line with exit
code 2 and no traceback, before any model loads. The list of subcommands is read from the parser, so
a new subcommand without a case here fails the test."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpokit.cli import build_parser, main
from dpokit.data.samples import sample_pairs


def subcommands() -> set[str]:
    """`dpokit --help`'s subcommands, and those of `dpokit data`."""
    names: set[str] = set()
    for action in build_parser()._actions:  # argparse has no public list of subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, parser in action.choices.items():
                nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
                names |= {f"{name} {sub}" for a in nested for sub in a.choices} if nested else {name}
    return names


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sample_pairs(8, seed=0)), encoding="utf-8")
    (root / "prompts.txt").write_text("Say hello.\n", encoding="utf-8")
    (root / "empty").mkdir()
    corrupt = shutil.copytree(tiny_dir, root / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    (corrupt / "metrics.jsonl").write_text('{"step": 1, "loss": [oops\n', encoding="utf-8")  # for `plot`
    (root / "a_file").write_text("not a directory")
    return {"root": root, "data": data, "prompts": root / "prompts.txt", "tiny": tiny_dir,
            "missing": root / "no-such-model", "empty": root / "empty", "corrupt": corrupt,
            "a_file": root / "a_file", "unwritable": root / "a_file" / "out"}  # under a file: no user, root included, can write there


def argv_for(command: str, model: Path, out: Path, w: dict[str, Path]) -> list[str] | None:
    """The command line of ``command`` with ``model`` and outputs under ``out``; None: not applicable."""
    d, p, m = str(w["data"]), str(w["prompts"]), str(model)
    short = ["--steps", "1", "--max-length", "64", "--progress", "false"]
    return {
        "train": ["train", "--data", d, "--model", m, *short, "--output", str(out / "train")],
        "sft": ["sft", "--data", d, "--model", m, *short, "--output", str(out / "sft")],
        "generate": ["generate", "--model", m, "--prompt", "hi", "--max-new-tokens", "2"],
        "eval": ["eval", "--model", m, "--data", d, "--ref", "none", "--output", str(out / "eval.json")],
        "compare": ["compare", "--model", m, "--ref", m, "--prompts", p, "--max-new-tokens", "2",
                    "--output", str(out / "compare.json")],
        "plot": ["plot", m, "--output", str(out / "plot.png")],
        "data label": ["data", "label", "--model", m, "--prompts", p, "--max-new-tokens", "2",
                       "--output", str(out / "labelled.jsonl")],
        "data prepare": ["data", "prepare", d, "--model", m, "--output-dir", str(out / "prepared")],
        "data stats": ["data", "stats", d, "--model", m],
        "data validate": ["data", "validate", d, "--model", m],
        "data sample": ["data", "sample", "--output", str(out / "sample.jsonl")],
        "data add": ["data", "add", "--output", str(out / "added.jsonl")],
    }[command]


TAKES_A_MODEL = {"train", "sft", "generate", "eval", "compare", "plot", "data label", "data prepare", "data stats",
                 "data validate"}
WRITES = {"train", "sft", "eval", "compare", "plot", "data label", "data prepare", "data sample", "data add"}
CASES = [(c, fault) for c in sorted(TAKES_A_MODEL) for fault in ("missing", "empty", "corrupt")] + \
        [(c, "unwritable") for c in sorted(WRITES)]


def test_every_subcommand_has_cases():
    assert subcommands() == TAKES_A_MODEL | WRITES | {"generate"}, "a new subcommand needs its cases here"


@pytest.mark.parametrize("command,fault", CASES, ids=[f"{c.replace(' ', '-')}-{f}" for c, f in CASES])
def test_no_traceback(command, fault, world, tmp_path, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("a\nb\nc\ndone\n"))  # `data add` reads pairs
    model = world["tiny"] if fault == "unwritable" else world[fault]
    if command == "plot" and fault == "unwritable":
        model = world["corrupt"].parent / "plot-run"
        if not model.exists():
            model.mkdir()
            (model / "metrics.jsonl").write_text('{"step": 1, "loss": 0.69}\n{"step": 2, "loss": 0.6}\n')
    out = world["unwritable"] if fault == "unwritable" else tmp_path / "out"
    code = main(argv_for(command, model, out, world))
    err = capsys.readouterr().err
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and code == 2, err
    assert lines[-2].startswith("error: ") and lines[-1].startswith("fix: "), err
    named = world["a_file"] if fault == "unwritable" else model
    assert str(named) in lines[-2] or (fault == "corrupt" and "corrupt" in lines[-2]), err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.safetensors"))


@pytest.mark.slow
def test_the_real_entry_point_agrees(world, tmp_path):
    """The same faults through `python -m dpokit`, as a user meets them (four processes at once)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    runs = {fault: subprocess.Popen([sys.executable, "-m", "dpokit", *argv_for(
                "generate" if fault != "unwritable" else "train", world["tiny"] if fault == "unwritable"
                else world[fault], world["unwritable"] if fault == "unwritable" else tmp_path, world)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for fault in ("missing", "empty", "corrupt", "unwritable")}
    for fault, run in runs.items():
        _, err = run.communicate(timeout=120)
        lines = [line.strip() for line in err.strip().splitlines()]
        assert run.returncode == 2 and "Traceback" not in err, (fault, err)
        assert lines[-2].startswith("error: ") and lines[-1].startswith("fix: "), (fault, err)
