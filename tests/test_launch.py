"""``accelerate launch`` with alignment-handbook's config files (small copies in fixtures/accelerate):
multi_gpu.yaml runs DDP and fsdp.yaml runs FSDP2, each the steps of one process x 2B; a DeepSpeed
config gets the FSDP2 equivalent in a clear message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpokit.cli import main
from dpokit.config import Config
from dpokit.errors import ConfigError
from dpokit.launch import from_accelerate

CONFIGS = Path(__file__).parent / "fixtures" / "accelerate"


def common(data: Path, model: Path) -> list[str]:
    return ["--data", str(data), "--model", str(model), "--steps", "3", "--lr", "1e-3", "--precision", "fp32",
            "--logging-steps", "1", "--progress", "false", "--max-length", "128", "--warmup-steps", "0",
            "--scheduler", "constant"]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["multi_gpu", "fsdp"])
def test_accelerate_launch_runs_the_same_steps(tmp_path, tiny_dir, config):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate is in the test extra"
    data = tmp_path / "pairs.jsonl"
    assert main(["data", "sample", "--output", str(data), "--n", "32"]) == 0
    assert main(["train", *common(data, tiny_dir), "--batch-size", "8", "--output", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    # On a CPU, multi_gpu.yaml needs --multi_gpu to start 2 processes (ANCHORS.md); with an FSDP config
    # accelerate starts them itself, and --multi_gpu would drop the config's FSDP settings.
    flags = ["--multi_gpu", "--num_processes", "2"] if config == "multi_gpu" else []
    result = subprocess.run(
        [accelerate, "launch", "--config_file", str(CONFIGS / f"{config}.yaml"), *flags, "-m", "dpokit", "train", *common(data, tiny_dir), "--batch-size", "4", "--output", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert ("FSDP2: 4 decoder layers sharded over 2 ranks" in result.stdout) == (config == "fsdp")
    assert ("accelerate FSDP config: FSDP2" in result.stdout) == (config == "fsdp")
    for a, b in zip(rows(tmp_path / "one"), rows(tmp_path / "two"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
    assert (tmp_path / "two" / "final" / "model.safetensors").is_file()


ZERO3 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
         "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "cpu", "ACCELERATE_MIXED_PRECISION": "bf16"}


def test_deepspeed_config_gets_the_fsdp2_equivalent(monkeypatch, capsys):
    """What accelerate sets for deepspeed_zero3.yaml (with parameter offload): the run stops before
    anything loads, with exit 2 and the FSDP2 command that does the same."""
    for name, value in ZERO3.items():
        monkeypatch.setenv(name, value)
    assert main(["train", "--demo", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: accelerate launch with a DeepSpeed config (ZeRO stage 3)")
    assert "fix: shard with FSDP2" in err and "--fsdp true --fsdp-offload true --precision bf16" in err
    assert "Traceback" not in err


def test_fsdp_config_maps_onto_fsdp2(monkeypatch):
    """The variables accelerate sets for fsdp.yaml (offload and activation checkpointing on)."""
    for name, value in {"ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true", "FSDP_VERSION": "2",
                        "FSDP_ACTIVATION_CHECKPOINTING": "true", "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP",
                        "ACCELERATE_MIXED_PRECISION": "bf16"}.items():
        monkeypatch.setenv(name, value)
    config = Config()
    config.model.gradient_checkpointing = False
    notes = from_accelerate(config)
    assert (config.train.parallelism, config.train.fsdp_offload) == ("fsdp", True)
    assert config.model.gradient_checkpointing and config.model.precision == "bf16"
    assert any("SHARD_GRAD_OP is run as FULL_SHARD" in note for note in notes)
    config = Config()
    config.train.parallelism = "ddp"
    with pytest.raises(ConfigError, match="FSDP config, and --parallelism ddp"):
        from_accelerate(config)


def test_no_launcher_changes_nothing(monkeypatch):
    for name in [*ZERO3, "ACCELERATE_USE_FSDP"]:
        monkeypatch.delenv(name, raising=False)
    config = Config()
    assert from_accelerate(config) == [] and config.to_dict() == Config().to_dict()


def test_shipped_fsdp_config_loads(capsys):
    config = Path(__file__).resolve().parents[1] / "configs" / "qwen-1.8b-8gpu-fsdp.yaml"
    assert main(["train", str(config), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "parallelism: fsdp" in out and "Qwen/Qwen1.5-1.8B-Chat" in out and "precision: bf16" in out


@pytest.mark.parametrize(("rank", "world", "prefix"), [("1", "2", "[rank 1] "), ("0", "2", ""), ("0", "1", "")])
def test_other_ranks_messages_carry_their_rank(monkeypatch, rank, world, prefix):
    from dpokit.errors import rank_prefix

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    assert rank_prefix() == prefix
