"""TRL, Hugging Face Trainer and alignment-handbook keys (a recipe's flat YAML keys, or flags), read as
their authors mean them. `RULES` is the one table of them: each key takes effect, converted onto
dpokit's keys (``bf16: true`` -> ``model.precision: bf16``); or has no effect here and is named, with
why, in the run's one warning (hub uploads, ...); or stops the run, when ignoring it would silently train
something else (``use_weighting``, ...). dpokit fields of the same name (``beta``, ``max_length``,
``optim``, ``save_strategy``, ...) need no rule; in a recipe file, ``beta`` with an ORPO loss is also
ORPO's lambda, as TRL's ``ORPOConfig`` reads it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dpokit.config import TrainConfig
from dpokit.errors import ConfigError

Rule = Callable[[Any, dict[str, Any]], dict[str, Any]]  # (value, the layer's recipe keys) -> {dotted key: value}
BETA_MARK = "recipe.orpo_beta"  # a recipe file's beta, for `finalize`
TRL_SYNC_STEPS, TRL_MIXUP_ALPHA = 512, 0.6  # TRL's TR-DPO defaults (Gorbatovski et al. 2024), with sync_ref_model
DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16", "float32": "fp32",
          "fp32": "fp32", "float": "fp32"}


def truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def to(key: str, convert: Callable[[Any], Any] = lambda v: v) -> Rule:
    """The rule of a key that sets one dpokit key (``rule.target``, listed in ``--help``)."""
    rule = lambda value, _: {key: convert(value)}  # noqa: E731
    rule.target = key  # type: ignore[attr-defined]
    return rule


def when(key: str, value: Any) -> Rule:
    """The rule of a switch: when true, ``key`` takes ``value``; false changes nothing."""
    return lambda v, _: {key: value} if truthy(v) else {}


def stop_unless(ok: Callable[[Any], bool], why: str) -> Rule:
    """The rule of a key that would train something else here unless ``ok(value)``."""
    def stop(value: Any, _: dict[str, Any]) -> dict[str, Any]:
        if ok(value):
            return {}
        raise ValueError(f"{value!r} cannot run as meant: {why}")
    return stop


def _precision(_: Any, layer: dict[str, Any]) -> dict[str, Any]:
    """bf16 / fp16 / torch_dtype together -> model.precision (autocast over fp32 master weights)."""
    bf16, fp16 = truthy(layer.get("bf16")), truthy(layer.get("fp16"))
    if bf16 and fp16:
        raise ValueError("bf16 and fp16 are both true; set one of them")
    dtype = "bf16" if bf16 else "fp16" if fp16 else layer.get("torch_dtype", layer.get("dtype"))
    if dtype not in (None, "auto") and str(dtype) not in DTYPES:
        raise ValueError(f"torch_dtype {dtype!r} is not one of {', '.join(DTYPES)} or auto")
    return {} if dtype in (None, "auto") else {"model.precision": DTYPES[str(dtype)]}


def _reference(_: Any, layer: dict[str, Any]) -> dict[str, Any]:
    """TRL's reference switches: ``reference_free`` -> none, ``precompute_ref_log_probs`` -> precomputed,
    ``sync_ref_model`` (``ref_model_sync_steps``, ``ref_model_mixup_alpha``) -> TR-DPO's refresh; without
    ``sync_ref_model: true`` the two refresh settings do nothing, as in TRL."""
    on = [k for k in ("reference_free", "precompute_ref_log_probs", "sync_ref_model") if truthy(layer.get(k))]
    if len(on) > 1:
        raise ValueError(f"{' and '.join(on)} are {'both' if len(on) == 2 else 'all'} true, but each picks a "
                         "different reference; set one of them")
    out = {"model.reference": {"reference_free": "none", "precompute_ref_log_probs": "precomputed"}[on[0]]} if (
        on and on[0] != "sync_ref_model") else {}
    for key, target, default in (("ref_model_sync_steps", "model.ref_refresh_steps", TRL_SYNC_STEPS),
                                 ("ref_model_mixup_alpha", "model.ref_refresh_mix", TRL_MIXUP_ALPHA)):
        if "sync_ref_model" in on:
            out[target] = layer.get(key, default)
        elif key in layer:
            out[f"unused.{key}"] = "read only with sync_ref_model: true, as in TRL"
    return out


def _splits(value: Any, _: dict[str, Any]) -> dict[str, Any]:
    """alignment-handbook's ``dataset_splits``: the first ``train*`` split trains, the first ``test*`` evaluates."""
    splits = [str(x) for x in ([value] if isinstance(value, str) else value or [])]
    return {key: next(x for x in splits if word in x) for key, word in (("data.split", "train"),
            ("data.eval_split", "test")) if any(word in x for x in splits)}


