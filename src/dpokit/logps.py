"""Per-sequence log-probabilities of completions, for any batch layout.

The model's decoder runs once over the batch; logits are then computed only at the positions
that predict a completion token (``batch.logit_index``), a chunk of tokens at a time, with the
log-softmax in fp32. The full ``(rows, T, vocab)`` logits tensor is never built. Each chunk is
recomputed in the backward pass (activation checkpointing), so gradients are exact and memory
holds one chunk of logits at a time.

Per-sequence log-probs are **summed** over completion tokens (Rafailov et al. 2023, eq. 7 uses
log pi(y|x), the sum); token counts come alongside so losses can take per-token means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dpokit.data.collate import PreferenceBatch


@dataclass
class SequenceLogps:
    """Summed completion log-probs of 2B sequences: chosen of pair i at i, rejected at B + i."""

    logps: torch.Tensor  # (2B,) summed log-probs
    tokens: torch.Tensor  # (2B,) completion token counts
    logits_mean: torch.Tensor  # (2B,) mean logit over completion tokens and vocabulary (detached)

    @property
    def num_pairs(self) -> int:
        return self.logps.shape[0] // 2

    @property
    def chosen(self) -> torch.Tensor:
        return self.logps[: self.num_pairs]

    @property
    def rejected(self) -> torch.Tensor:
        return self.logps[self.num_pairs :]

    @property
    def mean(self) -> torch.Tensor:
        """(2B,) per-token mean log-probs."""
        return self.logps / self.tokens.clamp(min=1)

    def detach(self) -> SequenceLogps:
        return SequenceLogps(self.logps.detach(), self.tokens, self.logits_mean)


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / FSDP / peft / compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        else:
            return model


def logit_transform(model: nn.Module):
    """How this model post-processes its logits, or None. Raises for post-processing we do not know."""
    config = unwrap(model).config
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    if cap:
        return lambda logits: torch.tanh(logits / cap) * cap
    if scale not in (None, 1, 1.0):
        return lambda logits: logits * scale
    return None


def _token_logps(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, transform
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()  # (n, V), fp32 for the log-softmax
    if transform is not None:
        logits = transform(logits)
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)  # (n,)
    return picked - torch.logsumexp(logits, dim=-1), logits.detach().mean(-1)


class SequenceScorer(nn.Module):
    """Wraps a causal LM so that ``forward(batch)`` returns per-sequence log-probs.

    Wrapping (rather than calling the decoder from outside) keeps the whole computation inside
    one module's forward, which DDP, FSDP and ``torch.compile`` need.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 2048) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, batch: PreferenceBatch) -> SequenceLogps:
        inner = unwrap(self.model)
        decoder, head = inner.base_model, inner.get_output_embeddings()
        mask = batch.attention_mask
        if mask.dim() == 3:  # (R, T, T) bool -> additive float (R, 1, T, T)
            dtype = next(inner.parameters()).dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(dtype).min)[:, None]
        hidden = decoder(input_ids=batch.input_ids, attention_mask=mask,
                         position_ids=batch.position_ids, use_cache=False).last_hidden_state  # (R, T, H)
        hidden = hidden.reshape(-1, hidden.shape[-1])[batch.logit_index]  # (N, H)
        transform = logit_transform(inner)
        pieces, means = [], []
        for start in range(0, hidden.shape[0], self.chunk_size):
            h = hidden[start : start + self.chunk_size]
            t = batch.target_ids[start : start + self.chunk_size]
            if torch.is_grad_enabled() and h.requires_grad:
                lp, lm = checkpoint(_token_logps, head, h, t, transform, use_reentrant=False)
            else:
                lp, lm = _token_logps(head, h, t, transform)
            pieces.append(lp)
            means.append(lm)
        token_logps = torch.cat(pieces)  # (N,)
        num_seqs = 2 * batch.num_pairs
        logps = torch.zeros(num_seqs, dtype=torch.float32, device=token_logps.device)
        logps = logps.index_add(0, batch.seq_index, token_logps)  # (2B,)
        tokens = torch.bincount(batch.seq_index, minlength=num_seqs)
        logit_sums = torch.zeros(num_seqs, device=token_logps.device).index_add(0, batch.seq_index, torch.cat(means))
        return SequenceLogps(logps, tokens, logit_sums / tokens.clamp(min=1))


def reference_sequence_logps(model: nn.Module, batch: PreferenceBatch) -> torch.Tensor:
    """Summed completion log-probs from a plain full-logits forward: the slow, obvious way.

    Used by tests to check the chunked path, and as the fallback for models whose logits are
    post-processed in ways ``logit_transform`` does not know.
    """
    mask = batch.attention_mask
    if mask.dim() == 3:
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)[:, None]
    logits = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids).logits
    logp = F.log_softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1])  # (R*T, V)
    token_logps = logp[batch.logit_index, batch.target_ids]
    return torch.zeros(2 * batch.num_pairs).index_add(0, batch.seq_index, token_logps)
