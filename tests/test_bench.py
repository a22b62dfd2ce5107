"""The benchmark's own pieces (benchmarks/): MFU counted with the training loop's formula, the
long pairs of the max_length sweep fit it, the scaling table and plot, the GPU script's dry run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import assets  # noqa: E402
import run as bench  # noqa: E402
import scaling  # noqa: E402


def write_pairs(path: Path, rows: list[dict[str, str]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_flops_per_pair_is_the_training_loops_count(tmp_path, tiny_dir):
    """The benchmark's useful FLOPs per pair are those the metrics rows' MFU counts (Task.flops:
    policy train pass + reference forward), so the two MFU figures share one formula."""
    from dpokit.configure import build_config
    from dpokit.train import setup

    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f" It is {2 * i}.",
             "rejected": " I do not know, and I will not say." * (1 + i % 3)} for i in range(6)]
    data = write_pairs(tmp_path / "pairs.jsonl", rows)
    load = bench.workload(str(tiny_dir), data, 64)
    run = setup(build_config({"model.name_or_path": str(tiny_dir), "model.precision": "fp32", "model.device": "cpu",
                              "data.path": data, "data.max_length": 64, "data.tokenized_cache": False,
                              "train.batch_size": 2, "train.steps": 1, "output.dir": str(tmp_path / "out"),
                              "output.progress": False, "output.save_steps": 0}))
    pairs = run.task.train
    assert len(pairs) == 6
    assert load.flops_per_pair == pytest.approx(run.task.flops(pairs) / len(pairs), rel=1e-12)
    assert load.tokens_per_pair == pytest.approx(sum(p.num_tokens for p in pairs) / len(pairs))
    assert load.params == sum(p.numel() for p in run.policy.parameters())


@pytest.mark.skipif(not assets.HH_RLHF.exists(), reason="the shared HH-RLHF file is not here")
def test_long_pairs_fill_80_percent_of_max_length(tiny_tokenizer):
    """Each long pair is a 60% prompt and two 20% completions: tokenized again they stay within
    max_length (nothing to truncate) and near 80% of it."""
    rows = assets.long_pairs(4, 256, tiny_tokenizer)
    assert len(rows) == 4 and len({r["prompt"] for r in rows}) == 4
    for r in rows:
        prompt = len(tiny_tokenizer(r["prompt"], add_special_tokens=False)["input_ids"])
        for answer in (r["chosen"], r["rejected"]):
            total = prompt + len(tiny_tokenizer(answer, add_special_tokens=False)["input_ids"])
            assert 0.7 * 256 <= total <= 0.9 * 256


def result(tool: str, steady: float, rss_gib: float, mfu: float | None = 0.2) -> bench.Result:
    return bench.Result("case", tool, [], 0, 10.0, steady, steady, 100.0, int(rss_gib * 2**30), 15.0, 0.5, None,
                        "log", "bf16", mfu, 2 * steady, 2 * mfu if mfu else None)


def test_scaling_table_and_plot(tmp_path):
    points = [scaling.Point("size", "27m", 512, 27_700_000, 3.9e10, 316, result("trl", 1.0, 3.5)),
              scaling.Point("size", "27m", 512, 27_700_000, 3.9e10, 316, result("dpokit", 5.0, 1.4)),
              scaling.Point("size", "125m", 512, 125_800_000, 1.7e11, 316, result("dpokit", 1.0, 2.8, None)),
              scaling.Point("length", "27m", 1024, 27_700_000, 1.3e11, 1638, result("dpokit", 2.0, 1.6))]
    table = scaling.markdown(points, "TRL fp32, no checkpointing")
    assert "against TRL fp32, no checkpointing;" in table.splitlines()[0]
    assert "| 28M | 512 | 316 | 39.0 | dpokit | 5.00 | 20.0% bf16 | 10.00 | 40.0% | 1.40 | 5.00x | 5.00x | 0.40x |" in table
    assert "| 126M | 512 | 316 | 170.0 | dpokit | 1.00 | - | 2.00 | - | 2.80 |  |  |  |" in table  # no TRL point
    png = tmp_path / "scaling.png"
    scaling.plot(points, str(png), "test machine", "TRL fp32, no checkpointing")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_table_has_mfu_per_case():
    cases = {"case": bench.Case("case", "dpokit", [], None)}
    table = bench.markdown([result("dpokit", 4.0, 1.4, 0.31)], cases, "header")
    assert "| MFU |" in table and "| 31.0% bf16 | 8.00 | 62.0% |" in table


def test_gpu_script_dry_run_lists_cases_and_peaks():
    out = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--dry-run", "--sweep", "reduced"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "device cuda, model 360m, max_length 1024" in out.stdout
    assert "TRL (defaults)" in out.stdout and "--layout packed" in out.stdout
    assert "sweep points: 27m@512, 125m@512, 27m@256, 27m@1024; TRL there: TRL (defaults)" in out.stdout
    fastest = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--dry-run", "--sweep", "reduced",
                              "--sweep-trl-case", "fastest"], capture_output=True, text=True, timeout=120)
    assert "; TRL there: TRL, no checkpointing" in fastest.stdout, fastest.stderr
    assert "H200" in out.stdout or "peak:" in out.stdout
    bad = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--dry-run", "--sweep", "reduced", "--sizes", "9b"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "error: unknown model size '9b'" in bad.stderr