def _fsdp(value: Any, _: dict[str, Any]) -> dict[str, Any]:
    """The Trainer's ``fsdp`` (``"full_shard auto_wrap offload"``, a list, or true) -> FSDP2, offload kept."""
    words = value.split() if isinstance(value, str) else [str(w) for w in value] if isinstance(value, list) else []
    on = truthy(value) or any(w.lower() not in ("false", "no") for w in words)
    return {"train.parallelism": "fsdp", **({"train.fsdp_offload": True} if "offload" in words else {})} if on else {}


NO_EFFECT = {  # why -> the keys it covers: each is named in the run's one warning
    "dpokit does not upload to the Hugging Face Hub": "push_to_hub hub_model_id hub_strategy hub_token hub_private_repo "
    "hub_always_push hub_revision hub_model_revision",
    "dpokit logs its own way (console, metrics.jsonl), and evaluates by eval_strategy when there is eval data":
    "log_level log_level_replica log_on_each_node logging_dir logging_first_step logging_nan_inf_filter "
    "include_num_input_tokens_seen include_tokens_per_second skip_memory_metrics do_train do_eval do_predict "
    "prediction_loss_only eval_delay generate_during_eval",
    "speed or memory only; dpokit picks its own kernels, loaders and process setup": "tf32 use_liger_kernel "
    "liger_kernel_config torch_compile_backend torch_compile_mode torch_empty_cache_steps use_cache use_logits_to_keep "
    "bf16_full_eval fp16_full_eval half_precision_backend precompute_ref_batch_size eval_accumulation_steps "
    "auto_find_batch_size dataloader_num_workers dataloader_pin_memory dataloader_persistent_workers "
    "dataloader_prefetch_factor dataloader_drop_last use_bnb_nested_quant bnb_4bit_compute_dtype ddp_backend "
    "ddp_find_unused_parameters ddp_timeout ddp_bucket_cap_mb ddp_broadcast_buffers local_rank accelerator_config "
    "average_tokens_across_devices ignore_bias_buffers gradient_checkpointing_kwargs",
    "dpokit has no DeepSpeed; --fsdp true shards with FSDP2, by its own wrapping policy": "deepspeed fsdp_config",
    "dpokit reads the columns it needs; padding never enters its loss": "remove_unused_columns label_names "
    "dataset_text_field dataset_kwargs dataset_streaming padding_value label_pad_token_id pad_to_multiple_of",
    "dpokit's checkpoints hold what a resume needs, as safetensors": "save_safetensors save_only_model save_on_each_node "
    "restore_callback_states_from_checkpoint overwrite_output_dir ignore_data_skip",
    "dpokit shuffles with seed, trains without dropout, keeps a prompt's end and a completion's start, and adds no "
    "empty system message": "data_seed full_determinism disable_dropout truncation_mode auto_insert_empty_system_msg",
    "not read; give torch_dtype, attn_implementation and trust_remote_code as keys": "model_init_kwargs "
    "ref_model_init_kwargs",
    "dpokit's LoRA adapts the policy of a causal LM": "lora_task_type model_adapter_name ref_adapter_name "
    "force_use_ref_model",
    "not used by a dpokit run": "debug wandb_entity wandb_run_group max_eval_samples",
}

