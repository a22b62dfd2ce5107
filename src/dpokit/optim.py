"""Optimizers and learning-rate schedules by the Hugging Face Trainer's names.

``train.optim`` takes the Trainer's ``optim`` values, built with the arguments the Trainer gives
them (``transformers/trainer_optimizer.py``): ``lr`` for every one; ``adam_betas`` and
``adam_epsilon`` for the AdamW family (Lion takes the betas alone); Adafactor with
``scale_parameter=False, relative_step=False``; weight decay on every weight but biases and norm
weights, as the Trainer groups them. bitsandbytes' 8-bit and paged optimizers run where
bitsandbytes runs them (a probe step before the model loads; bitsandbytes 0.50 on a CPU runs all but
the paged AdEMAMix ones, the paged ones without paging); elsewhere the run stops naming the nearest.

``train.scheduler`` takes every ``transformers.SchedulerType`` name, built by
``transformers.get_scheduler`` with ``train.scheduler_kwargs``; warmup is ``warmup_steps`` (below 1,
a fraction of the run) or ``ceil(warmup_ratio * steps)``, as transformers rounds it. The
metric-driven schedules (``reduce_lr_on_plateau``, ``greedy``) are stepped at each evaluation with
``metric_for_best_model``, not at every step, as the Trainer does.
"""

from __future__ import annotations

import difflib
import math
import sys
from typing import Any

from dpokit.config import TrainConfig
from dpokit.errors import ConfigError

TORCH_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop")
BNB_OPTIMIZERS = ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit", "lion_8bit", "lion_32bit",
                  "paged_lion_32bit", "paged_lion_8bit", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit",
                  "ademamix", "ademamix_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit")
# The Trainer's other names: optimizers from further packages or devices dpokit does not build.
ELSEWHERE = ("adamw_torch_xla", "adamw_torch_npu_fused", "adamw_anyprecision", "adamw_torch_4bit", "adamw_torch_8bit",
             "galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
             "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "lomo", "adalomo", "grokadamw",
             "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd", "apollo_adamw",
             "apollo_adamw_layerwise", "stable_adamw")
METRIC_SCHEDULES = ("reduce_lr_on_plateau", "greedy")
# Parameter names the Trainer spares weight decay (``Trainer.get_decay_parameter_names``).
NO_DECAY = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def nearest(name: str) -> str:
    """The optimizer dpokit builds without extra packages that is closest to ``name``."""
    if "8bit" in name or "4bit" in name:
        return "adamw_bnb_8bit" if name != "adamw_bnb_8bit" else "adamw_torch"
    return next((n for n in ("adafactor", "sgd", "rmsprop") if n in name), "adamw_torch")


