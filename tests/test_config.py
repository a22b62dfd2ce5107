"""Config: YAML + flags, short flags, hyphens/underscores, closest-match errors, print-config."""

from __future__ import annotations

import re

import pytest
import yaml

from dpokit.cli import main
from dpokit.config import Config
from dpokit.configure import resolve
from dpokit.errors import ConfigError


def test_short_flags_map_to_fields(tmp_path):
    weights = str(tmp_path)  # --weights must be an existing directory
    config, _, info = resolve([
        "--data", "x.jsonl", "--model", "gpt2", "--weights", weights, "--output", "out", "--steps", "7",
        "--epochs", "2", "--beta", "0.3", "--lr", "1e-6", "--batch-size", "3", "--grad-accum", "5",
        "--max-length", "256", "--max-prompt-length", "128", "--precision", "fp32", "--seed", "9",
        "--logging-steps", "4", "--save-steps", "11",
    ])
    assert (config.data.path, config.model.name_or_path, config.model.weights, config.output.dir) == (
        "x.jsonl", "gpt2", weights, "out")
    assert (config.train.steps, config.train.epochs, config.loss.beta, config.train.lr) == (7, 2.0, 0.3, 1e-6)
    assert (config.train.batch_size, config.train.grad_accum, config.data.max_length) == (3, 5, 256)
    assert (config.data.max_prompt_length, config.model.precision, config.train.seed) == (128, "fp32", 9)
    assert (config.output.logging_steps, config.output.save_steps) == (4, 11)
    assert info["demo"] is False


def test_underscores_equals_and_dotted_names():
    config, _, _ = resolve(["--data=x.jsonl", "--batch_size=2", "--train.grad-accum", "3", "--warmup-ratio", "0.2"])
    assert (config.train.batch_size, config.train.grad_accum, config.train.warmup_ratio) == (2, 3, 0.2)


def test_boolean_flag_without_value():
    config, _, _ = resolve(["--data", "x.jsonl", "--compile"])
    assert config.model.compile is True
    config, _, _ = resolve(["--data", "x.jsonl", "--gradient-checkpointing", "false"])
    assert config.model.gradient_checkpointing is False


def test_unknown_flag_names_closest_match():
    with pytest.raises(ConfigError, match=r"unknown key '--betta'.*did you mean '--beta'"):
        resolve(["--betta", "0.2"])


@pytest.mark.parametrize("flag, expected", [
    ("--batch", "--batch-size"), ("--grad", "--grad-accum"), ("--max-prompt", "--max-prompt-length"),
    ("--dat", "--data"), ("--gradient-check", "--gradient-checkpointing"), ("--train.batch", "--train.batch-size"),
])
def test_unknown_flag_that_begins_a_flag_suggests_it(flag, expected):
    """A flag cut short suggests the one flag it begins (short flags first), not a look-alike."""
    with pytest.raises(ConfigError, match=rf"unknown key '{re.escape(flag)}'.*did you mean '{re.escape(expected)}'\?"):
        resolve([flag, "4"])


def test_unknown_yaml_key_names_file_and_closest_match(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  learnin_rate: 1e-6\n")
    with pytest.raises(ConfigError, match=r"run.yaml.*did you mean"):
        resolve([str(path)])


def test_every_unknown_yaml_key_in_one_error_with_its_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name_or_path: tiny\ntrain:\n  learnin_rate: 1e-6\n  stps: 3\n"
                    "betta: 0.2\nfoo_bar_baz: 1\n")
    with pytest.raises(ConfigError) as caught:
        resolve([str(path)])
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(f"4 unknown keys in {path}")
    assert lines[1:] == ["  line 4: 'train.learnin_rate'; did you mean 'train.lr'?",
                         "  line 5: 'train.stps'; did you mean 'train.steps'?",
                         "  line 6: 'betta'; did you mean 'beta'?",
                         "  line 7: 'foo_bar_baz' (no key is close)"]


def test_one_unknown_yaml_key_names_its_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  path: x.jsonl\nloss:\n  los_type: ipo\n")
    with pytest.raises(ConfigError, match=r"unknown key 'loss.los_type' in .*run.yaml, line 4; did you mean "
                                          r"'loss.loss_type'\?"):
        resolve([str(path)])


def test_handbook_recipe_unknown_flat_keys_are_unused(tmp_path):
    """In a TRL / alignment-handbook recipe, another trainer's option is listed as unused; a typo of a
    dpokit key is still an error; use_flash_attention_2 maps onto attn_implementation."""
    path = tmp_path / "recipe.yaml"
    path.write_text("model_name_or_path: gpt2\nper_device_train_batch_size: 2\nuse_flash_attention_2: true\n"
                    "max_seq_length: 512\nwandb_tags: [a]\ndataset_name: x.jsonl\n")
    config, _, info = resolve([str(path)])
    assert info["unused"] == ["max_seq_length", "wandb_tags"]
    assert (config.model.attn_implementation, config.train.batch_size) == ("flash_attention_2", 2)
    path.write_text(path.read_text() + "per_device_train_batchsize: 3\nlearnin_rate: 1e-6\n")
    with pytest.raises(ConfigError) as caught:
        resolve([str(path)])
    message = str(caught.value)
    assert "line 7: 'per_device_train_batchsize'; did you mean 'per_device_train_batch_size'?" in message
    assert "line 8: 'learnin_rate'; did you mean 'learning_rate'?" in message
    # An explicit attention kernel wins; false leaves the default.
    config, _, _ = resolve(["--data", "x", "--use_flash_attention_2", "--attn-implementation", "sdpa"])
    assert config.model.attn_implementation == "sdpa"
    config, _, _ = resolve(["--data", "x", "--use_flash_attention_2", "false"])
    assert config.model.attn_implementation is None


