"""TRL, Hugging Face Trainer and alignment-handbook keys, read as their authors mean them.

A recipe for TRL's trainers or the alignment-handbook scripts is a flat YAML mapping of their keys
(``model_name_or_path``, ``learning_rate``, ``dataset_mixture``, ...), and the same names work as
flags. `RULES` is the one table of those keys. Each key, by its rule:

* takes effect, converted onto dpokit's keys (``bf16: true`` -> ``model.precision: bf16``,
  ``max_steps: -1`` -> no step limit, ``resume_from_checkpoint: true`` -> ``train.resume: latest``);
* has no effect here, and is named in the run's one warning with why (hub uploads, log levels, ...);
* or stops the run, when ignoring it would silently train something else (``use_weighting``, ...).

Keys that are dpokit fields by the same name (``beta``, ``max_length``, ``warmup_ratio``, ``optim``,
``save_strategy``, ``save_total_limit``, ``run_name``, ...) need no rule. In a recipe file ``beta``
with an ORPO loss is also ORPO's lambda, as TRL's ``ORPOConfig`` reads it (`finalize`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dpokit.config import TrainConfig
from dpokit.errors import ConfigError

Rule = Callable[[Any, dict[str, Any]], dict[str, Any]]  # (value, the layer's recipe keys) -> {dotted key: value}
BETA_MARK = "recipe.orpo_beta"  # a recipe file's beta, for `finalize`


def truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def to(key: str, convert: Callable[[Any], Any] = lambda v: v) -> Rule:
    """The rule of a key that sets one dpokit key (``rule.target``, shown in ``--help``)."""
    def rule(value: Any, _: dict[str, Any]) -> dict[str, Any]:
        return {key: convert(value)}

    rule.target = key  # type: ignore[attr-defined]
    return rule


def when(key: str, value: Any) -> Rule:
    """The rule of a switch: when true, ``key`` takes ``value``; false changes nothing."""
    return lambda v, _: {key: value} if truthy(v) else {}


def stop_unless(ok: Callable[[Any], bool], why: str) -> Rule:
    """The rule of a key that would train something else here unless ``ok(value)``."""
    def rule(value: Any, _: dict[str, Any]) -> dict[str, Any]:
        if not ok(value):
            raise ValueError(f"{value!r} cannot run as meant: {why}")
        return {}

    return rule


DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16", "float32": "fp32",
          "fp32": "fp32", "float": "fp32"}


def _precision(_: Any, layer: dict[str, Any]) -> dict[str, Any]:
    """bf16 / fp16 / torch_dtype together -> model.precision (autocast over fp32 master weights)."""
    bf16, fp16 = truthy(layer.get("bf16")), truthy(layer.get("fp16"))
    if bf16 and fp16:
        raise ValueError("bf16 and fp16 are both true; set one of them")
    if bf16 or fp16:
        return {"model.precision": "bf16" if bf16 else "fp16"}
    dtype = layer.get("torch_dtype", layer.get("dtype"))
    if dtype in (None, "auto"):
        return {}
    if str(dtype) not in DTYPES:
        raise ValueError(f"torch_dtype {dtype!r} is not one of {', '.join(DTYPES)} or auto")
    return {"model.precision": DTYPES[str(dtype)]}


def _betas(_: Any, layer: dict[str, Any]) -> dict[str, Any]:
    default = TrainConfig.adam_betas  # the beta not given keeps its default (TRL's too)
    return {"train.adam_betas": [layer.get("adam_beta1", default[0]), layer.get("adam_beta2", default[1])]}


# TRL's DPOConfig defaults of TR-DPO's refresh (Gorbatovski et al. 2024), used when sync_ref_model is on.
TRL_SYNC_STEPS, TRL_MIXUP_ALPHA = 512, 0.6


def _reference(_: Any, layer: dict[str, Any]) -> dict[str, Any]:
    """TRL's reference switches: ``reference_free`` -> none, ``precompute_ref_log_probs`` -> precomputed,
    ``sync_ref_model`` (with ``ref_model_sync_steps``, ``ref_model_mixup_alpha``) -> a refresh every so
    many steps; without ``sync_ref_model: true`` the two refresh settings do nothing (as in TRL)."""
    on = [k for k in ("reference_free", "precompute_ref_log_probs", "sync_ref_model") if truthy(layer.get(k))]
    if len(on) > 1:
        raise ValueError(f"{' and '.join(on)} are {'both' if len(on) == 2 else 'all'} true, but each picks a "
                         "different reference; set one of them")
    out: dict[str, Any] = {"reference_free": {"model.reference": "none"},
                           "precompute_ref_log_probs": {"model.reference": "precomputed"}}.get(on[0] if on else "", {})
    for key, target, default in (("ref_model_sync_steps", "model.ref_refresh_steps", TRL_SYNC_STEPS),
                                 ("ref_model_mixup_alpha", "model.ref_refresh_mix", TRL_MIXUP_ALPHA)):
        if "sync_ref_model" in on:
            out[target] = layer.get(key, default)
        elif key in layer:
            out[f"unused.{key}"] = "read only with sync_ref_model: true, as in TRL"
    return out


def _splits(value: Any, _: dict[str, Any]) -> dict[str, Any]:
    """alignment-handbook's ``dataset_splits``: the first ``train*`` split trains, the first ``test*`` evaluates."""
    splits = [value] if isinstance(value, str) else list(value or [])
    train, test = [x for x in splits if "train" in str(x)], [x for x in splits if "test" in str(x)]
    return {**({"data.split": train[0]} if train else {}), **({"data.eval_split": test[0]} if test else {})}


