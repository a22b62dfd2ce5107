"""Supervised fine-tuning (``dpokit sft``): the stage before DPO, so the guides' whole pipeline
(SFT, then DPO) runs in dpokit alone.

Data, one of (detected from the first row):

* ``{prompt, completion}`` rows (strings, or chat messages as in preference data; optional ``system``);
* ``{messages}`` conversations: every assistant turn is trained, everything else is context;
* preference data in any format ``dpokit train`` reads: the chosen side is trained.

Prompts and non-assistant turns are masked: the loss is the negative log-likelihood of the
completion tokens only, tokenized exactly as DPO tokenizes the chosen answer (``data/tokenize.py``),
so SFT teaches the very tokens DPO then scores. Per optimizer step the loss is the sum of the NLL
over the step's completion tokens divided by their number (all micro-batches and ranks), so batch
B x accumulation K gives the same update as BK x 1. Full fine-tuning or LoRA / QLoRA
(``model.lora``, ``model.load_in_4bit``); ``<output>/final`` is a Hugging Face model directory
(merged, with ``adapter/`` beside it under LoRA) to pass to ``dpokit train --model``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dpokit import dist
from dpokit.config import Config
from dpokit.data.collate import PreferenceBatch
from dpokit.data.pairs import Message, PreferencePair
from dpokit.errors import DataError, DpokitError

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class SFTExample:
    """One tokenized training sequence; ``mask[t]`` is 1 where token t is trained."""

    input_ids: list[int]
    mask: list[int]
    source: str = ""

    @property
    def trained_tokens(self) -> int:
        return sum(self.mask[1:])  # the first token of a row has no prediction


@dataclass
class SFTStats:
    kept: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        text = f"{self.kept} examples tokenized; {self.truncated} truncated"
        if self.dropped:
            text += "; dropped: " + ", ".join(f"{n} ({reason})" for reason, n in self.dropped.items())
        return text


# An SFT item before tokenization: a prompt + completion (as a pair whose chosen side is trained)
# or a whole conversation.
Item = PreferencePair | tuple[list[Message], str]


# ---- reading ------------------------------------------------------------------------------------


def _message_list(value: Any, key: str, where: dict[str, Any]) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DataError(f"'{key}' must be a non-empty list of {{role, content}} messages", column=key,
                        reason="wrong type", **where)
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in ROLES):
            raise DataError(f"message {i} of '{key}' is not a {{\"role\": {'|'.join(ROLES)}, \"content\": str}} "
                            "object", column=key, reason="wrong type", **where)
    return [{"role": m["role"], "content": m["content"]} for m in value]


def sft_item(row: Any, where: dict[str, Any], source: str) -> Item:
    """One ``{messages}`` or ``{prompt, completion}`` row as an SFT item; DataError when it is bad."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}", reason="not an object", **where)
    if "messages" in row:
        messages = _message_list(row["messages"], "messages", where)
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError("the conversation has no assistant turn: nothing to train on", column="messages",
                            reason="no assistant turn", hint="add the assistant's answer, or remove the row",
                            **where)
        if messages[0]["role"] == "assistant":
            raise DataError("the conversation starts with an assistant turn", column="messages",
                            reason="assistant first", hint="start with a system or user message", **where)
        return messages, source
    for key in ("prompt", "completion"):
        if key not in row:
            raise DataError(f"missing key '{key}' (the row has: {', '.join(sorted(row)) or 'no keys'})",
                            column=key, reason="missing column",
                            hint="SFT rows are {prompt, completion}, {messages}, or preference pairs", **where)
    prompt, completion = row["prompt"], row["completion"]
    prompt = prompt if isinstance(prompt, str) else _message_list(prompt, "prompt", where)
    completion = completion if isinstance(completion, str) else _message_list(completion, "completion", where)
    if (isinstance(completion, str) and not completion.strip()):
        raise DataError("'completion' is empty", column="completion", reason="empty field",
                        hint="give a non-empty completion or remove the row", **where)
    system = row.get("system") if isinstance(row.get("system"), str) else None
    return PreferencePair(prompt, completion, completion, system=system, source=source)


def _sft_rows(name: str, cfg: Any) -> list[Item]:
    from dpokit.data.formats import RowProblem
    from dpokit.data.sources import iter_rows, main_spec

    spec = main_spec(cfg, name=name)
    items = []
    for line, index, row in iter_rows(spec):
        where: dict[str, Any] = {"path": spec.label, "line": line}
        if isinstance(row, RowProblem):
            raise DataError(row.message, column=row.column, hint=row.hint, reason=row.reason, **where)
        label = f"{spec.label}:{line}" if line is not None else f"{spec.label}[{index}]"
        items.append(sft_item(row, where if line is not None else {"path": f"{spec.label}, row index {index}"},
                              label))
    return items