def test_recipe_keys_with_dpokit_equivalents_are_mapped(tmp_path):
    """adam_beta1/2, precompute_ref_log_probs, reference_free and TR-DPO's sync keys map onto dpokit's
    fields; max_completion_length (no dpokit field) is still listed as unused."""
    path = tmp_path / "recipe.yaml"
    head = "model_name_or_path: gpt2\ndataset_name: x.jsonl\n"

    def run(text: str, *flags: str):
        path.write_text(head + text)
        return resolve([str(path), *flags])

    config, _, info = run("adam_beta1: 0.8\nadam_beta2: 0.95\nprecompute_ref_log_probs: true\n"
                          "max_completion_length: 256\n")
    assert (config.train.adam_betas, config.model.reference) == ((0.8, 0.95), "precomputed")
    assert config.data.max_completion_length == 256 and info["unused"] == []
    config, _, _ = run("adam_beta2: 0.98\nreference_free: true\n")
    assert (config.train.adam_betas, config.model.reference) == ((0.9, 0.98), "none")
    config, _, info = run("sync_ref_model: true\nref_model_sync_steps: 64\n")
    assert (config.model.ref_refresh_steps, config.model.ref_refresh_mix, info["unused"]) == (64, 0.6, [])
    config, _, _ = run("sync_ref_model: true\n")  # TRL's defaults
    assert (config.model.ref_refresh_steps, config.model.ref_refresh_mix) == (512, 0.6)
    config, _, _ = run("sync_ref_model: true\nref_model_mixup_alpha: 0.9\n", "--ref-refresh-steps", "10")
    assert (config.model.ref_refresh_steps, config.model.ref_refresh_mix) == (10, 0.9)
    # sync_ref_model off: no refresh, and its two settings are named as having no effect.
    config, _, info = run("sync_ref_model: false\nref_model_sync_steps: 64\nref_model_mixup_alpha: 0.9\n"
                          "precompute_ref_log_probs: false\n")
    assert (config.model.ref_refresh_steps, config.model.reference) == (None, "auto")
    assert info["unused"] == ["ref_model_mixup_alpha", "ref_model_sync_steps"]
    with pytest.raises(ConfigError, match=r"reference_free and sync_ref_model are both true"):
        run("reference_free: true\nsync_ref_model: true\n")
    config, _, _ = resolve(["--data", "x", "--adam_beta1", "0.85", "--precompute_ref_log_probs"])
    assert (config.train.adam_betas, config.model.reference) == ((0.85, 0.999), "precomputed")


def test_print_config_warns_once_about_unused_recipe_keys(capsys, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model_name_or_path: gpt2\ndataset_name: x.jsonl\nwandb_tags: [a]\nhub_model_id: x/y\n")
    assert main(["train", str(path), "--print-config"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("warning:") == 1 and "2 recipe keys have no effect" in captured.err
    assert "hub_model_id: dpokit does not upload to the Hugging Face Hub" in captured.err  # each with why
    assert "wandb_tags: not a key of dpokit" in captured.err
    assert yaml.safe_load(captured.out)["model"]["name_or_path"] == "gpt2"  # stdout is the YAML alone


def test_dpokit_yaml_unknown_flat_key_is_an_error(tmp_path):
    """Outside a recipe, an unknown key is never silently unused."""
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  path: x.jsonl\nwandb_tags: [a]\n")
    with pytest.raises(ConfigError, match=r"unknown key 'wandb_tags' in .*line 3"):
        resolve([str(path)])


def test_yaml_then_cli_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": "m"}, "data": {"path": "d.jsonl"},
                                    "beta": 0.2, "train": {"steps": 5}}))
    config, _, info = resolve([str(path), "--steps", "9"])
    assert (config.model.name_or_path, config.data.path, config.loss.beta, config.train.steps) == ("m", "d.jsonl", 0.2, 9)
    assert info["demo"] is False


def test_bad_value_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"train.steps"):
        resolve(["--data", "x", "--steps", "many"])
    with pytest.raises(ConfigError, match=r"model.precision"):
        resolve(["--data", "x", "--precision", "fp8"])
    with pytest.raises(ConfigError, match=r"beta must be positive"):
        resolve(["--data", "x", "--beta", "-1"])


def test_no_arguments_is_the_demo():
    config, _, info = resolve([])
    assert info["demo"] is True
    assert config.model.name_or_path == "tiny" and config.data.path is None and config.data.eval_fraction > 0


