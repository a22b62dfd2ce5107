"""Per-sequence log-probabilities of completions, for any batch layout.

The model's decoder runs once over the batch; logits are then computed only at the positions
that predict a completion token (``batch.logit_index``), a chunk of tokens at a time, with the
log-softmax in fp32. The full ``(rows, T, vocab)`` logits tensor is never built. A plain linear
head has its log-softmax fused with its gradient (``head.py``); any other head's chunks are
recomputed in the backward pass (activation checkpointing). Either way gradients are exact and
memory holds one chunk of fp32 logits at a time.

Per-sequence log-probs are **summed** over completion tokens (Rafailov et al. 2023, eq. 7 uses
log pi(y|x), the sum); token counts come alongside so losses can take per-token means. A batch
collated with ``prompt_logps=True`` also gets the chosen prompts' summed log-probs, from the same
chunks (ORPO's NLL over the prompt).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dpokit.data.collate import PreferenceBatch
from dpokit.data.sft import SequenceBatch
from dpokit.errors import ConfigError
from dpokit.head import fusable, head_logps, matmul_dtype

Batch = PreferenceBatch | SequenceBatch  # what the scorer reads: model inputs and the scored positions


@dataclass
class SequenceLogps:
    """Summed completion log-probs of 2B sequences: chosen of pair i at i, rejected at B + i."""

    logps: torch.Tensor  # (2B,) summed log-probs
    tokens: torch.Tensor  # (2B,) completion token counts
    logits_mean: torch.Tensor  # (2B,) mean logit over completion tokens and vocabulary (detached)
    prompt_logps: torch.Tensor | None = None  # (B,) summed log-probs of the chosen prompts' tokens, when asked
    prompt_tokens: torch.Tensor | None = None  # (B,) how many prompt tokens each sum covers

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

    @property
    def nll_tokens(self) -> int:
        """Tokens a chosen-answer NLL covers: chosen completions, and chosen prompts when scored."""
        prompt = 0 if self.prompt_tokens is None else int(self.prompt_tokens.sum())
        return int(self.tokens[: self.num_pairs].sum()) + prompt

    def detach(self) -> SequenceLogps:
        prompt = None if self.prompt_logps is None else self.prompt_logps.detach()
        return SequenceLogps(self.logps.detach(), self.tokens, self.logits_mean, prompt, self.prompt_tokens)


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


def logit_transform(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The post-processing this model applies to its LM head's output, or None.

    Known kinds: final soft-capping (Gemma 2/3: ``tanh(z / cap) * cap``), logit scaling (Cohere:
    ``z * logit_scale``) and logit division (Granite: ``z / logits_scaling``). Anything else is
    caught by `head_matches_forward`, which sends the model down the plain full-logits path.
    """
    config = text_config(unwrap(model).config)
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    divide = getattr(config, "logits_scaling", None)
    if cap:
        return lambda logits: torch.tanh(logits / cap) * cap
    if scale not in (None, 1, 1.0):
        return lambda logits: logits * scale
    if divide not in (None, 1, 1.0):
        return lambda logits: logits / divide
    return None


def text_config(config):
    """The language model's config: ``config.text_config`` of a composite (vision-language)
    model such as Gemma 3, else ``config`` itself."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def attention_window(config) -> int | None:
    """The narrowest local attention span the model applies, or None for full attention:
    ``sliding_window`` (Mistral, Gemma 2/3, Qwen2 when ``use_sliding_window``),
    ``attention_chunk_size`` (Llama 4) or GPT-Neo's ``window_size`` on its local layers."""
    config = text_config(config)
    spans = [getattr(config, "attention_chunk_size", None)]
    if getattr(config, "use_sliding_window", True) is not False:  # e.g. Qwen2 configs carry an unused window
        spans.append(getattr(config, "sliding_window", None))
    if "local" in (getattr(config, "attention_layers", None) or ()):  # GPT-Neo
        spans.append(getattr(config, "window_size", None))
    spans = [s for s in spans if isinstance(s, int) and s > 0]
    return min(spans) if spans else None


def layout_for(model: nn.Module, layout: str, max_length: int) -> tuple[str, str | None]:
    """The layout to use for ``model``, and why it differs from ``layout`` (None when it does not).

    The packing layouts pass their own attention mask, which replaces the model's: a local
    attention window narrower than ``max_length`` would be lost (and ``prefix`` rows stretch
    token distances), as would ALiBi biases, which follow token distances in the row. Such models
    get ``padded``. Flash-attention kernels take no mask, so ``prefix`` becomes ``packed`` there.
    """
    if layout == "padded":
        return layout, None
    inner = unwrap(model)
    config = text_config(inner.config)
    window = attention_window(config)
    if window and window < max_length:
        return "padded", (f"{config.model_type} attends through a local window of {window} tokens, shorter "
                          f"than --max-length {max_length}; layout {layout!r} would drop the window, so "
                          "--layout padded is used")
    if getattr(config, "alibi", False) or config.model_type in ("bloom", "mpt"):
        return "padded", (f"{config.model_type} uses ALiBi position biases, which layout {layout!r} would "
                          "distort; --layout padded is used")
    if layout == "prefix" and "flash" in str(getattr(inner.config, "_attn_implementation", "")):
        return "packed", ("flash attention takes no attention mask, which layout 'prefix' needs; --layout "
                          "packed is used (sequences end to end, no padding)")
    return layout, None