def _fsdp(value: Any, _: dict[str, Any]) -> dict[str, Any]:
    """The Trainer's ``fsdp`` (``"full_shard auto_wrap offload"``, a list, or true) -> FSDP2, offload kept."""
    words = value.split() if isinstance(value, str) else list(value) if isinstance(value, list) else []
    if not (truthy(value) or [w for w in words if str(w).lower() not in ("false", "no", "")]):
        return {}
    return {"train.parallelism": "fsdp", **({"train.fsdp_offload": True} if "offload" in words else {})}


def _report_to(value: Any) -> Any:
    names = [value] if isinstance(value, str) else value  # anything but a name or a list: the type check says so
    return [] if names in (["none"], [], None) else names


def _resume(value: Any) -> str | None:
    return "latest" if value is True else None if value in (False, None) else str(value)


def _lora_targets(value: Any) -> list[str] | None:
    return None if value in ("all-linear", "all_linear") else [value] if isinstance(value, str) else value


def _loss_type(value: Any) -> str:
    return ",".join(value) if isinstance(value, list) else value


NO_EFFECT = {  # why, then the keys: each of these is listed in the run's one warning
    "dpokit does not upload to the Hugging Face Hub": "push_to_hub hub_model_id hub_strategy hub_token "
    "hub_private_repo hub_always_push hub_revision hub_model_revision",
    "dpokit prints its own progress and metrics.jsonl": "log_level log_level_replica log_on_each_node logging_dir "
    "logging_first_step logging_nan_inf_filter include_num_input_tokens_seen include_tokens_per_second "
    "skip_memory_metrics",
    "dpokit trains, then evaluates by eval_strategy when there is eval data": "do_train do_eval do_predict",
    "speed or memory only; dpokit picks its own kernels and loaders": "tf32 use_liger_kernel liger_kernel_config "
    "torch_compile_backend torch_compile_mode torch_empty_cache_steps use_cache use_logits_to_keep jit_mode_eval "
    "use_ipex half_precision_backend fp16_opt_level bf16_full_eval fp16_full_eval precompute_ref_batch_size "
    "eval_accumulation_steps auto_find_batch_size dataloader_num_workers dataloader_pin_memory "
    "dataloader_persistent_workers dataloader_prefetch_factor dataloader_drop_last dataloader_multiprocessing_context "
    "dataloader_in_order use_bnb_nested_quant bnb_4bit_compute_dtype",
    "dpokit checkpoints non-reentrant (the same gradients)": "gradient_checkpointing_kwargs "
    "activation_checkpointing_kwargs gradient_checkpointing_use_reentrant",
    "dpokit sets up torchrun / DDP itself": "ddp_backend ddp_find_unused_parameters ddp_timeout ddp_bucket_cap_mb "
    "ddp_broadcast_buffers ddp_static_graph local_rank accelerator_config parallelism_config split_batches "
    "dispatch_batches average_tokens_across_devices ignore_bias_buffers",
    "dpokit has no DeepSpeed; --fsdp true shards the model with FSDP2": "deepspeed",
    "dpokit's FSDP2 has its own wrapping policy": "fsdp_config fsdp_min_num_params fsdp_transformer_layer_cls_to_wrap",
    "dpokit reads the columns it needs and leaves the rest": "remove_unused_columns label_names dataset_text_field "
    "dataset_kwargs text_column dataset_streaming",
    "padding never enters dpokit's loss": "padding_value label_pad_token_id pad_to_multiple_of",
    "dpokit's checkpoints hold what a resume needs, as safetensors": "save_safetensors save_only_model "
    "save_on_each_node restore_callback_states_from_checkpoint overwrite_output_dir ignore_data_skip",
    "dpokit shuffles with seed": "data_seed full_determinism train_sampling_strategy",
    "dpokit always trains without dropout": "disable_dropout",
    "dpokit keeps a prompt's last tokens and a completion's first": "truncation_mode truncation_side",
    "dpokit's evaluation logs its own metrics": "prediction_loss_only eval_delay eval_do_concat_batches "
    "eval_use_gather_object batch_eval_metrics include_for_metrics include_inputs_for_metrics past_index "
    "generate_during_eval",
    "dpokit's chat handling adds no empty system message": "auto_insert_empty_system_msg",
    "not read; give torch_dtype, attn_implementation and trust_remote_code as keys": "model_init_kwargs "
    "ref_model_init_kwargs",
    "dpokit's LoRA adapts the policy of a causal LM": "lora_task_type model_adapter_name ref_adapter_name "
    "force_use_ref_model",
    "not used by a dpokit run": "debug ray_scope torchdynamo mp_parameters trackio_space_id tools wandb_entity "
    "wandb_run_group max_eval_samples dataset_configs optim_target_modules",
}

