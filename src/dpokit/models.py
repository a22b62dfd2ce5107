"""Loading the policy, the reference and the tokenizer; precision; the built-in tiny model."""

from __future__ import annotations

import copy
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpokit.config import ModelConfig
from dpokit.errors import ConfigError
from dpokit.lora import (
    adapter_base,
    apply_lora,
    keep_4bit_layout,
    merge_adapter_dir,
    merged_dir_beside,
    quantization_config,
)

TINY = "tiny"
TINY_VERSION = "3"


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


def autocast(precision: str, device: torch.device):
    """Mixed-precision context: weights stay fp32, matmuls run in bf16 / fp16."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def cache_dir() -> Path:
    return Path(os.environ.get("DPOKIT_CACHE", Path.home() / ".cache" / "dpokit"))


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
    if cfg.name_or_path == TINY and cfg.weights is None:
        return str(tiny_model_dir())
    return cfg.weights or cfg.name_or_path


def load_tokenizer(cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    from dpokit.data.tokenize import prepare_tokenizer

    source = _source(cfg)
    if adapter_base(source) and not (Path(source) / "tokenizer_config.json").is_file():
        source = adapter_base(source)  # an adapter directory saved without its tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=cfg.revision if source == cfg.name_or_path else None,
            trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(_load_hint(source, e)) from None
    return prepare_tokenizer(tokenizer)


def _load_hint(source: str, error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"cannot load model or tokenizer from '{source}': {first}\n"
            "  fix: pass a local directory holding config.json and weights, a hub id (needs network), "
            "or --model tiny for the built-in model")


def load_model(cfg: ModelConfig, device: torch.device) -> nn.Module:
    """Load the policy as an fp32 ``AutoModelForCausalLM`` (master weights), dropout off.

    With ``load_in_4bit`` the linear weights are 4-bit NF4 (QLoRA). A saved LoRA adapter
    directory (``adapter_config.json``) is loaded onto its base and merged, so a run that starts
    from an SFT adapter starts from, and refers to, the SFT model.
    """
    from transformers import AutoModelForCausalLM

    source = _source(cfg)
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
    if cfg.weights and not Path(cfg.weights).is_dir():
        raise ConfigError(f"--weights {cfg.weights}: no such directory; pass an earlier run's output, "
                          "for example dpo_checkpoints/final")
    try:
        model = AutoModelForCausalLM.from_pretrained(base or source, **kwargs)
        if base is not None:
            model = merge_adapter_dir(model, source)
            if not cfg.load_in_4bit:
                model.requires_grad_(True)  # peft froze the base; a full fine-tune trains it all
    except (OSError, ValueError) as e:
        raise ConfigError(_load_hint(base or source, e)) from None
    disable_dropout(model)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    if cfg.load_in_4bit:
        keep_4bit_layout(model)
        return model  # placed by device_map; 4-bit models refuse .to()
    return model.to(device)


def load_policy(cfg: ModelConfig, device: torch.device) -> nn.Module:
    """The policy: `load_model`, wrapped with fresh LoRA adapters when ``cfg.lora`` is set."""
    model = load_model(cfg, device)
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


# ---- the built-in tiny model ----------------------------------------------------------------


def tiny_model_dir() -> Path:
    """Directory of the built-in tiny model, built on first use and cached (``$DPOKIT_CACHE``)."""
    key = hashlib.sha256(f"tiny-{TINY_VERSION}".encode()).hexdigest()[:10]
    path = cache_dir() / f"tiny-model-{key}"
    if not (path / "config.json").exists():
        print(f"building the built-in tiny model (first use only, about half a minute; cached in {path})",
              file=sys.stderr, flush=True)
        build_tiny_model(path)
    return path


def build_tiny_tokenizer(vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer trained on the sample-data vocabulary, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from dpokit.data.samples import corpus_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_text().splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_tiny_model(path: Path, warmup_steps: int = 300, seed: int = 0) -> None:
    """Build the tiny Llama and warm it up with a short supervised pass on sample text.

    The warm-up text (``samples.warmup_texts``) mixes good and bad answer templates with topics
    drawn at random, so the model writes words but has no preference between the chosen and
    rejected answers of a sample pair yet: that is what DPO then teaches it.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from dpokit.data.samples import warmup_texts

    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=344, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    texts = warmup_texts(2000, seed=12345)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(warmup_steps):
        idx = torch.randint(len(texts), (16,), generator=generator).tolist()
        enc = tokenizer([texts[i] + tokenizer.eos_token for i in idx], return_tensors="pt", padding=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        lr = 3e-3 * min(1.0, (step + 1) / 30) * (1 - step / warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, path)  # atomic: a half-built model is never seen as built
    except OSError:  # another process built it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def enable_checkpointing(model: nn.Module) -> None:
    """Turn on activation (gradient) checkpointing, non-reentrant, under either transformers name."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