def is_sft_source(name: str | None, cfg: Any) -> bool:
    """True when the first row of source ``name`` is an SFT row (``messages`` or ``completion``)."""
    from dpokit.data.sources import iter_rows, main_spec

    if name is None:
        return False
    for _, _, row in iter_rows(main_spec(cfg, name=name)):
        return isinstance(row, dict) and ("messages" in row or "completion" in row)
    return False


def load_sft_data(config: Config, log: Callable[[str], None] = print) -> tuple[list[Item], list[Item]]:
    """Training and evaluation items: SFT rows, or the chosen side of preference pairs."""
    from dpokit.data.mixture import hold_out
    from dpokit.data.sources import load_train_eval

    cfg = config.data
    if cfg.mixture is None and is_sft_source(cfg.path, cfg):
        train = _sft_rows(cfg.path, cfg)
        evaluation = _sft_rows(cfg.eval_path, cfg) if cfg.eval_path else []
        if cfg.eval_fraction:
            try:
                train, held = hold_out(train, cfg.eval_fraction, config.train.seed)
            except ValueError as e:
                raise DataError(str(e), hint="lower data.eval_fraction, or add data") from None
            evaluation += held
        if cfg.max_samples is not None:
            train = train[: cfg.max_samples]
        log(f"data: {len(train)} SFT examples from {cfg.path}")
        return train, evaluation
    train, evaluation = load_train_eval(cfg, config.train.seed, log)
    log("data: preference pairs; training on their chosen answers")
    return list(train), list(evaluation)


# ---- tokenization -------------------------------------------------------------------------------


def encode_conversation(messages: list[Message], tokenizer: Any,
                        kwargs: dict[str, Any] | None = None) -> tuple[list[int], list[int]]:
    """Ids of the whole conversation (chat template) and a mask that is 1 on assistant turns.

    Each assistant turn spans from where the template of the messages before it, with the
    generation prompt, ends (the assistant header is context) to where the template up to and
    including it ends, both measured along the full conversation's ids.
    """
    from dpokit.data.tokenize import _chat_ids, _common_prefix

    full = _chat_ids(tokenizer, messages, False, kwargs)  # kwargs: data.chat_template_kwargs
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _common_prefix(_chat_ids(tokenizer, messages[:i], True, kwargs), full)
        end = _common_prefix(_chat_ids(tokenizer, messages[: i + 1], False, kwargs), full)
        mask[start:end] = [1] * max(0, end - start)
    return full, mask


def tokenize_item(item: Item, tokenizer: Any, max_length: int, max_prompt_length: int | None,
                  stats: SFTStats, max_completion_length: int | None = None,
                  chat_template_kwargs: dict[str, Any] | None = None) -> SFTExample | None:
    """One item as an `SFTExample`, truncated to ``max_length``; None (counted) when nothing is left."""
    from dpokit.data.tokenize import TokenizeStats, encode_pair, fit_pair

    if isinstance(item, PreferencePair):  # the chosen side, tokenized as DPO tokenizes it
        prompt, chosen, _ = encode_pair(item, tokenizer, chat_template_kwargs)
        fitted = fit_pair(prompt, chosen, chosen, max_length, max_prompt_length, TokenizeStats(), item.source,
                          max_completion_length)
        if fitted is None:
            stats.dropped["prompt alone reaches max_length" if chosen else "empty completion"] += 1
            return None
        stats.truncated += len(fitted.chosen_ids) < len(chosen) or len(fitted.prompt_ids) < len(prompt)
        ids, mask = fitted.prompt_ids + fitted.chosen_ids, [0] * len(fitted.prompt_ids) + [1] * len(fitted.chosen_ids)
        source = item.source
    else:
        messages, source = item
        ids, mask = encode_conversation(messages, tokenizer, chat_template_kwargs)
        if len(ids) > max_length:  # keep the start, as DPO does for completions
            ids, mask = ids[:max_length], mask[:max_length]
            stats.truncated += 1
    example = SFTExample(ids, mask, source)
    if example.trained_tokens == 0:
        stats.dropped["no trained token within max_length"] += 1
        return None
    stats.kept += 1
    return example