def head_matches_forward(model: nn.Module, input_ids: torch.Tensor) -> bool:
    """Whether ``head(decoder(x))`` plus `logit_transform` reproduces the model's own logits.

    Checked once per model on a few real tokens, in fp32 and eval mode, and remembered on the
    model. A model that post-processes its logits in a way we do not know fails the check, and
    its log-probs then come from the plain path (`plain_sequence_logps`): slower, never wrong.
    """
    inner = unwrap(model)
    known = getattr(inner, "_dpokit_head_matches", None)
    if known is not None:
        return known
    head = inner.get_output_embeddings()
    if head is None:
        inner._dpokit_head_matches = False
        return False
    ids = input_ids[:1, :16]  # (1, t)
    transform = logit_transform(inner)

    def agree() -> tuple[bool, float]:
        own = inner(input_ids=ids, use_cache=False).logits.float()  # (1, t, V)
        hidden = inner.base_model(input_ids=ids, use_cache=False).last_hidden_state  # (1, t, H)
        mine = head(hidden).float()
        mine = transform(mine) if transform is not None else mine
        size = float(mine.abs().max()) if mine.numel() else 0.0
        return own.shape == mine.shape and torch.allclose(own, mine, rtol=1e-4, atol=1e-4 * max(1.0, size)), size

    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad(), torch.autocast(ids.device.type, enabled=False):
            matches, size = agree()
            weight = getattr(head, "weight", None)
            if matches and isinstance(weight, torch.Tensor) and weight.is_floating_point() and 0 < size < 100:
                # Small logits hide a cap or other squashing step: check again with logits near 100.
                saved = weight.detach().clone()
                try:
                    weight.mul_(100.0 / size)
                    matches, _ = agree()
                finally:
                    weight.copy_(saved)
    finally:
        inner.train(was_training)
    if not matches:
        warnings.warn(f"{type(inner).__name__} post-processes its logits in a way dpokit does not know; "
                      "its log-probs come from the plain full-logits path (correct, but slower and "
                      "larger in memory)", stacklevel=2)
    inner._dpokit_head_matches = matches
    return matches


def model_inputs(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor | None]:
    """The decoder's keyword inputs for ``batch``: its (R, T, T) mask made additive, or left out.

    SDPA and eager attention take the additive float mask ``(R, 1, T, T)``: 0 where a token may
    attend, the dtype's minimum elsewhere (a boolean 4D mask is misread by eager attention). It
    is built in the dtype attention runs in (the autocast dtype under mixed precision).

    Flash-attention kernels take no such mask. For ``packed`` batches they do not need one:
    transformers reads restarting position ids as sequence boundaries (varlen kernels), but only
    in a batch of one row, so the rows are laid end to end as one ``(1, R*T)`` row (scored
    positions index the flattened rows either way). This GPU-only path is not exercised by the
    CPU tests. ``prefix`` batches need their mask, so they are refused there.
    """
    inner = unwrap(model)
    mask = batch.attention_mask
    if mask.dim() == 3:
        if "flash" in str(getattr(inner.config, "_attn_implementation", "")):
            if batch.layout != "packed":
                raise ConfigError(f"layout {batch.layout!r} needs its attention mask, which flash attention "
                                  "cannot take; use --layout packed or --attn-implementation sdpa")
            return {"input_ids": batch.input_ids.reshape(1, -1), "attention_mask": None,
                    "position_ids": batch.position_ids.reshape(1, -1)}
        else:
            dtype = matmul_dtype(mask.device, next(inner.parameters()).dtype)
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
                ~mask, torch.finfo(dtype).min)[:, None]  # (R, 1, T, T)
    return {"input_ids": batch.input_ids, "attention_mask": mask, "position_ids": batch.position_ids}


def _token_logps(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, transform
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()  # (n, V), fp32 for the log-softmax
    if transform is not None:
        logits = transform(logits)
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)  # (n,)
    return picked - torch.logsumexp(logits, dim=-1), logits.detach().mean(-1)


def _prompt_part(batch: Batch) -> PreferenceBatch | None:
    """The batch when it also scores the chosen prompts' tokens (ORPO's prompt NLL), else None."""
    return batch if isinstance(batch, PreferenceBatch) and batch.prompt_logit_index is not None else None


