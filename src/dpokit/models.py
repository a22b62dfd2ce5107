"""Loading the policy, the reference and the tokenizer; precision; the built-in tiny model."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpokit.attention import choose_attention
from dpokit.config import ModelConfig
from dpokit.errors import ConfigError
from dpokit.head import step_casts
from dpokit.lora import (
    adapter_base,
    apply_lora,
    keep_4bit_layout,
    merge_adapter_dir,
    merged_dir_beside,
    quantization_config,
)
from dpokit.modelcheck import check_source, load_failure

TINY = "tiny"  # the built-in tiny model's name (``tiny.py`` builds it; the caller resolves it to a directory)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AVX-512 BF16 or AMX, where bf16 matrix multiplies beat fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the hardware runs it fast, else fp32."""
    if precision != "auto":
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("precision bf16 asked for, but this GPU has no bf16; use --precision fp16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def precision_notes(precision: str, device: torch.device) -> list[str]:
    """A warning when the precision asked for is one the CPU can only emulate (bf16 without
    AVX-512 BF16 or AMX: every bf16 matmul many times slower than fp32)."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        return ["warning: --precision bf16 on a CPU without AVX-512 BF16 or AMX: its bf16 matrix multiplies are "
                "emulated, many times slower than fp32. --precision auto (the default) picks fp32 on this CPU."]
    return []


def autocast(precision: str, device: torch.device):
    """Mixed-precision context: weights stay fp32, matmuls run in bf16 / fp16."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def casts_kept(precision: str, device: torch.device, sharded: bool = False):
    """An optimizer step's context, around its forwards and backwards: each trainable fp32 weight
    is cast to the autocast dtype once per step, not once per forward, per recomputation under
    gradient checkpointing and per micro-batch.

    Autocast keeps its casts of trainable weights until the outermost autocast context ends; this
    is that outermost context, and it runs nothing in low precision itself (the backward stays as
    it was). The casts cost one low-precision copy of the trainable weights for the step, so
    sharded (FSDP) models, whose point is not to hold them all, go without.
    """
    if precision == "fp32" or sharded:
        return contextlib.nullcontext()
    return _casts_kept(device)


@contextlib.contextmanager
def _casts_kept(device: torch.device) -> Iterator[None]:
    with torch.autocast(device.type, enabled=False), step_casts():  # the fused head's cast too (``head.py``)
        yield


def disable_dropout(model: nn.Module) -> None:
    """DPO runs without dropout in policy and reference (the reference implementation and TRL).

    Dropout layers get p = 0, and so do the float ``*dropout*`` rates attention modules keep for
    their kernels (Llama's ``attention_dropout``, passed to SDPA while training). The model's
    config is left as it is, so the saved model keeps its own settings.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)


def _source(cfg: ModelConfig) -> str:
    return cfg.weights or cfg.name_or_path


def _flag(cfg: ModelConfig) -> str:
    return "--weights" if cfg.weights else "--model"


def _load_failure(source: str, error: Exception, cfg: ModelConfig) -> Exception:
    """A library's error while loading ``source``, as one message with the path (OOM passes)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return error
    return load_failure(source, error, _flag(cfg))


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The tokenizer of the policy's source (an adapter directory's base when it has none)."""
    from transformers import AutoTokenizer

    source = check_source(_source(cfg), _flag(cfg))  # a missing or corrupt directory fails here, named
    if adapter_base(source) and not (Path(source) / "tokenizer_config.json").is_file():
        source = adapter_base(source)  # an adapter directory saved without its tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=cfg.revision if source == cfg.name_or_path else None,
            trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # noqa: BLE001 (transformers, tokenizers and OS errors alike)
        raise _load_failure(source, e, cfg) from None
    return tokenizer


def load_model(cfg: ModelConfig, device: torch.device, max_length: int | None = None) -> nn.Module:
    """Load the policy as an fp32 ``AutoModelForCausalLM`` (master weights), dropout off.

    With ``max_length`` (training) and no ``attn_implementation`` named, a CPU run takes the
    attention kernel this machine runs faster at that length (`dpokit.attention`).

    With ``load_in_4bit`` the linear weights are 4-bit NF4 (QLoRA). A saved LoRA adapter
    directory (``adapter_config.json``) is loaded onto its base and merged, so a run that starts
    from an SFT adapter starts from, and refers to, the SFT model.
    """
    from transformers import AutoModelForCausalLM

    if cfg.weights and not Path(cfg.weights).expanduser().is_dir():
        raise ConfigError(f"--weights {cfg.weights}: no such directory\n  fix: pass an earlier run's output, for "
                          "example dpo_checkpoints/final or dpo_checkpoints/checkpoint-N")
    source = check_source(_source(cfg), _flag(cfg), tokenizer=False)
    base = adapter_base(source)
    if base is not None and (merged := merged_dir_beside(source)) is not None:
        # dpokit saved the merge beside the adapter: load it as it is. Under 4-bit this quantises
        # the merged weights once, where merging into an already-quantised base would round twice.
        source, base = merged, None
    kwargs: dict[str, Any] = {"dtype": torch.float32, "trust_remote_code": cfg.trust_remote_code}
    if cfg.load_in_4bit:
        kwargs.update(quantization_config=quantization_config(), device_map={"": device})
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if source == cfg.name_or_path and cfg.revision:
        kwargs["revision"] = cfg.revision
    try:
        model = AutoModelForCausalLM.from_pretrained(base or source, **kwargs)
        if base is not None:
            model = merge_adapter_dir(model, source)
            if not cfg.load_in_4bit:
                model.requires_grad_(True)  # peft froze the base; a full fine-tune trains it all
    except Exception as e:  # noqa: BLE001 (safetensors' SafetensorError is no OSError)
        raise _load_failure(base or source, e, cfg) from None
    disable_dropout(model)
    if max_length and not cfg.attn_implementation:
        choose_attention(model, device, resolve_precision(cfg.precision, device), max_length)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    if cfg.load_in_4bit:
        keep_4bit_layout(model)
        return model  # placed by device_map; 4-bit models refuse .to()
    return model.to(device)


def load_policy(cfg: ModelConfig, device: torch.device, max_length: int | None = None) -> nn.Module:
    """The policy: `load_model`, wrapped with fresh LoRA adapters when ``cfg.lora`` is set."""
    model = load_model(cfg, device, max_length)
    return apply_lora(model, cfg) if cfg.lora else model


def base_model_warning(cfg: ModelConfig, tokenizer: Any) -> str | None:
    """A warning when DPO starts from what looks like a base (pretrained-only) model, else None.

    Looks base: no chat template, not written by dpokit (an SFT or earlier DPO output), and no
    chat / instruct marker in the name. The built-in tiny model is a documented demo: no warning.
    """
    if (cfg.name_or_path == TINY and cfg.weights is None) or tokenizer.chat_template:
        return None
    source = _source(cfg)
    if any((Path(source) / up / "dpokit_config.yaml").is_file() for up in (".", "..")):
        return None
    if any(marker in source.lower() for marker in ("instruct", "chat", "sft", "-it", "dpo", "rlhf", "tulu")):
        return None
    return (f"warning: {source} has no chat template and looks like a base (pretrained-only) model. DPO "
            "aligns a model that already follows instructions: fine-tune it first with `dpokit sft --model "
            f"{source} --data SFT_DATA`, then pass `--model sft_checkpoints/final` here.")


def frozen_copy(model: nn.Module) -> nn.Module:
    """The reference: a frozen copy of the starting policy, eval mode, no gradients."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def enable_checkpointing(model: nn.Module) -> None:
    """Turn on activation (gradient) checkpointing, non-reentrant, under either transformers name."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