def tokenize_items(items: list[Item], tokenizer: Any, max_length: int, max_prompt_length: int | None = None,
                   **options: Any) -> tuple[list[SFTExample], SFTStats]:
    """``options``: `dpokit.data.tokenize.options` (``max_completion_length``, ``chat_template_kwargs``)."""
    stats = SFTStats()
    out = [tokenize_item(item, tokenizer, max_length, max_prompt_length, stats, **options) for item in items]
    return [e for e in out if e is not None], stats


def collate_sft(examples: list[SFTExample], pad_id: int) -> PreferenceBatch:
    """Right-padded rows in the batch form `SequenceScorer` reads: each example is one scored sequence.

    ``seq_index`` numbers the examples 0..B-1; ``num_pairs`` is ceil(B / 2) so the scorer's 2 x
    num_pairs sequence slots hold them all (SFT has no chosen / rejected halves).
    """
    b = len(examples)
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((b, width), dtype=torch.long)  # (B, T)
    logit_index, targets, seqs = [], [], []
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[r, :n] = torch.tensor(e.input_ids)
        attention_mask[r, :n] = 1
        for t in range(1, n):
            if e.mask[t]:  # token t is predicted by the logits at t - 1
                logit_index.append(r * width + t - 1)
                targets.append(e.input_ids[t])
                seqs.append(r)
    return PreferenceBatch(
        input_ids=input_ids, attention_mask=attention_mask,
        position_ids=torch.arange(width).expand(b, width).clone(),  # (B, T)
        logit_index=torch.tensor(logit_index, dtype=torch.long), target_ids=torch.tensor(targets, dtype=torch.long),
        seq_index=torch.tensor(seqs, dtype=torch.long), num_pairs=math.ceil(b / 2),
        num_tokens=int(attention_mask.sum()),
    )


# ---- the loop -----------------------------------------------------------------------------------


@dataclass
class SFTRun:
    """What an SFT run holds (the fields `train.save_model` reads share their names with `train.Run`)."""

    config: Config
    info: dist.DistInfo
    device: torch.device
    precision: str
    tokenizer: Any
    policy: torch.nn.Module
    scorer: torch.nn.Module  # SequenceScorer(policy), wrapped in DDP under torchrun
    train_examples: list[SFTExample]
    eval_examples: list[SFTExample]
    optimizer: torch.optim.Optimizer
    scheduler: Any  # transformers.get_scheduler's (optim.py)
    scaler: torch.amp.GradScaler
    stream: Any
    state: Any
    total_steps: int
    out_dir: Path
    log: Any

    def nll(self, examples: list[SFTExample]) -> tuple[torch.Tensor, int, int]:
        """Summed NLL of the trained tokens of ``examples``, their count, and the tokens fed in."""
        from dpokit.models import autocast

        batch = collate_sft(examples, self.tokenizer.pad_token_id).to(self.device)
        with autocast(self.precision, self.device):
            logps = self.scorer(batch)
        return -logps.logps.sum(), int(batch.target_ids.numel()), batch.num_tokens