RULES: dict[str, Rule | str] = {
    **{key: why for why, keys in NO_EFFECT.items() for key in keys.split()},
    "model_name_or_path": to("model.name_or_path"), "model_revision": to("model.revision"),
    "use_flash_attention_2": when("model.attn_implementation", "flash_attention_2"),
    "torch_compile": to("model.compile"), "use_cpu": when("model.device", "cpu"), "use_peft": to("model.lora"),
    "lora_target_modules": to("model.lora_target_modules", _lora_targets),
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
    "loss_type": to("loss.loss_type", _loss_type), "rpo_alpha": to("loss.rpo_alpha", lambda v: v or 0.0),
    "output_dir": to("output.dir"), "report_to": to("output.report_to", _report_to),
    "wandb_project": to("output.project"), "disable_tqdm": when("output.progress", False),
    "num_train_epochs": to("train.epochs"), "learning_rate": to("train.lr"),
    "max_steps": to("train.steps", lambda v: None if v is None or int(v) < 0 else v),
    "per_device_train_batch_size": to("train.batch_size"),
    "per_device_eval_batch_size": to("train.eval_batch_size"),
    "gradient_accumulation_steps": to("train.grad_accum"), "lr_scheduler_type": to("train.scheduler"),
    "lr_scheduler_kwargs": to("train.scheduler_kwargs"), "adafactor": when("train.optim", "adafactor"),
    **dict.fromkeys(("adam_beta1", "adam_beta2"), _betas),
    "evaluation_strategy": to("train.eval_strategy"), "resume_from_checkpoint": to("train.resume", _resume),
    "fsdp": _fsdp,
    "f_divergence_type": stop_unless(lambda v: v in (None, "reverse_kl"), "dpokit's losses use the reverse KL "
                                     "(TRL's default)"),
    "use_weighting": stop_unless(lambda v: not truthy(v), "dpokit has no WPO weighting"),
    "ld_alpha": stop_unless(lambda v: v is None, "dpokit has no LD-DPO length weighting"),
    "neftune_noise_alpha": stop_unless(lambda v: v is None, "dpokit adds no NEFTune noise"),
    "optim_args": stop_unless(lambda v: not v, "dpokit does not read optim_args; give adam_betas, adam_epsilon "
                              "and weight_decay"),
    "label_smoothing_factor": stop_unless(lambda v: not v, "the Trainer's label smoothing is not DPO's; use "
                                          "label_smoothing (cDPO)"),
    "load_in_8bit": stop_unless(lambda v: not truthy(v), "dpokit loads quantised bases in 4-bit NF4 "
                                "(load_in_4bit: true)"),
    "bnb_4bit_quant_type": stop_unless(lambda v: v in (None, "nf4"), "dpokit loads 4-bit weights as NF4"),
    **dict.fromkeys(("use_dora", "use_rslora"), stop_unless(lambda v: not truthy(v), "dpokit trains plain LoRA")),
    "lora_modules_to_save": stop_unless(lambda v: not v, "dpokit trains the LoRA adapters alone"),
    "tokenizer_name_or_path": stop_unless(lambda v: v is None, "dpokit reads the tokenizer saved with the model"),
    "is_encoder_decoder": stop_unless(lambda v: not truthy(v), "dpokit trains causal LMs"),
}


def convert(flat: dict[str, Any], where: str) -> dict[str, Any]:
    """One layer's ``recipe.<key>`` entries -> dpokit's dotted keys (``unused.<key>`` holds a key with no
    effect, with why). A dpokit key given in the same layer wins over a recipe key's conversion."""
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
    beta = flat.pop(BETA_MARK, None)
    losses = [n.strip() for n in str(flat.get("loss.loss_type", "")).split(",")]
    if beta is not None and "orpo" in losses and "loss.orpo_lambda" not in flat:
        flat["loss.orpo_lambda"] = beta
    return flat