def scored_positions(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(N [+ P],) flat positions whose logits are needed and the tokens they predict: the
    completion tokens, then the chosen prompts' tokens when the batch carries them."""
    if (pairs := _prompt_part(batch)) is None:
        return batch.logit_index, batch.target_ids
    return (torch.cat([pairs.logit_index, pairs.prompt_logit_index]),
            torch.cat([pairs.target_ids, pairs.prompt_target_ids]))


def _per_sequence(batch: Batch, token_logps: torch.Tensor, token_means: torch.Tensor) -> SequenceLogps:
    """Sum token log-probs (N [+ P],) into sequences (S,: 2B for pairs) and chosen prompts (B,);
    mean logits alongside."""
    num_seqs, n = batch.num_sequences, batch.target_ids.shape[0]
    logps = torch.zeros(num_seqs, dtype=torch.float32, device=token_logps.device)
    logps = logps.index_add(0, batch.seq_index, token_logps[:n])  # (2B,)
    tokens = torch.bincount(batch.seq_index, minlength=num_seqs)  # (2B,)
    logit_sums = torch.zeros(num_seqs, device=token_logps.device).index_add(0, batch.seq_index, token_means[:n])
    out = SequenceLogps(logps, tokens, logit_sums / tokens.clamp(min=1))
    if (pairs := _prompt_part(batch)) is not None:
        zeros = torch.zeros(pairs.num_pairs, dtype=torch.float32, device=token_logps.device)
        out.prompt_logps = zeros.index_add(0, pairs.prompt_seq_index, token_logps[n:])  # (B,)
        out.prompt_tokens = torch.bincount(pairs.prompt_seq_index, minlength=pairs.num_pairs)  # (B,)
    return out


class SequenceScorer(nn.Module):
    """Wraps a causal LM so that ``forward(batch)`` returns per-sequence log-probs.

    Wrapping (rather than calling the decoder from outside) keeps the whole computation inside
    one module's forward, which DDP, FSDP and ``torch.compile`` need.

    Logits are built ``chunk_size`` scored tokens at a time: 512 keeps a chunk's fp32 logits and
    their gradient small (16 MiB each at a vocabulary of 8,192, 256 MiB at 128k) at no cost in
    speed: on the benchmark model, about 1,300 MiB peak RSS against 1,370 at 2048 rows, at the
    same 0.69 s a step.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 512) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, batch: Batch) -> SequenceLogps:
        inner = unwrap(self.model)
        if not head_matches_forward(inner, batch.input_ids):
            return plain_sequence_logps(self.model, batch)
        head = inner.get_output_embeddings()
        hidden = inner.base_model(**model_inputs(inner, batch), use_cache=False).last_hidden_state  # (R, T, H)
        index, targets = scored_positions(batch)  # (N [+ P],)
        hidden = hidden.reshape(-1, hidden.shape[-1])[index]  # (N [+ P], H) scored positions only
        transform = logit_transform(inner)
        if transform is None and fusable(head):  # log-softmax and its gradient fused (``head.py``)
            return _per_sequence(batch, *head_logps(head, hidden, targets, self.chunk_size))
        pieces, means = [], []
        for start in range(0, hidden.shape[0], self.chunk_size):
            h = hidden[start : start + self.chunk_size]  # (n, H)
            t = targets[start : start + self.chunk_size]  # (n,)
            if torch.is_grad_enabled() and h.requires_grad:  # keep no (n, V) logits for the backward
                lp, lm = checkpoint(_token_logps, head, h, t, transform, use_reentrant=False)
            else:
                lp, lm = _token_logps(head, h, t, transform)
            pieces.append(lp)
            means.append(lm)
        return _per_sequence(batch, torch.cat(pieces), torch.cat(means))


def plain_sequence_logps(model: nn.Module, batch: Batch) -> SequenceLogps:
    """Per-sequence log-probs from the model's own full ``(R, T, V)`` logits: the slow, obvious way.

    The fallback for models whose logits are post-processed in ways `logit_transform` does not
    know, and the yardstick the tests hold the chunked path to.
    """
    logits = model(**model_inputs(model, batch), use_cache=False).logits  # (R, T, V)
    index, targets = scored_positions(batch)  # (N [+ P],)
    picked = logits.reshape(-1, logits.shape[-1])[index].float()  # (N [+ P], V)
    token_logps = F.log_softmax(picked, dim=-1).gather(-1, targets[:, None]).squeeze(-1)  # (N [+ P],)
    return _per_sequence(batch, token_logps, picked.detach().mean(-1))


def compile_decoder(model: nn.Module, dynamic: bool = True, **options: Any) -> nn.Module:
    """Compile the model's decoder in place with ``torch.compile`` (parameter names unchanged).

    Batch shapes change from step to step, so shapes are compiled as dynamic by default;
    ``options`` go to ``torch.compile`` (``backend``, ``mode``).
    """
    unwrap(model).base_model.compile(dynamic=dynamic, **options)
    return model


def compile_decoders(*models: nn.Module | None) -> None:
    """`compile_decoder` for each distinct model given (None: no such model)."""
    for model in {id(m): m for m in models if isinstance(m, nn.Module)}.values():
        compile_decoder(model)
