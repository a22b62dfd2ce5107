"""LoRA and QLoRA through ``peft``: adapters on the policy, starting from an adapter, saving merged.

* `apply_lora` wraps the policy in a peft model whose LoRA ``B`` matrices start at zero, so the
  policy equals its base at step 0 and the reference can be the same model with its adapters
  switched off (``reference.py``): no second copy in memory.
* QLoRA (``load_in_4bit``) loads the frozen base in 4-bit NF4 with ``bitsandbytes`` (Dettmers et
  al. 2023) and trains the LoRA adapters in fp32 on top. It runs on CPU too.
* `merge_adapter_dir` loads a saved adapter (``adapter_config.json``) onto its base and merges it:
  DPO that starts from an SFT adapter then trains on, and refers to, the SFT model, not the raw base.
  A new adapter trained on top is correct only on that merged model, so the merged model is named
  after the merged directory dpokit writes beside an adapter (``final/`` for ``final/adapter/``),
  and that name is what the new adapter's ``base_model_name_or_path`` records.
* `save_policy` writes what ``final/`` holds: the merged model (loadable by
  ``AutoModelForCausalLM`` and ``transformers.pipeline``, full precision even for QLoRA) and the
  adapter alone under ``adapter/``. The policy in memory is never modified by a save.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpokit.config import ModelConfig
from dpokit.errors import ConfigError

ADAPTER_DIR = "adapter"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Set on a model that has an adapter merged in but no merged directory to be named after: the
# adapter directory. A new adapter saved from it names the raw base, and is not correct on it alone.
UNNAMED_MERGE = "dpokit_merged_adapter"


def find_peft(model: nn.Module) -> Any | None:
    """The peft model inside DDP / compile wrappers, or None when the model has no adapters."""
    while True:
        if type(model).__name__.startswith("Peft") and hasattr(model, "disable_adapter"):
            return model
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return None


def adapter_base(path: str | Path) -> str | None:
    """The base model named by a saved adapter directory, or None if ``path`` is not one."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{config} names no base model (base_model_name_or_path); pass the base with "
                          "--model and merge the adapter first")
    return base


def quantization_config() -> Any:
    """The 4-bit NF4 settings of QLoRA. Matmuls compute in fp32; autocast lowers them as for any layer."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("load_in_4bit needs bitsandbytes: pip install 'dpokit[qlora]'") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)


def keep_4bit_layout(model: nn.Module) -> None:
    """Keep bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX-512 BF16, a 4-bit layer in eval mode without gradients repacks its weight
    in place; that fails for widths not divisible by 32 and makes eval and reference passes use
    another kernel than training. One layout everywhere keeps the numbers comparable.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def merged_dir_beside(adapter_dir: str | Path) -> str | None:
    """The directory holding ``adapter_dir``'s adapter merged into its base, or None.

    dpokit saves the merged model with its adapter in ``adapter/`` under it, so that is the parent
    directory when it holds a model (``config.json`` and weights) other than the adapter's own base.
    """
    parent = Path(os.path.abspath(adapter_dir)).parent
    if not (parent / "config.json").is_file() or not any((parent / name).is_file() for name in WEIGHT_FILES):
        return None
    base = adapter_base(adapter_dir)
    if base is not None and Path(base).is_dir() and Path(base).resolve() == parent.resolve():
        return None  # the adapter was saved inside its own base
    return str(parent)


