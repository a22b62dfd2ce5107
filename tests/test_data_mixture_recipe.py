"""Mixtures (a weight is the fraction of a data set to take) and alignment-handbook recipes run as is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dpokit.cli import main
from dpokit.config import DataConfig
from dpokit.configure import resolve
from dpokit.data.sources import load_train_eval
from dpokit.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "data"
HH_RLHF = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def source(path: Path, tag: str, n: int = 100) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"{tag} question {i}?", "chosen": f"{tag} good answer {i}.",
                                "rejected": f"{tag} bad {i}."}) + "\n")
    return path


def test_weights_are_fractions_of_each_source(tmp_path):
    a, b = source(tmp_path / "a.jsonl", "A"), source(tmp_path / "b.jsonl", "B")
    mixture = {"datasets": [{"id": str(a), "weight": 0.7}, {"id": str(b), "weight": 0.3}], "seed": 0}
    train, evaluation = load_train_eval(DataConfig(mixture=mixture), seed=123)
    tags = [p.prompt[0] for p in train]
    assert (tags.count("A"), tags.count("B"), len(evaluation)) == (70, 30, 0)
    assert tags[:10] != sorted(tags[:10]) or tags[:10] != ["A"] * 10  # mixed, not A then B
    # Same seed, same mixture; another seed, other rows.
    again, _ = load_train_eval(DataConfig(mixture=mixture), seed=999)
    assert [p.prompt for p in again] == [p.prompt for p in train]
    other, _ = load_train_eval(DataConfig(mixture={**mixture, "seed": 1}), seed=0)
    assert {p.prompt for p in other} != {p.prompt for p in train}
    # test_split_size carves the evaluation split out of the mixed rows.
    train, evaluation = load_train_eval(DataConfig(mixture={**mixture, "test_split_size": 0.1}), seed=0)
    assert (len(train), len(evaluation)) == (90, 10)
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in evaluation})


def test_mixture_of_formats_and_eval_split_taken_whole(tmp_path, monkeypatch):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    uf = [json.loads(line) for line in (FIXTURES / "ultrafeedback.jsonl").read_text().splitlines()]
    root = tmp_path / "uf"
    (root / "data").mkdir(parents=True)
    for split in ("train_prefs", "test_prefs"):
        pq.write_table(pa.Table.from_pylist(uf), root / "data" / f"{split}-00000-of-00001.parquet")
    mixture = {"datasets": [{"id": str(root), "split": "train_prefs", "weight": 0.5, "columns": ["chosen", "rejected"]},
                            {"id": str(FIXTURES / "mapped.jsonl"),
                             "columns": {"prompt": "question", "chosen": "good", "rejected": "bad"}}]}
    train, evaluation = load_train_eval(DataConfig(mixture=mixture, eval_split="test_prefs"), seed=0)
    assert len(train) == 3 + 6 and sum(p.conversational for p in train) == 3
    assert len(evaluation) == 6  # evaluation splits are not subsampled


def test_mixture_checks():
    with pytest.raises(ConfigError, match="weight 1.5"):
        resolve(["--data.mixture", "{datasets: [{id: a.jsonl, weight: 1.5}]}"])
    with pytest.raises(ConfigError, match="not both"):
        resolve(["--data", "x.jsonl", "--data.mixture", "{datasets: [{id: a.jsonl}]}"])


RECIPE = """\
# An alignment-handbook DPO recipe, flat keys as the handbook writes them
model_name_or_path: {model}
model_revision: main
torch_dtype: bfloat16
attn_implementation: sdpa
trust_remote_code: false

dataset_mixture:
  datasets:
    - id: {a}
      split: train
      weight: 0.5
    - id: {hh}
      weight: 0.01
  seed: 0
  test_split_size: 4
preprocessing_num_workers: 1