def check_optim_name(name: str) -> None:
    """A ConfigError for a name dpokit cannot build: the Trainer's optimizers from other packages
    name the nearest one here; an unknown name lists every one."""
    if name in TORCH_OPTIMIZERS or name in BNB_OPTIMIZERS:
        return
    if name in ELSEWHERE:
        raise ConfigError(f"train.optim '{name}' needs a package or device dpokit does not use\n"
                          f"  fix: --optim {nearest(name)} is the nearest that runs here")
    # A name that begins one (``adamw``) means the first that it begins, torch's before bitsandbytes'.
    close = [n for n in (*TORCH_OPTIMIZERS, *BNB_OPTIMIZERS) if n.startswith(name)][:1] or \
        difflib.get_close_matches(name, (*TORCH_OPTIMIZERS, *BNB_OPTIMIZERS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown train.optim '{name}'{hint}\n  fix: choose one of "
                      f"{', '.join(TORCH_OPTIMIZERS)} (torch) or {', '.join(BNB_OPTIMIZERS)} (bitsandbytes)")


def _groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """The trained parameters in two groups, as the Trainer makes them (``get_decay_parameter_names``):
    weight decay for weights, none for biases and LayerNorm / RMSNorm weights."""
    import torch
    from transformers.trainer_pt_utils import get_parameter_names

    decayed = set(get_parameter_names(model, [torch.nn.LayerNorm], NO_DECAY))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decayed], "weight_decay": weight_decay},
              {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _optimizer_class(name: str, cfg: TrainConfig, device_type: str) -> tuple[Any, dict[str, Any]]:
    """The optimizer class and its arguments besides the parameters, as the Trainer picks them."""
    import torch

    adam = {"betas": tuple(cfg.adam_betas), "eps": cfg.adam_epsilon}
    if name in ("adamw_torch", "adamw_torch_fused"):  # fused on a CPU (fast there), or when asked
        fused = name == "adamw_torch_fused" or device_type == "cpu"
        return torch.optim.AdamW, {**adam, **({"fused": True} if fused else {})}
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor, {"scale_parameter": False, "relative_step": False}
    if name in ("sgd", "adagrad", "rmsprop"):
        return {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop}[name], {}
    try:
        import bitsandbytes.optim as bnb
    except ImportError:
        raise ConfigError(f"train.optim '{name}' needs bitsandbytes, which is not installed\n  fix: pip install "
                          f"'dpokit[qlora]', or use --optim {nearest(name)}") from None
    bits = {"optim_bits": 8 if "8bit" in name else 32}
    paged = {"is_paged": "paged" in name}
    if "ademamix" in name:
        return bnb.AdEMAMix, {"betas": (*cfg.adam_betas, 0.9999), "alpha": 5.0, "eps": cfg.adam_epsilon, **bits, **paged}
    if "lion" in name:
        return bnb.Lion, {"betas": tuple(cfg.adam_betas), **bits, **paged}
    if "rmsprop" in name:
        return bnb.RMSprop, bits
    return bnb.AdamW, {**adam, **bits, **paged}


def check_optimizer(cfg: TrainConfig, device: Any) -> None:
    """Before any model loads: the optimizer can be built, and a bitsandbytes one takes a step on
    ``device`` (a probe of 2**20 elements: bitsandbytes picks its kernels by size, and on a CPU the
    paged AdEMAMix ones fail only past about 10**5); else a ConfigError naming the nearest that runs."""
    import torch

    check_optim_name(cfg.optim)
    cls, kwargs = _optimizer_class(cfg.optim, cfg, device.type)
    if cfg.optim in BNB_OPTIMIZERS:
        probe = torch.nn.Parameter(torch.zeros(1 << 20, device=device))
        probe.grad = torch.ones_like(probe)
        try:
            cls([probe], lr=1e-3, **kwargs).step()
        except (RuntimeError, NotImplementedError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"train.optim '{cfg.optim}' does not run on {device} with this bitsandbytes ({first})"
                              f"\n  fix: --optim {nearest(cfg.optim)} is the nearest that runs here") from None


def build_optimizer(model: Any, cfg: TrainConfig, device: Any) -> Any:
    """The optimizer ``cfg.optim`` over the trainable parameters of ``model`` (`check_optimizer` first
    for a clear stop before the model loads)."""
    check_optim_name(cfg.optim)
    cls, kwargs = _optimizer_class(cfg.optim, cfg, device.type)
    return cls(_groups(model, cfg.weight_decay), lr=cfg.lr, **kwargs)


def warmup_steps(cfg: TrainConfig, total: int) -> int:
    """Warmup steps of a run of ``total`` optimizer steps, rounded up as transformers rounds them."""
    if cfg.warmup_steps is None:
        return math.ceil(cfg.warmup_ratio * total)
    return int(cfg.warmup_steps) if cfg.warmup_steps >= 1 else math.ceil(cfg.warmup_steps * total)


def transformers_get_scheduler() -> Any:
    """``transformers.get_scheduler``, imported without importing peft.

    Its module imports ``transformers.trainer_utils``, which imports peft, and through it
    bitsandbytes, wherever peft is installed: 150 MiB of resident memory and two seconds for every
    run, LoRA or not, for names only the Hugging Face Trainer uses. The import runs with
    transformers told that peft is absent; afterwards ``trainer_utils`` asks the real question
    again (a Trainer built later in the same process then fails on the missing names instead of
    treating a peft model as a plain one). LoRA runs import peft themselves (``lora.py``).
    """
    import transformers.utils

    real = getattr(transformers.utils, "is_peft_available", None)
    if "transformers.optimization" in sys.modules or real is None:  # imported already, or another layout
        from transformers import get_scheduler

        return get_scheduler
    transformers.utils.is_peft_available = lambda: False
    try:
        import transformers.optimization
    finally:
        transformers.utils.is_peft_available = real
    trainer_utils = sys.modules.get("transformers.trainer_utils")
    if trainer_utils is not None and hasattr(trainer_utils, "is_peft_available"):
        trainer_utils.is_peft_available = real
    return transformers.optimization.get_scheduler


def build_scheduler(optimizer: Any, cfg: TrainConfig, total_steps: int) -> Any:
    """``transformers.get_scheduler(cfg.scheduler, ...)``; arguments that do not fit it are a ConfigError."""
    get_scheduler = transformers_get_scheduler()
    kwargs = dict(cfg.scheduler_kwargs or {})
    try:
        return get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup_steps(cfg, total_steps),
                             num_training_steps=total_steps, scheduler_specific_kwargs=kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"train.scheduler '{cfg.scheduler}' with scheduler_kwargs {kwargs}: {e}\n  fix: give "
                          "the schedule's own arguments in --scheduler-kwargs (the Trainer's lr_scheduler_kwargs), "
                          "e.g. {min_lr_rate: 0.1} for cosine_with_min_lr") from None


def check_scheduler(cfg: TrainConfig, evaluates: bool) -> None:
    """Before any model loads: the schedule builds with its arguments (on a stand-in optimizer), and a
    metric-driven one has evaluations to follow."""
    import torch

    if cfg.scheduler in METRIC_SCHEDULES and not evaluates:
        raise ConfigError(f"train.scheduler '{cfg.scheduler}' follows {cfg.metric_for_best_model} at each "
                          "evaluation, and this run does not evaluate\n  fix: give eval data (--eval-data, "
                          "--eval-split or --eval-fraction) with an eval_strategy other than 'no', or another schedule")
    build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), cfg, 100)


def step_scheduler(scheduler: Any) -> None:
    """After an optimizer step: the step-driven schedules move on; metric-driven ones wait for an evaluation."""
    if type(scheduler).__name__ not in ("ReduceLROnPlateau", "GreedyLR"):
        scheduler.step()


def observe_eval(scheduler: Any, metrics: dict[str, float], metric: str) -> None:
    """After an evaluation: a metric-driven schedule steps with ``metric`` (``metric_for_best_model``)."""
    if type(scheduler).__name__ in ("ReduceLROnPlateau", "GreedyLR"):
        if metric not in metrics:
            raise ConfigError(f"train.metric_for_best_model '{metric}' is not an evaluation metric\n  fix: "
                              f"use one of {', '.join(sorted(k for k in metrics if k.startswith('eval_')))}")
        scheduler.step(metrics[metric])
