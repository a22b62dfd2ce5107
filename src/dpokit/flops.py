"""Model FLOPs utilisation (MFU): the useful work of a step over what the hardware could do.

Useful work is counted as a prompt-once, padding-free layout needs it, whatever layout runs:
each pair's prompt once, its chosen and its rejected tokens, the policy's forward and backward
over them, and the reference's forward when a reference model runs during training. Padding,
a prompt computed twice, recomputation under gradient checkpointing and masked-out attention
blocks are work the hardware does that this count leaves out, so they lower the MFU: it says how
close to the hardware we are, not how busy it is.

Per token (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1), a forward
pass costs ``2 N`` FLOPs for the weight matrix multiplies, and training ``6 N`` (the backward pass
takes twice the forward: gradients of activations and of weights). N counts every weight that
takes part in a matrix multiply: all 2-D weights but the input embeddings (a table lookup) and
position embeddings, with the output head counted even when it is tied to the input embeddings
(its multiply runs all the same; at small sizes it is a large part of the work). Norms and
biases are left out (a few FLOPs per parameter, no matrix multiply).

Attention adds, per layer and per (query, key) pair the causal mask lets through, ``2 d`` FLOPs
for ``q . k`` and ``2 d`` for the weighted sum of values (``d`` = heads x head dim): PaLM's term
(Chowdhery et al. 2022, appendix B) counted over the keys each token really attends, so about
half of PaLM's ``T`` per token for a causal model. Training triples it, as for the weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ModelCosts:
    """What a model's FLOPs depend on: ``matmul_params`` (N above), layers and attention width."""

    matmul_params: int
    layers: int
    attn_dim: int  # heads x head dim of one layer's queries

    def forward(self, tokens: int, attended: int) -> float:
        """FLOPs of a forward pass over ``tokens`` tokens that attend ``attended`` (query, key) pairs."""
        return 2.0 * self.matmul_params * tokens + 4.0 * self.layers * self.attn_dim * attended

    def train(self, tokens: int, attended: int, frozen_weights: bool = False) -> float:
        """Forward and backward. ``frozen_weights`` (LoRA / QLoRA: no gradients of the base weights):
        the weight-gradient multiplies (``2 N`` per token) are not done, so not counted."""
        total = 3.0 * self.forward(tokens, attended)
        return total - 2.0 * self.matmul_params * tokens if frozen_weights else total


def matmul_params(model: nn.Module) -> int:
    """N: the elements of every 2-D weight but the embedding tables, plus a tied output head."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    n = sum(p.numel() for p in model.parameters() if p.dim() >= 2 and id(p) not in tables)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and id(head.weight) in tables:
        n += head.weight.numel()  # tied: parameters() listed it once, as the input table
    return n


def model_costs(config: Any) -> ModelCosts:
    """`ModelCosts` of a transformers causal-LM config, exact for any architecture: the model is
    built on the meta device (no memory, no weights) and its weights are counted."""
    from transformers import AutoModelForCausalLM

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return ModelCosts(matmul_params(model), int(text.num_hidden_layers), int(heads * head_dim))


def attended_pairs(prompt: int, *completions: int) -> int:
    """(query, key) pairs under the causal mask when ``prompt`` tokens are computed once and each
    completion attends the prompt and its own earlier tokens (the prefix-shared layout)."""
    n = prompt * (prompt + 1) // 2
    for c in completions:
        n += c * prompt + c * (c + 1) // 2
    return n


def step_flops(lengths: Iterable[tuple[int, int, int]], policy: ModelCosts, reference: ModelCosts | None = None,
               frozen_weights: bool = False) -> float:
    """Useful FLOPs of a DPO step over pairs of (prompt, chosen, rejected) token counts: the policy's
    training pass, plus the ``reference`` model's forward when one runs during training (None when
    the reference log-probs are precomputed or not used). SFT rows are (prompt, completion, 0)."""
    total = 0.0
    for prompt, chosen, rejected in lengths:
        tokens = prompt + chosen + rejected
        attended = attended_pairs(prompt, chosen, rejected)
        total += policy.train(tokens, attended, frozen_weights)
        if reference is not None:
            total += reference.forward(tokens, attended)
    return total


def mfu(flops: float, seconds: float, peak_flops: float | None, devices: int = 1) -> float | None:
    """Model FLOPs utilisation: ``flops`` done by ``devices`` devices in ``seconds``, over their peak
    (``peak_flops`` per device); None without a peak or a time."""
    if not peak_flops or seconds <= 0:
        return None
    return flops / seconds / (peak_flops * devices)


def throughput_row(tokens: int, steps: int, seconds: float, flops: float, peak_flops: float | None,
                   devices: int = 1) -> dict[str, float]:
    """The speed fields of a metrics row for a logging window: ``tokens`` (all ranks, as TRL counts
    them) and ``flops`` (useful, all ranks, `step_flops`) over ``steps`` optimizer steps in
    ``seconds``; ``mfu`` only when a peak is known."""
    row = {"tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
           "seconds_per_step": seconds / steps if steps else 0.0}
    if (value := mfu(flops, seconds, peak_flops, devices)) is not None:
        row["mfu"] = value
    return row