bf16: true
beta: 0.1
do_eval: true
eval_strategy: steps
gradient_accumulation_steps: 1
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: false
hub_model_id: my-first-dpo
learning_rate: 1.0e-4
log_level: info
logging_steps: 1
lr_scheduler_type: cosine
max_length: 96
max_prompt_length: 64
num_train_epochs: 1
max_steps: 2
optim: adamw_torch
output_dir: {out}
per_device_train_batch_size: 2
per_device_eval_batch_size: 8
push_to_hub: false
save_strategy: "no"
save_steps: 100
save_total_limit: 1
seed: 42
warmup_ratio: 0.1
"""


@pytest.mark.skipif(not HH_RLHF.is_file(), reason="the shared HH-RLHF sample is not here")
def test_handbook_recipe_runs_as_is(tmp_path, tiny_dir, capsys):
    a = source(tmp_path / "a.jsonl", "A", 20)
    out = tmp_path / "run"
    recipe = tmp_path / "config_dpo.yaml"
    recipe.write_text(RECIPE.format(model=tiny_dir, a=a, hh=HH_RLHF, out=out), encoding="utf-8")

    config, _, info = resolve([str(recipe)])
    assert (config.model.name_or_path, config.model.revision, config.model.precision) == (str(tiny_dir), "main", "bf16")
    assert config.model.trust_remote_code is False and config.model.gradient_checkpointing is True
    assert (config.train.steps, config.train.batch_size, config.train.lr, config.train.scheduler) == (2, 2, 1e-4, "cosine")
    assert (config.data.max_length, config.data.max_prompt_length, config.loss.beta) == (96, 64, 0.1)
    assert config.output.dir == str(out) and config.train.seed == 42 and config.data.mixture["seed"] == 0
    # Keys of the Trainer with a dpokit field take effect; the rest are named with why.
    assert (config.train.eval_batch_size, config.train.optim, config.train.eval_strategy) == (8, "adamw_torch", "steps")
    assert (config.output.save_strategy, config.output.save_total_limit) == ("no", 1)
    unused = ["do_eval", "gradient_checkpointing_kwargs", "hub_model_id", "log_level", "push_to_hub"]
    assert info["unused"] == unused

    assert main(["train", str(recipe), "--output.progress", "false"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("warning:") == 1 and "5 recipe keys have no effect" in captured.err
    assert all(f"{key}" in captured.err for key in unused)  # one warning lists them all
    assert "hub_model_id, push_to_hub: dpokit does not upload to the Hugging Face Hub" in captured.err
    assert not list(out.glob("checkpoint-*"))  # save_strategy: "no"
    assert "weight 0.01: 23 of 2308 pairs taken" in captured.out
    assert (out / "final" / "config.json").is_file()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["precision"] == "bf16" and saved["data"]["mixture"]["test_split_size"] == 4


def test_recipe_key_conversions_and_unknown_keys():
    config, _, _ = resolve(["--data", "x.jsonl", "--torch_dtype", "float32", "--max_steps", "-1",
                            "--lr_scheduler_type", "constant_with_warmup", "--dataset_num_proc", "4"])
    assert (config.model.precision, config.train.steps, config.train.scheduler, config.data.num_proc) == (
        "fp32", None, "constant_with_warmup", 4)  # every Trainer schedule is built as is (transformers')
    config, _, _ = resolve(["--data", "x.jsonl", "--bf16", "false"])
    assert config.model.precision == "auto"
    config, _, _ = resolve(["--dataset_name", "ultrafeedback", "--dataset_splits", "[train_prefs, test_prefs]"])
    assert (config.data.path, config.data.split, config.data.eval_split) == ("ultrafeedback", "train_prefs", "test_prefs")
    # An explicit precision beats the recipe's dtype flags in the same layer.
    config, _, _ = resolve(["--data", "x.jsonl", "--bf16", "--precision", "fp32"])
    assert config.model.precision == "fp32"
    with pytest.raises(ConfigError, match="did you mean '(--)?per-device-train-batch-size'"):
        resolve(["--data", "x.jsonl", "--per-device-train-batchsize", "2"])
    with pytest.raises(ConfigError, match="bf16 and fp16"):
        resolve(["--data", "x.jsonl", "--bf16", "--fp16"])