def setup_sft(config: Config, demo: bool = False) -> SFTRun:
    """Data (checked first), tokenizer, policy (full or LoRA) and optimizer of an SFT run."""
    from dpokit.data.tokenize import options
    from dpokit.logps import SequenceScorer
    from dpokit.models import load_policy, load_tokenizer, resolve_device, resolve_precision
    from dpokit.optim import build_optimizer, build_scheduler, check_optimizer, check_scheduler
    from dpokit.tracking import MetricsLog
    from dpokit.train import (
        PairStream,
        TrainState,
        grad_scaler,
        make_output_dir,
        seed_everything,
        total_steps,
    )

    device = resolve_device(config.model.device)
    info = dist.init(device.type)
    seed_everything(config.train.seed + info.rank)
    log = MetricsLog(None, enabled=info.is_main)
    train_items, eval_items = load_sft_data(config, log.print)  # bad data stops us here
    check_optimizer(config.train, device)  # config: a bad optim / schedule stops us before any model loads
    check_scheduler(config.train, bool(eval_items) and config.train.eval_strategy != "no")
    if info.is_main:
        make_output_dir(Path(config.output.dir), log.print)
    tokenizer = load_tokenizer(config.model)
    if config.data.chat_template:
        tokenizer.chat_template = config.data.chat_template
    args = (tokenizer, config.data.max_length, config.data.max_prompt_length)
    train_examples, stats = tokenize_items(train_items, *args, **options(config.data))  # config: TRL's options
    log.print(f"train data: {stats.summary()}")
    eval_examples, eval_stats = tokenize_items(eval_items, *args, **options(config.data)) if eval_items else ([], None)
    if eval_stats is not None:
        log.print(f"eval data: {eval_stats.summary()}")
    if not train_examples:
        raise DpokitError("no training examples left after tokenization; raise --max-length or check the data")

    precision = resolve_precision(config.model.precision, device)
    policy = load_policy(config.model, device)
    policy.train()
    optimizer = build_optimizer(policy, config.train, device)  # config: optim.py
    steps = total_steps(config, len(train_examples), info.world_size)
    scheduler = build_scheduler(optimizer, config.train, steps)  # config: optim.py
    out_dir = Path(config.output.dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        config.save(out_dir / "config.yaml")
        log = MetricsLog(out_dir / "metrics.jsonl", enabled=True)
        trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        log.print(f"{'demo: ' if demo else ''}SFT of {config.model.name_or_path} ({trainable / 1e6:.2f}M trained "
                  f"params{', LoRA' if config.model.lora else ''}), precision {precision}, device {device}, "
                  f"{len(train_examples)} train / {len(eval_examples)} eval examples, {steps} steps x "
                  f"{config.train.batch_size * config.train.grad_accum * info.world_size} examples")
    stream = PairStream(len(train_examples), config.train.seed, info.rank, info.world_size)
    scorer = dist.wrap_ddp(SequenceScorer(policy), device)
    return SFTRun(config, info, device, precision, tokenizer, policy, scorer, train_examples, eval_examples,
                  optimizer, scheduler, grad_scaler(precision, device), stream, TrainState(), steps, out_dir, log)


def sft_step(run: SFTRun, window: TokenMeans) -> float:
    """One optimizer step, its NLL added to ``window``; returns the gradient norm before clipping."""
    from dpokit.train import optimizer_step, stop_if_not_finite

    cfg = run.config.train
    micro = [[run.train_examples[i] for i in run.stream.take(cfg.batch_size)] for _ in range(cfg.grad_accum)]
    counts = torch.tensor(float(sum(e.trained_tokens for m in micro for e in m)), dtype=torch.float64)
    step_tokens = float(dist.all_reduce_sum(counts))  # the whole step's trained tokens, all ranks
    bad_loss = None
    for examples in micro:
        nll, tokens, fed = run.nll(examples)
        if not math.isfinite(float(nll.detach())):  # still run backward: under DDP every rank must
            bad_loss = float(nll.detach())
        # DDP averages gradients over ranks: scale by world size to keep "sum over the step's tokens".
        run.scaler.scale(nll * run.info.world_size / step_tokens).backward()
        window.add(float(nll.detach()), tokens)
        run.state.micro_step += 1
        run.state.tokens_seen += fed
    stop_if_not_finite(run, bad_loss)
    return optimizer_step(run)


class TokenMeans:
    """Summed NLL and trained-token count over a logging window (or an evaluation); ``means``
    gives the mean NLL per trained token over all ranks."""

    def __init__(self) -> None:
        self.nll = 0.0
        self.tokens = 0

    def add(self, nll: float, tokens: int) -> None:
        self.nll += nll
        self.tokens += tokens

    def means(self, prefix: str = "") -> dict[str, float]:
        nll, tokens = dist.all_reduce_sum(torch.tensor([self.nll, float(self.tokens)], dtype=torch.float64)).tolist()
        return {f"{prefix}loss": nll / max(1.0, tokens)}


@torch.no_grad()
def evaluate_sft(run: SFTRun) -> dict[str, float]:
    """Mean NLL per trained token over the evaluation examples (``eval_loss``)."""
    run.policy.eval()
    mine = run.eval_examples[run.info.rank :: run.info.world_size]
    sums = TokenMeans()
    size = run.config.train.eval_batch_size or run.config.train.batch_size  # config: per_device_eval_batch_size
    for start in range(0, len(mine), size):
        nll, tokens, _ = run.nll(mine[start : start + size])
        sums.add(float(nll), tokens)
    run.policy.train()
    return sums.means(prefix="eval_")


def sft(config: Config, demo: bool = False) -> Path:
    """Run supervised fine-tuning as configured; returns the directory of the final model."""
    from dpokit.train import fit

    run = setup_sft(config, demo)
    return fit(run, step=lambda window: sft_step(run, window), new_window=TokenMeans,
               evaluate=(lambda: evaluate_sft(run)) if run.eval_examples else None, name="sft",
               done="saved the fine-tuned model to {final}; align it with "
                    "`dpokit train --model {final} --data PREFERENCES`")
