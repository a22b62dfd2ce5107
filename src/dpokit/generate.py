"""Generation with a trained model: batched prompts, left padding, the chat template when present."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dpokit.errors import ConfigError


@dataclass
class SamplingConfig:
    """How tokens are picked."""

    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    greedy: bool = False


def load_for_generation(model: str, device: torch.device, trust_remote_code: bool = False) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
