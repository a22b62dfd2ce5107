"""The built-in tiny model: a 4-layer Llama with its own BPE tokenizer, built locally on first use.

``--model tiny`` (the demo's model) means this model in every command. It is trained from scratch
on the sample-data vocabulary and warmed up so that it writes words but has no preference between a
sample pair's answers yet; then DPO has something to teach it, offline, in a minute on a CPU.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dpokit.config import ModelConfig
from dpokit.data.samples import corpus_text, warmup_texts
from dpokit.models import TINY
from dpokit.paths import cache_dir

TINY_VERSION = "3"


def resolve_name(name: str) -> str:
    """A model name as the loaders take it: ``tiny`` is the built-in model's directory."""
    return str(tiny_model_dir()) if name == TINY else name


def resolve(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with ``tiny`` (as the policy, when no ``weights`` replace it, or as ``ref_model``)
    replaced by the built-in model's directory."""
    name = resolve_name(cfg.name_or_path) if cfg.weights is None else cfg.name_or_path
    ref = resolve_name(cfg.ref_model) if cfg.ref_model else cfg.ref_model
    return replace(cfg, name_or_path=name, ref_model=ref)


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
        shutil.rmtree(tmp, ignore_errors=True)