def merge_adapter_dir(base: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """``base`` with the saved adapter in ``adapter_dir`` merged into its weights, named for that.

    The name (``name_or_path``) is what peft records as the base of an adapter trained on top, so
    it becomes the merged directory beside the adapter (`merged_dir_beside`). Without one the raw
    base's name stays, and the model is marked (``UNNAMED_MERGE``) so `apply_lora` can warn.
    """
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged = merged_dir_beside(adapter_dir)
    if merged is not None:
        model.name_or_path = model.config.name_or_path = merged
    else:
        setattr(model, UNNAMED_MERGE, str(adapter_dir))
    return model


def unnamed_merge_warning(model: nn.Module) -> str | None:
    """The warning for a LoRA adapter trained on a model with an adapter merged in but no merged
    directory to name as its base (see `merge_adapter_dir`), else None."""
    adapter_dir = getattr(model, UNNAMED_MERGE, None)
    if adapter_dir is None:
        return None
    raw = getattr(model, "name_or_path", None) or "the raw base"
    return (f"warning: the LoRA adapter trained here goes on {raw} with the adapter {adapter_dir} merged in, "
            f"and no merged model lies beside that adapter (config.json and weights in "
            f"{Path(os.path.abspath(adapter_dir)).parent}). The adapter saved in adapter/ names {raw} as its "
            f"base, but it is correct only on top of the merged model: load {raw}, merge {adapter_dir} into it, "
            "then apply this adapter; or use the merged model saved beside adapter/, which holds both.")


def apply_lora(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Wrap ``model`` with fresh LoRA adapters (B = 0: the policy starts equal to its base)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if (warning := unnamed_merge_warning(model)) is not None:
        warnings.warn(warning, stacklevel=2)
    if cfg.load_in_4bit:
        # Casts the few full-precision weights (norms, embeddings) to fp32, freezes the base and
        # lets gradients flow from the embedding output (needed with gradient checkpointing).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules or "all-linear", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as e:  # e.g. target modules not found in the model
        raise ConfigError(f"cannot add LoRA adapters: {str(e).splitlines()[0]}\n"
                          "  fix: check --lora-target-modules against the model's module names") from None


# ---- saving ------------------------------------------------------------------------------------


def _dense_weight(layer: nn.Module) -> torch.Tensor:
    """A full-precision copy of a linear layer's weight (4-bit weights are dequantized)."""
    weight = layer.weight
    if getattr(weight, "quant_state", None) is not None:
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state).float()
    return weight.detach().float().clone()


def merged_state_dict(peft_model: Any) -> dict[str, torch.Tensor]:
    """Weights of the base model with the active LoRA updates added, under the base's own names.

    Only adapted (and 4-bit) layers get new tensors, ``W + (alpha / r) B A``; every other entry is
    the policy's own tensor, not a copy.
    """
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    handled: set[str] = set()
    for name, module in base.named_modules():
        is_lora = isinstance(module, LoraLayer)
        quantized = getattr(getattr(module, "weight", None), "quant_state", None) is not None
        if not (is_lora or quantized) or name.endswith(".base_layer"):  # base layers: with their LoRA layer
            continue
        layer = module.get_base_layer() if is_lora else module
        weight = _dense_weight(layer)
        if is_lora:
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).detach().float()
        merged[f"{name}.weight"] = weight
        if getattr(layer, "bias", None) is not None:
            merged[f"{name}.bias"] = layer.bias.detach()
        handled.add(name)
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        clean = key.replace(".base_layer.", ".")
        parts = clean.split(".")
        if any(".".join(parts[:i]) in handled for i in range(1, len(parts))):
            continue  # an adapted or 4-bit layer: written above (with its quantization state left out)
        merged.setdefault(clean, value)
    return merged


def merged_model(peft_model: Any) -> nn.Module:
    """A plain transformers model holding the merged weights (shares the policy's other tensors)."""
    from transformers import AutoModelForCausalLM

    base = peft_model.get_base_model()
    config = copy.deepcopy(base.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(merged_state_dict(peft_model), strict=False, assign=True)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied]:
        raise RuntimeError(f"merging the LoRA adapter: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    if getattr(base, "generation_config", None) is not None:
        model.generation_config = copy.deepcopy(base.generation_config)
    return model


def save_policy(model: nn.Module, path: Path, tokenizer: Any | None = None) -> None:
    """Write a Hugging Face model directory: plain weights, or with LoRA the merged model plus the
    adapter in ``path/adapter`` (with the tokenizer, so the adapter directory loads on its own)."""
    peft_model = find_peft(model)
    if peft_model is None:
        model.save_pretrained(path, safe_serialization=True)
        return
    merged_model(peft_model).save_pretrained(path, safe_serialization=True)
    peft_model.save_pretrained(path / ADAPTER_DIR, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path / ADAPTER_DIR)
    if (warning := unnamed_merge_warning(peft_model.get_base_model())) is not None:
        card = path / ADAPTER_DIR / "README.md"  # peft's model card: the warning travels with the adapter
        text = card.read_text(encoding="utf-8") if card.is_file() else ""
        card.write_text(f"{text}\n## Base model\n\n{warning.removeprefix('warning: ')}\n", encoding="utf-8")