def test_print_config_round_trips(capsys, tmp_path):
    assert main(["train", "--data", "x.jsonl", "--beta", "0.25", "--print-config"]) == 0
    printed = capsys.readouterr().out
    path = tmp_path / "printed.yaml"
    path.write_text(printed)
    config, _, _ = resolve([str(path)])
    assert config.loss.beta == 0.25 and config.data.path == "x.jsonl"
    assert config == resolve(["--data", "x.jsonl", "--beta", "0.25"])[0]


def test_help_lists_fields_with_docstrings(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--batch-size | --train.batch-size" in out and "effective batch" in out


def test_help_shows_the_short_flags_and_trl_names(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    promised = ("--data --dataset --model --weights --output --steps --epochs --beta --lr --batch-size --grad-accum "
                "--max-length --max-prompt-length --precision --seed --logging-steps --save-steps --eval-data "
                "--layout").split()
    common = out.split("common flags", 1)[1].split("\n\n", 1)[0]  # the section at the top
    listed = {flag for line in common.splitlines()[1:] for flag in line.split("  ")[1].split(" | ")}
    assert listed == set(promised)
    assert "--beta | --loss.beta" in out and "--max-length | --data.max-length" in out
    assert "--learning_rate" in out and "--per_device_train_batch_size" in out


def test_version(capsys):
    from importlib.metadata import PackageNotFoundError, version

    from dpokit import __version__

    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0 and capsys.readouterr().out == f"dpokit {__version__}\n"
    try:
        assert version("dpokit") == __version__  # pyproject.toml and __init__ agree
    except PackageNotFoundError:
        pass


def test_every_field_has_a_docstring():
    """jsonargparse reads each field's docstring into its help: none may be missing."""
    from dpokit.configure import HINTS, _new_parser

    helps = {a.dest: a.help for a in _new_parser()._actions}
    missing = [key for key in HINTS if not (helps.get(key) or "").strip()]
    assert not missing, f"fields without a docstring: {missing}"
    assert helps["train.grad_accum"].startswith("Micro-batches per optimizer step")


def test_cli_reports_config_errors_without_traceback(capsys):
    assert main(["train", "--no-such-option", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown key '--no-such-option'") and "Traceback" not in err


def test_default_config_is_valid():
    assert Config().train.lr == 5e-7


# ---- no data, the demo, each command's defaults -------------------------------------------------


@pytest.mark.parametrize("text", ["", "# only a comment\n", "model:\n  name_or_path: gpt2\ntrain:\n  steps: 5\n",
                                  "model_name_or_path: gpt2\nlearning_rate: 1.0e-6\n"])
def test_a_config_without_data_is_an_error(text, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    first, fix = err.strip().splitlines()
    assert first == f"error: {path}: no training data: the config has no data key"
    assert fix.startswith("  fix: add `data: {path: PAIRS.jsonl}` (or `dataset_name:`") and "--demo" in fix


def test_flags_without_data_are_an_error_and_demo_is_asked_for(capsys):
    with pytest.raises(ConfigError, match=r"^no training data given\n  fix: pass --data PATH"):
        resolve(["--steps", "5"])
    config, _, info = resolve(["--demo", "--steps", "5"])  # the demo, with an override
    assert info["demo"] and config.train.steps == 5 and config.data.path is None and config.data.sample_size == 240
    assert resolve([])[2]["demo"] and resolve([], "sft")[2]["demo"]
    assert not resolve(["--demo", "--data", "x.jsonl"])[2]["demo"]  # the demo's settings, the user's data
    with pytest.raises(ConfigError, match="no training data given"):
        resolve(["--lora", "true"], "sft")


def test_each_commands_help_shows_the_defaults_it_runs_with(capsys):
    assert main(["sft", "--help"]) == 0
    sft = capsys.readouterr().out
    assert "--lr                     train.lr (default: 2e-05)" in sft
    assert "--output                 output.dir (default: sft_checkpoints)" in sft
    assert "default: 2e-05)" in sft.split("--lr | --train.lr", 1)[1].split("--", 1)[0]  # the key's own entry
    assert main(["train", "--help"]) == 0
    dpo = capsys.readouterr().out
    assert "train.lr (default: 5e-07)" in dpo and "output.dir (default: dpo_checkpoints)" in dpo
    assert "sft_checkpoints" not in dpo


def test_bad_values_name_key_flag_and_what_is_expected():
    cases = [(["--scheduler", "warm"], "'warm' for 'train.scheduler' (--scheduler): expects one of linear, cosine"),
             (["--save-steps", "lots"], "'lots' for 'output.save_steps' (--save-steps): expects a whole number (int, "
                                        "e.g. 8) or a number (float, e.g. 0.1)"),
             (["--report-to", "{a: 1}"], "'output.report_to'"),
             (["--save-steps", "2.5"], "output.save_steps must be a whole number of steps, or a fraction of the run"),
             (["--data.mixture", "{datasets: [{id: a.jsonl, weight: 0}]}"], "weight 0 must be in (0, 1]")]
    for flags, expected in cases:
        with pytest.raises(ConfigError) as caught:
            resolve(["--data", "x.jsonl", *flags] if "--data.mixture" not in flags else flags)
        assert expected in str(caught.value)
