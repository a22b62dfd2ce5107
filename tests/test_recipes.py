"""alignment-handbook recipes as their authors run them: the three shared recipe files resolved key by
key (``--print-config``) and trained for two steps with the tiny model on local data; mixtures pick
the rows the handbook's code picks; TRL / Trainer keys take effect, are named with why, or stop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from dpokit.cli import main
from dpokit.config import DataConfig
from dpokit.configure import KEYS, resolve
from dpokit.data.sources import load_train_eval
from dpokit.errors import ConfigError
from dpokit.recipes import RULES

RECIPES = Path(__file__).resolve().parents[2] / "shared" / "data" / "recipes"
NAMES = ["zephyr-7b-beta-dpo-full", "zephyr-7b-beta-dpo-qlora", "zephyr-141b-orpo-full"]
# What each recipe names that has no effect in dpokit (each named in the warning with why).
NO_EFFECT = {"gradient_checkpointing_kwargs", "hub_model_id", "log_level", "push_to_hub"}
pytestmark = pytest.mark.skipif(not RECIPES.is_dir(), reason="the shared recipes are not here")


def recipe(name: str) -> dict:
    return yaml.safe_load((RECIPES / f"{name}.yaml").read_text())


def flags_of(name: str) -> list[str]:
    return ["--loss-type", "orpo"] if "orpo" in name else []  # the handbook runs it with run_orpo.py


@pytest.mark.parametrize("name", NAMES)
def test_print_config_resolves_every_recipe_key(name, capsys):
    r = recipe(name)
    assert main(["train", str(RECIPES / f"{name}.yaml"), *flags_of(name), "--print-config"]) == 0
    out, err = capsys.readouterr()
    c = yaml.safe_load(out)
    model, data, loss, train, output = (c[s] for s in ("model", "data", "loss", "train", "output"))
    assert (model["name_or_path"], model["revision"]) == (r["model_name_or_path"], r.get("model_revision"))
    assert model["precision"] == "bf16" and model["attn_implementation"] == r.get("attn_implementation")
    assert model["gradient_checkpointing"] is r["gradient_checkpointing"]
    assert (train["lr"], train["scheduler"]) == (r["learning_rate"], r["lr_scheduler_type"])
    assert (train["warmup_ratio"], train["warmup_steps"]) == (r.get("warmup_ratio", 0.1), r.get("warmup_steps"))
    if "orpo" in name:  # TRL's ORPOConfig.beta is ORPO's lambda (and the scale of its rewards)
        assert (loss["loss_type"], loss["orpo_lambda"], loss["beta"]) == ("orpo", r["beta"], r["beta"])
    else:
        assert (loss["loss_type"], loss["beta"], loss["orpo_lambda"]) == ("sigmoid", r["beta"], 0.1)
    assert (train["batch_size"], train["eval_batch_size"]) == (r["per_device_train_batch_size"],
                                                               r.get("per_device_eval_batch_size"))
    assert (train["grad_accum"], train["epochs"]) == (r["gradient_accumulation_steps"], r["num_train_epochs"])
    assert (data["max_length"], data["max_prompt_length"]) == (r["max_length"], r["max_prompt_length"])
    assert (train["optim"], train["seed"], output["logging_steps"]) == (r["optim"], r["seed"], r["logging_steps"])
    assert (output["save_strategy"], output["save_steps"], output["save_total_limit"]) == (
        r["save_strategy"], r.get("save_steps", 500), r.get("save_total_limit"))
    assert (train["eval_strategy"], train["eval_steps"]) == (r.get("eval_strategy", "steps"), r.get("eval_steps"))
    assert output["dir"] == r["output_dir"] and data["num_proc"] == r["dataset_num_proc"]
    assert output["report_to"] == r.get("report_to", [])
    if "dataset_mixture" in r:
        assert data["mixture"] == r["dataset_mixture"] and data["path"] is None
    elif "dataset_mixer" in r:
        assert data["mixture"] == r["dataset_mixer"]
        assert (data["split"], data["eval_split"]) == tuple(r["dataset_splits"])
    else:
        assert (data["path"], data["split"]) == (r["dataset_name"], r["dataset_train_split"])
        assert data["chat_template"] == r["chat_template"]
    lora = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
    if r.get("use_peft"):
        assert model["lora"] and model["load_in_4bit"] is r["load_in_4bit"]
        assert [model[k] for k in lora] == [r[k] for k in lora]
    else:
        assert not model["lora"] and not model["load_in_4bit"]
    # Every key either takes effect (a dpokit key, or a rule that converts it) or is named with why.
    warning = [line for line in err.splitlines() if line.startswith("  ")]
    named = {key.strip() for line in warning for key in line.split(":")[0].split(",")}
    assert named == NO_EFFECT | ({"do_eval"} & set(r))
    assert all(key in named or key in KEYS or callable(RULES.get(key)) for key in r)


@pytest.fixture(scope="module")
def prefs(tmp_path_factory) -> Path:
    """A local stand-in for HuggingFaceH4/ultrafeedback_binarized: train_prefs and test_prefs Parquet
    splits of chat pairs (the columns the handbook keeps: chosen, rejected)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("ultrafeedback")
    (root / "data").mkdir()
    for split, n in (("train_prefs", 40), ("test_prefs", 8)):
        rows = []
        for i in range(n):
            user = {"role": "user", "content": f"{split} question {i}: what is {i} plus {i}?"}
            rows.append({"prompt": user["content"],
                         "chosen": [user, {"role": "assistant", "content": f"It is {2 * i}."}],
                         "rejected": [user, {"role": "assistant", "content": f"Maybe {i + 3}, or not."}]})
        pq.write_table(pa.Table.from_pylist(rows), root / "data" / f"{split}-00000-of-00001.parquet")
    datasets.config.HF_DATASETS_CACHE = str(tmp_path_factory.mktemp("hf-cache"))
    return root


