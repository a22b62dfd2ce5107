"""Generation with a trained model: batched prompts, left padding, the chat template when present."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dpokit.errors import ConfigError


@dataclass
class SamplingConfig:
    """How tokens are picked."""

    max_new_tokens: int = 128
    """Tokens to generate after each prompt (``--max-new-tokens``)."""
    temperature: float = 0.7
    """Softmax temperature; 0 picks the most likely token, like ``greedy`` (``--temperature``)."""
    top_p: float = 0.9
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches this
    (``--top-p``; 1 turns it off)."""
    top_k: int = 50
    """Sample from this many of the most likely tokens (``--top-k``; 0 turns it off)."""
    greedy: bool = False
    """Always take the most likely token (``--greedy``)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")
        if not 0.0 <= self.temperature < float("inf"):
            raise ConfigError(f"--temperature must be 0 or more (got {self.temperature}); 0 is greedy decoding")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be in (0, 1] (got {self.top_p}); 1 turns nucleus sampling off")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be 0 or more (got {self.top_k}); 0 turns top-k sampling off")


DEFAULT_MODEL = "dpo_checkpoints/final"  # where `dpokit train` writes its model by default


def looks_local(model: str) -> bool:
    """Whether ``model`` is clearly a local path rather than a hub id (``gpt2``, ``org/name``)."""
    if model == DEFAULT_MODEL or model.startswith((".", "/", "~")) or "\\" in model:
        return True
    return model.rstrip("/").endswith("/final") or "checkpoint-" in model or model.rstrip("/").count("/") > 1


def load_for_generation(model: str, device: torch.device, trust_remote_code: bool = False) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if looks_local(model):
        model = os.path.expanduser(model)
        if not Path(model).is_dir():
            raise ConfigError(f"--model {model} does not exist; run `dpokit train` first (it saves the "
                              "model in OUTPUT_DIR/final), or pass an existing directory or a hub id such as gpt2")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        lm = AutoModelForCausalLM.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot load a model from '{model}': {first}\n  fix: pass a training output "
                          "such as dpo_checkpoints/final, or a hub id") from None
    tokenizer.padding_side = "left"  # generation continues at the right edge of every row
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm.to(device).eval(), tokenizer


def format_prompt(tokenizer: Any, prompt: str) -> str:
    """The prompt as the model saw prompts in training: the chat template when the tokenizer has one."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[str], sampling: SamplingConfig,
             batch_size: int = 8) -> list[str]:
    """Completions for ``prompts`` (text after the prompt, special tokens removed)."""
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [format_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        templated = bool(tokenizer.chat_template)
        enc = tokenizer(texts, return_tensors="pt", padding=True,
                        add_special_tokens=not templated).to(model.device)  # (B, T)
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens,
                                  "pad_token_id": tokenizer.pad_token_id}
        if sampling.greedy or sampling.temperature == 0:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=sampling.top_k)
        out = model.generate(**enc, **kwargs)  # (B, T + new)
        new = out[:, enc["input_ids"].shape[1]:]
        outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return outputs