RULES: dict[str, Rule | str] = {
    **{key: why for why, keys in NO_EFFECT.items() for key in keys.split()},
    "model_name_or_path": to("model.name_or_path"), "model_revision": to("model.revision"),
    "use_flash_attention_2": when("model.attn_implementation", "flash_attention_2"),
    "torch_compile": to("model.compile"), "use_cpu": when("model.device", "cpu"), "use_peft": to("model.lora"),
    "lora_target_modules": to("model.lora_target_modules",
                              lambda v: None if v in ("all-linear", "all_linear") else [v] if isinstance(v, str) else v),
    **dict.fromkeys(("bf16", "fp16", "torch_dtype", "dtype"), _precision),
    **dict.fromkeys(("reference_free", "precompute_ref_log_probs", "sync_ref_model", "ref_model_sync_steps",
                     "ref_model_mixup_alpha"), _reference),
    "dataset_name": to("data.path"), "dataset_config": to("data.config_name"),
    "dataset_config_name": to("data.config_name"), "dataset_train_split": to("data.split"),
    "dataset_test_split": to("data.eval_split"), "dataset_mixture": to("data.mixture"),
    "dataset_mixer": to("data.mixture"), "dataset_splits": _splits, "max_train_samples": to("data.max_samples"),
    **dict.fromkeys(("dataset_num_proc", "preprocessing_num_workers"),
                    lambda v, _: {} if v is None else {"data.num_proc": v}),
    "padding_free": lambda v, _: {"data.layout": "packed" if truthy(v) else "padded"},
    "loss_type": to("loss.loss_type", lambda v: ",".join(v) if isinstance(v, list) else v),
    "rpo_alpha": to("loss.rpo_alpha", lambda v: v or 0.0), "output_dir": to("output.dir"),
    "report_to": to("output.report_to", lambda v: [] if v in ("none", ["none"], None) else [v] if isinstance(v, str)
                    else v),  # anything but a name or a list: the type check says so
    "wandb_project": to("output.project"), "disable_tqdm": when("output.progress", False),
    "num_train_epochs": to("train.epochs"), "learning_rate": to("train.lr"),
    "max_steps": to("train.steps", lambda v: None if v is None or int(v) < 0 else v),
    "per_device_train_batch_size": to("train.batch_size"), "per_device_eval_batch_size": to("train.eval_batch_size"),
    "gradient_accumulation_steps": to("train.grad_accum"), "lr_scheduler_type": to("train.scheduler"),
    "lr_scheduler_kwargs": to("train.scheduler_kwargs"), "adafactor": when("train.optim", "adafactor"),
    **dict.fromkeys(("adam_beta1", "adam_beta2"), lambda _, layer: {"train.adam_betas": [
        layer.get("adam_beta1", TrainConfig.adam_betas[0]), layer.get("adam_beta2", TrainConfig.adam_betas[1])]}),
    "evaluation_strategy": to("train.eval_strategy"), "fsdp": _fsdp,
    "resume_from_checkpoint": to("train.resume", lambda v: "latest" if v is True else None if v in (False, None)
                                 else str(v)),
    "f_divergence_type": stop_unless(lambda v: v in (None, "reverse_kl"), "dpokit's losses use the reverse KL"),
    "bnb_4bit_quant_type": stop_unless(lambda v: v in (None, "nf4"), "dpokit loads 4-bit weights as NF4"),
    "ld_alpha": stop_unless(lambda v: v in (None, 1), "dpokit has no LD-DPO length weighting (1 is plain DPO)"),
    **{key: stop_unless(lambda v: not v, why) for key, why in (("use_weighting", "dpokit has no WPO weighting"),
        ("neftune_noise_alpha", "dpokit adds no NEFTune noise"), ("use_dora", "dpokit trains plain LoRA"),
        ("use_rslora", "dpokit trains plain LoRA"), ("lora_modules_to_save", "dpokit trains the LoRA adapters alone"),
        ("optim_args", "not read; give adam_betas, adam_epsilon and weight_decay"),
        ("label_smoothing_factor", "not DPO's; use label_smoothing (cDPO)"),
        ("load_in_8bit", "dpokit loads quantised bases in 4-bit NF4 (load_in_4bit)"),
        ("tokenizer_name_or_path", "dpokit reads the tokenizer saved with the model"))},
}


def convert(flat: dict[str, Any], where: str) -> dict[str, Any]:
    """One layer's ``recipe.<key>`` entries -> dpokit's dotted keys (``unused.<key>``: why it has no
    effect). A dpokit key given in the same layer wins over a recipe key's conversion."""
    recipe = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("recipe.") and k != BETA_MARK}
    out = {k: v for k, v in flat.items() if not k.startswith("recipe.") or k == BETA_MARK}
    for name, value in recipe.items():
        rule = RULES[name]
        try:
            result = {f"unused.{name}": rule} if isinstance(rule, str) else rule(value, recipe)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}: {name}: {e}\n  fix: remove {name}, or give the value dpokit runs") from None
        for key, converted in result.items():
            out.setdefault(key, converted)
    return out


def finalize(flat: dict[str, Any]) -> dict[str, Any]:
    """After every layer: a recipe file's ``beta`` with an ORPO loss is also ``orpo_lambda`` (TRL's
    ``ORPOConfig`` has one ``beta``: the lambda of the odds-ratio term, and the scale of its rewards)."""
    beta, losses = flat.pop(BETA_MARK, None), [n.strip() for n in str(flat.get("loss.loss_type", "")).split(",")]
    if beta is not None and "orpo" in losses:
        flat.setdefault("loss.orpo_lambda", beta)
    return flat


def warning(why: dict[str, str]) -> str | None:
    """The one warning naming every recipe key with no effect here, grouped by why."""
    groups = {reason: [k for k in sorted(why) if why[k] == reason] for reason in dict.fromkeys(why[k] for k in sorted(why))}
    return "\n".join([f"warning: {len(why)} recipe key{'s have' if len(why) > 1 else ' has'} no effect in dpokit:",
                      *(f"  {', '.join(keys)}: {reason}" for reason, keys in groups.items())]) if why else None