def local_data(name: str, root: Path) -> list[str]:
    """Flags putting the local data where the recipe names hub data sets."""
    if name.endswith("dpo-full"):
        train, test = (f"{{id: {root}, split: {s}, columns: [chosen, rejected], weight: 1.0}}"
                       for s in ("train_prefs", "test_prefs"))
        return ["--dataset_mixture", f"{{datasets: [{train}, {test}], test_split_size: 4, seed: 0}}"]
    if name.endswith("qlora"):
        return ["--dataset_mixer", f"{{{root}: 1.0}}"]
    return ["--dataset_name", str(root), "--dataset_train_split", "train_prefs"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_each_recipe_trains_two_steps(name, prefs, tiny_dir, tmp_path, capsys, one_thread):
    """The recipe as is, with the tiny model and local data in place of the hub's, two steps, short
    lengths (the tiny model has 512 positions), sdpa in place of flash-attention (a CPU), no trackers."""
    from transformers import get_scheduler

    r = recipe(name)
    out = tmp_path / "out"
    argv = ["train", str(RECIPES / f"{name}.yaml"), *flags_of(name), *local_data(name, prefs), "--model", str(tiny_dir),
            "--max_steps", "2", "--output_dir", str(out), "--max-length", "96", "--max-prompt-length", "48",
            "--attn_implementation", "sdpa", "--report_to", "none", "--logging_steps", "1", "--progress", "false"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (out / "final" / "model.safetensors").is_file() and not list(out.glob("checkpoint-*"))
    banner = next(line for line in printed.splitlines() if "steps x" in line)
    if "orpo" in name:
        assert "loss orpo (ORPO" in banner and "beta 0.05, orpo_lambda 0.05" in banner
    else:
        assert "loss sigmoid (DPO" in banner and f"beta {r['beta']}" in banner
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [row["learning_rate"] for row in rows if "loss" in row]
    # The recipe's schedule over a two-step run, as transformers builds it (warmup rounded up).
    warmup = r["warmup_steps"] if "warmup_steps" in r else math.ceil(r["warmup_ratio"] * 2)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=r["learning_rate"])
    schedule = get_scheduler(r["lr_scheduler_type"], optimizer, num_warmup_steps=warmup, num_training_steps=2)
    expected = []
    for _ in range(2):
        optimizer.step()
        schedule.step()
        expected.append(optimizer.param_groups[0]["lr"])
    assert logged == pytest.approx(expected)
    evals = [row for row in rows if "eval_loss" in row]
    assert len(evals) == (0 if "orpo" in name else 1)  # the full and QLoRA recipes evaluate at the end


# ---- mixtures, as alignment-handbook picks their rows -------------------------------------------


def sources(tmp_path: Path, sizes: dict[str, int]) -> dict[str, Path]:
    paths = {}
    for tag, n in sizes.items():
        paths[tag] = tmp_path / f"{tag}.jsonl"
        paths[tag].write_text("".join(json.dumps({"prompt": f"{tag} question {i}?", "chosen": f"{tag} yes {i}.",
                                                  "rejected": f"{tag} no {i}."}) + "\n" for i in range(n)))
    return paths


def test_mixture_picks_the_handbooks_rows(tmp_path, monkeypatch):
    """alignment-handbook's get_dataset: each source shuffled with the seed and its first int(n * weight)
    rows selected, the parts concatenated and shuffled, then train_test_split(test_size, seed)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    paths = sources(tmp_path, {"A": 37, "B": 53, "C": 20})
    weights, seed, test = {"A": 0.5, "B": 0.3, "C": None}, 7, 0.2
    mixture = {"datasets": [{"id": str(p), "weight": weights[t]} if weights[t] else {"id": str(p)}
                            for t, p in paths.items()], "seed": seed, "test_split_size": test}
    train, evaluation = load_train_eval(DataConfig(mixture=mixture), seed=123)  # the run's seed plays no part

    parts = []
    for tag, path in paths.items():  # the handbook's code, with datasets
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
        parts.append(ds.shuffle(seed=seed).select(range(int(len(ds) * (weights[tag] or 1.0)))))
    split = datasets.concatenate_datasets(parts).shuffle(seed=seed).train_test_split(test_size=test, seed=seed)
    assert [p.prompt for p in train] == split["train"]["prompt"]
    assert [p.prompt for p in evaluation] == split["test"]["prompt"]
    assert len(train) + len(evaluation) == 18 + 15 + 20


def test_older_dataset_mixer_picks_the_handbooks_rows(tmp_path):
    """The older ``dataset_mixer: {id: weight}``: the first int(weight * n) rows of each, concatenated,
    shuffled with seed 42 (alignment-handbook's mix_datasets)."""
    import datasets

    paths = sources(tmp_path, {"A": 30, "B": 25})
    train, _ = load_train_eval(DataConfig(mixture={str(paths["A"]): 0.5, str(paths["B"]): 0.2}), seed=0)
    rows = [{"prompt": f"A question {i}?"} for i in range(15)] + [{"prompt": f"B question {i}?"} for i in range(5)]
    expected = datasets.Dataset.from_list(rows).shuffle(seed=42)["prompt"]
    assert [p.prompt for p in train] == expected


# ---- TRL / Trainer keys -------------------------------------------------------------------------


def resolved(*flags: str):
    return resolve(["--data", "x.jsonl", *flags])[0]


@pytest.mark.parametrize("flags, key, expected", [
    (["--resume_from_checkpoint"], "train.resume", "latest"),
    (["--resume_from_checkpoint", "true"], "train.resume", "latest"),
    (["--resume_from_checkpoint", "runs/a/checkpoint-40"], "train.resume", "runs/a/checkpoint-40"),
    (["--resume_from_checkpoint", "false"], "train.resume", None),
    (["--fsdp", "full_shard auto_wrap"], "train.parallelism", "fsdp"),
    (["--fsdp", "true"], "train.parallelism", "fsdp"),
    (["--fsdp", ""], "train.parallelism", "auto"),
    (["--fsdp", "full_shard offload auto_wrap"], "train.fsdp_offload", True),
    (["--report_to", "none"], "output.report_to", []),
    (["--report_to", "wandb"], "output.report_to", ["wandb"]),
    (["--report_to", "[tensorboard, wandb]"], "output.report_to", ["tensorboard", "wandb"]),
    (["--padding_free", "true"], "data.layout", "packed"),
    (["--padding_free", "false"], "data.layout", "padded"),
    (["--evaluation_strategy", "epoch"], "train.eval_strategy", "epoch"),
    (["--eval_strategy", "no"], "train.eval_strategy", "no"),
    (["--metric_for_best_model", "rewards/accuracies"], "train.metric_for_best_model", "eval_rewards/accuracies"),
    (["--load_best_model_at_end", "--greater_is_better", "true"], "train.load_best_model_at_end", True),
    (["--save_total_limit", "2", "--run_name", "r1"], "output.run_name", "r1"),
    (["--per_device_eval_batch_size", "16"], "train.eval_batch_size", 16),
    (["--lr_scheduler_kwargs", "{min_lr_rate: 0.1}"], "train.scheduler_kwargs", {"min_lr_rate": 0.1}),
    (["--warmup_steps", "0.05"], "train.warmup_steps", 0.05),
    (["--save_steps", "0.5", "--eval_steps", "0.25", "--logging_steps", "0.1"], "output.save_steps", 0.5),
    (["--optim", "paged_adamw_8bit", "--adam_epsilon", "1e-6"], "train.optim", "paged_adamw_8bit"),
    (["--adafactor"], "train.optim", "adafactor"),
    (["--loss_type", "[sigmoid, sft]", "--loss_weights", "[1.0, 0.5]"], "loss.loss_type", "sigmoid,sft"),
    (["--lora_target_modules", "all-linear"], "model.lora_target_modules", None),
    (["--chat_template_kwargs", "{enable_thinking: false}"], "data.chat_template_kwargs", {"enable_thinking": False}),
    (["--max_completion_length", "64"], "data.max_completion_length", 64),
    (["--use_cpu"], "model.device", "cpu"),
])
def test_trainer_keys_take_effect(flags, key, expected):
    config = resolved(*flags)
    section, name = key.split(".")
    assert getattr(getattr(config, section), name) == expected


def test_keys_that_would_train_something_else_stop_the_run():
    for flags, why in ((["--f_divergence_type", "js_divergence"], "reverse KL"),
                       (["--use_weighting"], "no WPO weighting"), (["--neftune_noise_alpha", "5"], "NEFTune"),
                       (["--optim_args", "momentum=0.9"], "adam_betas"), (["--load_in_8bit"], "4-bit NF4")):
        with pytest.raises(ConfigError, match=rf"the command line: {flags[0][2:]}: .*{why}.*\n  fix: remove"):
            resolved(*flags)
    assert resolved("--f_divergence_type", "reverse_kl").loss.loss_type == "sigmoid"  # TRL's default runs
    with pytest.raises(ConfigError, match=r"'linear_warmup' for 'train.scheduler' \(--scheduler\): expects "
                                          r"one of linear, cosine, cosine_with_restarts"):
        resolved("--lr_scheduler_type", "linear_warmup")
    with pytest.raises(ConfigError, match=r"unknown train.optim 'adamw'; did you mean 'adamw_torch'"):
        resolved("--optim", "adamw")  # the plain AdamW, not an 8-bit one
    with pytest.raises(ConfigError, match=r"unknown train.optim 'adamw_8bt'; did you mean 'adamw_8bit'"):
        resolved("--optim", "adamw_8bt")


def test_orpo_reads_a_recipes_beta_as_lambda_only_with_orpo():
    path = RECIPES / "zephyr-141b-orpo-full.yaml"
    as_dpo = resolve([str(path)])[0]
    assert (as_dpo.loss.loss_type, as_dpo.loss.beta, as_dpo.loss.orpo_lambda) == ("sigmoid", 0.05, 0.1)
    explicit = resolve([str(path), "--loss-type", "orpo", "--orpo-lambda", "0.2"])[0]
    assert (explicit.loss.orpo_lambda, explicit.loss.beta) == (0.2, 0.05)
    # Outside a recipe file, beta is dpokit's beta (the scale of ORPO's logged rewards).
    flags = resolved("--loss-type", "orpo", "--beta", "0.3")
    assert (flags.loss.beta, flags.loss.orpo_lambda) == (0.3, 0.1)
