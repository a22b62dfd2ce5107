"""The training loop: policy + frozen reference, a registered preference loss, AdamW.

Read top to bottom: `train` sets up (data first, so bad data stops the run before a model is
loaded), then runs one linear loop of optimizer steps. Each optimizer step takes
``grad_accum`` micro-batches; every micro-batch's loss is divided by the number of pairs in the
whole step, so batch B x accumulation K gives the same update as batch BK x 1. Everything a
checkpoint needs lives in `TrainState` and the objects it names.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dpokit import dist
from dpokit.config import Config
from dpokit.data.cache import tokenize_train_eval
from dpokit.data.collate import PreferenceBatch, collate
from dpokit.data.pairs import TokenizedPair
from dpokit.data.sources import load_train_eval
from dpokit.diagnostics import Diagnostics
from dpokit.errors import ConfigError, DpokitError
from dpokit.intervals import Intervals
from dpokit.logps import SequenceLogps, SequenceScorer, compile_decoder, layout_for
from dpokit.lora import save_policy
from dpokit.losses import (
    LossInputs,
    LossOutput,
    LossSpec,
    beta_at,
    get_loss,
    ignored_settings,
    resolve_loss_config,
    rewards_per_token,
)
from dpokit.models import (
    autocast,
    base_model_warning,
    load_policy,
    load_tokenizer,
    resolve_device,
    resolve_precision,
)
from dpokit.optim import (
    build_optimizer,
    build_scheduler,
    check_optimizer,
    check_scheduler,
    observe_eval,
    step_scheduler,
    warmup_steps,
)
from dpokit.reference import Reference, build_reference
from dpokit.tracking import MetricsLog


@dataclass
class PairStream:
    """Endless stream of pair indices: one shuffled pass after another, this rank's share only.

    ``epoch`` and ``position`` are the whole state, so a checkpoint can resume mid-epoch.
    """

    size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    position: int = 0
    lengths: list[int] | None = None  # tokens of each pair: given, batches are grouped by length
    group: int = 1  # pairs per length-sorted mega-batch

    def _order(self) -> list[int]:
        order = list(range(self.size))
        random.Random(self.seed + self.epoch).shuffle(order)
        if self.lengths is not None and self.group > 1:
            # Length grouping: sort each mega-batch of shuffled pairs, longest first, so that the
            # micro-batches cut from it hold pairs of similar length (less padding).
            order = [i for start in range(0, len(order), self.group)
                     for i in sorted(order[start : start + self.group], key=lambda i: -self.lengths[i])]
        return order[self.rank :: self.world_size]

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        order = self._order()
        while len(out) < n:
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
                order = self._order()
            out.append(order[self.position])
            self.position += 1
        return out

    def epochs_done(self) -> float:
        """Passes over this rank's share of the data so far (fractional)."""
        return self.epoch + self.position / max(1, len(range(self.rank, self.size, self.world_size)))

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


@dataclass
class TrainState:
    """Counters of the run (micro-steps and optimizer steps apart) and the data position."""

    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches done
    tokens_seen: int = 0  # TRL's num_tokens: prompt + chosen and prompt + rejected of each pair (SFT: rows)
    stream: dict[str, int] = field(default_factory=dict)


def total_steps(config: Config, num_pairs: int, world_size: int) -> int:
    if config.train.steps is not None:
        return config.train.steps
    per_step = config.train.batch_size * config.train.grad_accum * world_size
    return max(1, math.ceil((config.train.epochs or 1.0) * num_pairs / per_step))


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (its gradients underflow without it); disabled for fp32 and bf16."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ---- one step's numbers -----------------------------------------------------------------------


def loss_inputs(policy: SequenceLogps, reference: SequenceLogps | None, beta: float) -> LossInputs:
    b = policy.num_pairs
    return LossInputs(
        policy_chosen=policy.chosen, policy_rejected=policy.rejected,
        reference_chosen=None if reference is None else reference.chosen,
        reference_rejected=None if reference is None else reference.rejected,
        chosen_tokens=policy.tokens[:b], rejected_tokens=policy.tokens[b:], beta=beta,
    )


class MetricSums:
    """Sums of per-pair metrics over a logging window (or an evaluation), averaged on read.

    ``loss`` is what the step minimises: the mean pair loss plus, for losses with a token term
    (ORPO's NLL, ``--rpo-alpha``, ``sft``), that term per chosen completion token, also logged
    alone as ``nll_loss``.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.pairs = 0
        self.token_loss: float | None = None  # summed token term, None when the loss has none
        self.chosen_tokens = 0

    def add(self, out: LossOutput, policy: SequenceLogps) -> None:
        b = policy.num_pairs
        chosen, rejected = out.chosen_rewards.float(), out.rejected_rewards.float()
        values = {
            "loss": out.losses.detach().sum(),
            "rewards/chosen": chosen.sum(),
            "rewards/rejected": rejected.sum(),
            "rewards/margins": (chosen - rejected).sum(),
            "rewards/accuracies": (chosen > rejected).float().sum(),
            "tokens/chosen": policy.tokens[:b].sum(),
            "tokens/rejected": policy.tokens[b:].sum(),
            "logps/chosen": policy.chosen.detach().sum(),
            "logps/rejected": policy.rejected.detach().sum(),
            "logits/chosen": policy.logits_mean[:b].sum(),
            "logits/rejected": policy.logits_mean[b:].sum(),
            "policy_preference": (policy.mean[:b] > policy.mean[b:]).float().sum(),
        }
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.pairs += b
        if out.token_loss is not None:
            self.token_loss = (self.token_loss or 0.0) + float(out.token_loss.detach())
            self.chosen_tokens += int(policy.tokens[:b].sum())

    def means(self, prefix: str = "") -> dict[str, float]:
        extra = [self.token_loss or 0.0, float(self.chosen_tokens)]
        totals = torch.tensor([*self.sums.values(), *extra, float(self.pairs)], dtype=torch.float64)
        dist.all_reduce_sum(totals)
        n = max(1.0, float(totals[-1]))
        out = {f"{prefix}{k}": float(v) / n for k, v in zip(self.sums, totals[:-3])}
        if self.token_loss is not None:
            nll = float(totals[-3]) / max(1.0, float(totals[-2]))
            out[f"{prefix}loss"] += nll
            out[f"{prefix}nll_loss"] = nll
        return out


# ---- the run ----------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything a training run holds; a checkpoint saves what it needs from here."""

    config: Config
    info: dist.DistInfo
    device: torch.device
    precision: str
    tokenizer: Any
    policy: torch.nn.Module
    scorer: torch.nn.Module  # SequenceScorer(policy), wrapped in DDP under torchrun
    reference: Reference  # where reference log-probs come from (reference.py)
    loss: LossSpec
    train_pairs: list[TokenizedPair]
    eval_pairs: list[TokenizedPair]
    optimizer: torch.optim.Optimizer
    scheduler: Any  # transformers.get_scheduler's (optim.py)
    scaler: torch.amp.GradScaler  # loss scaling under fp16; a pass-through otherwise
    stream: PairStream
    state: TrainState
    total_steps: int
    out_dir: Path
    log: MetricsLog

    def batch(self, pairs: list[TokenizedPair]) -> PreferenceBatch:
        return collate(pairs, self.config.data.layout, self.tokenizer.pad_token_id).to(self.device)

    def forward(self, batch: PreferenceBatch, pairs: list[TokenizedPair]) -> tuple[SequenceLogps, SequenceLogps | None]:
        """Policy and reference log-probs of ``batch``, which lays out ``pairs``."""
        with autocast(self.precision, self.device):
            policy = self.scorer(batch)
            reference = self.reference.logps(batch, pairs)
        return policy, reference


def setup(config: Config, demo: bool = False) -> Run:
    """Load data (checked first), tokenizer, models and optimizer for a run."""
    device = resolve_device(config.model.device)
    info = dist.init(device.type)
    seed_everything(config.train.seed + info.rank)
    out_dir = Path(config.output.dir)
    config.loss = resolve_loss_config(config.loss)  # config: for configs built in code (beta None); a read one is resolved
    loss = get_loss(config.loss.loss_type)
    log = MetricsLog(None, enabled=info.is_main)

    train_raw, eval_raw = load_train_eval(config.data, config.train.seed, log.print)  # bad data stops us here
    check_optimizer(config.train, device)  # config: a bad optim / schedule stops us before any model loads
    check_scheduler(config.train, bool(eval_raw) and config.train.eval_strategy != "no")
    if info.is_main:
        make_output_dir(out_dir, log.print)  # a bad --output stops us here too, before any model loads
    tokenizer = load_tokenizer(config.model)
    if config.data.chat_template:
        tokenizer.chat_template = config.data.chat_template
    if (warning := base_model_warning(config.model, tokenizer)) is not None:
        log.print(warning)
    # Tokenized once: a second run with the same data, tokenizer and settings reads the cache.
    train_pairs, eval_pairs = tokenize_train_eval(config.data, train_raw, eval_raw, tokenizer, log.print)
    if not train_pairs:
        raise DpokitError("no training pairs left after tokenization; raise --max-length or check the data")

    precision = resolve_precision(config.model.precision, device)
    policy = load_policy(config.model, device)  # with LoRA / QLoRA adapters when configured
    policy.train()
    if ignored := ignored_settings(config.loss):
        log.print(f"note: loss '{loss.name}' does not use {', '.join(ignored)}; it has no effect")
    config.data.layout, why = layout_for(policy, config.data.layout, config.data.max_length)
    if why is not None:
        log.print(f"note: {why}")
    reference = build_reference(
        config, policy, loss.needs_reference, device, precision,
        lambda pairs: collate(pairs, config.data.layout, tokenizer.pad_token_id).to(device),
        train_pairs + eval_pairs, log.print)
    if config.model.compile:  # after the reference is copied: the copy stays uncompiled
        compile_decoder(policy)
    scorer = dist.wrap_ddp(SequenceScorer(policy), device)
    optimizer = build_optimizer(policy, config.train, device)  # config: optim.py
    steps = total_steps(config, len(train_pairs), info.world_size)
    scheduler = build_scheduler(optimizer, config.train, steps)  # config: optim.py
    stream = PairStream(len(train_pairs), config.train.seed, info.rank, info.world_size)
    if config.data.group_by_length:
        stream.lengths = [p.num_tokens for p in train_pairs]
        stream.group = 64 * config.train.batch_size * config.train.grad_accum * info.world_size
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        config.save(out_dir / "config.yaml")
        log = MetricsLog(out_dir / "metrics.jsonl", enabled=True)
        n_params = sum(p.numel() for p in policy.parameters())
        start = f" from {config.model.weights}" if config.model.weights else ""
        log.print(f"{'demo: ' if demo else ''}model {config.model.name_or_path}{start} ({n_params / 1e6:.1f}M params), "
                  f"precision {precision}, device {device}, {len(train_pairs)} train / {len(eval_pairs)} eval "
                  f"pairs, {steps} steps x {config.train.batch_size * config.train.grad_accum * info.world_size} "
                  f"pairs, loss {loss.name} ({loss.summary}; "  # config: the banner names the loss that runs
                  f"{', '.join(f'{k} {getattr(config.loss, k)}' for k in ('beta', *loss.settings))}), "
                  f"reference: {reference.describe()}")
    return Run(config, info, device, precision, tokenizer, policy, scorer, reference, loss, train_pairs, eval_pairs,
               optimizer, scheduler, grad_scaler(precision, device), stream, TrainState(), steps, out_dir, log)


def make_output_dir(path: Path, log: Callable[[str], None] | None = None) -> None:
    """Create the output directory and check it takes files: a bad ``--output`` fails in seconds.
    Checkpoints an earlier run left there are kept and named in a note to ``log``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".dpokit-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--output {path}: cannot write there ({e.strerror or e}); choose another "
                          "directory") from None
    old = sorted((p.name for p in path.glob("checkpoint-*") if p.is_dir()), key=lambda n: (len(n), n))
    if old and log is not None:
        shown = ", ".join(old[:5]) + (f" and {len(old) - 5} more" if len(old) > 5 else "")
        kept = "it is" if len(old) == 1 else "they are"
        log(f"note: {path} holds {shown} from an earlier run; {kept} kept (a checkpoint of the same step is "
            "replaced). Use a new --output to keep runs apart.")


def train_step(run: Run, window: MetricSums) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the gradient norm before clipping."""
    cfg = run.config
    micro = [run.stream.take(cfg.train.batch_size) for _ in range(cfg.train.grad_accum)]
    groups = [[run.train_pairs[i] for i in indices] for indices in micro]
    batches = [run.batch(pairs) for pairs in groups]
    # Pairs and chosen completion tokens of the whole step (all micro-batches, all ranks): the
    # normalisers of the pair losses and of the token-averaged terms (NLL), so B x K equals BK x 1.
    counts = torch.tensor([[b.num_pairs, int(b.completion_tokens[: b.num_pairs].sum())] for b in batches],
                          dtype=torch.float64, device=run.device).sum(0)
    step_pairs, step_tokens = dist.all_reduce_sum(counts).tolist()
    beta = beta_at(cfg.loss.beta, cfg.loss.beta_schedule, run.state.step, run.total_steps)
    bad_loss = None
    for batch, pairs in zip(batches, groups):
        policy, reference = run.forward(batch, pairs)
        out = run.loss.fn(loss_inputs(policy, reference, beta), cfg.loss)
        # DDP averages gradients over ranks, so scale by world size to keep "sum over the step's pairs".
        loss = out.losses.sum() * run.info.world_size / step_pairs
        if out.token_loss is not None:
            loss = loss + out.token_loss * run.info.world_size / max(1.0, step_tokens)
        if not math.isfinite(float(loss.detach())):  # still run backward: under DDP every rank must
            bad_loss = float(loss.detach())
        run.scaler.scale(loss).backward()
        window.add(out, policy)
        run.state.micro_step += 1
        run.state.tokens_seen += sum(p.num_tokens for p in pairs)  # as TRL counts, whatever the layout
    stop_if_not_finite(run, bad_loss)
    grad_norm = optimizer_step(run)
    run.reference.on_step(run.state.step)  # TR-DPO's reference refresh, when configured
    return grad_norm


def stop_if_not_finite(run: Any, bad_loss: float | None) -> None:
    """Stop the run before the update when any rank's loss was NaN or Inf (``bad_loss``, None when
    this rank's was finite); under fp16 the loss scaler would otherwise skip such steps silently."""
    if dist.all_reduce_sum(torch.tensor(float(bad_loss is not None), device=run.device)).item():
        value = "not finite on another rank" if bad_loss is None else bad_loss
        raise DpokitError(
            f"step {run.state.step + 1}: the loss is {value}; the run is stopped before the update, and the "
            "last checkpoint is intact. Lower --lr or --beta, or use --precision fp32.")


def optimizer_step(run: Any) -> float:
    """Clip, check and apply the accumulated gradients of ``run`` (DPO's or SFT's); returns the
    gradient norm before clipping.

    Under fp16 the gradients are unscaled first, and a step whose gradients overflowed is skipped
    with a smaller loss scale (``torch.amp.GradScaler``); any other non-finite gradient stops the
    run before the update.
    """
    params = [p for p in run.policy.parameters() if p.requires_grad]
    max_norm = run.config.train.max_grad_norm if run.config.train.max_grad_norm > 0 else math.inf
    run.scaler.unscale_(run.optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if not math.isfinite(grad_norm) and not run.scaler.is_enabled():
        raise DpokitError(
            f"step {run.state.step + 1}: the gradient norm is {grad_norm}; the run is stopped before the "
            "update, and the last checkpoint is intact. Lower --lr (or --beta), or use --precision fp32.")
    run.scaler.step(run.optimizer)  # optimizer.step(), unless fp16 gradients overflowed
    run.scaler.update()
    step_scheduler(run.scheduler)  # config: metric-driven schedules step at evaluations instead
    run.optimizer.zero_grad(set_to_none=True)
    run.state.step += 1
    run.state.stream = run.stream.state()
    return grad_norm


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Loss, rewards and the policy's own preference on the eval pairs (this rank's share)."""
    run.policy.eval()
    sums = MetricSums()
    # The beta of the last training step (logged on the same row), or of the first before training.
    beta = beta_at(run.config.loss.beta, run.config.loss.beta_schedule, max(0, run.state.step - 1),
                   run.total_steps)
    mine = run.eval_pairs[run.info.rank :: run.info.world_size]
    size = run.config.train.eval_batch_size or run.config.train.batch_size  # config: per_device_eval_batch_size
    for start in range(0, len(mine), size):
        pairs = mine[start : start + size]
        batch = run.batch(pairs)
        policy, reference = run.forward(batch, pairs)
        out = run.loss.fn(loss_inputs(policy, reference, beta), run.config.loss)
        sums.add(out, policy)
    run.policy.train()
    return sums.means(prefix="eval_")


def save_model(run: Run, path: Path) -> None:
    """Write a Hugging Face model directory atomically: to a temporary name, then renamed."""
    if not run.info.is_main:
        return
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_policy(run.policy, tmp, run.tokenizer)  # with LoRA: the merged model, and the adapter in adapter/
    run.tokenizer.save_pretrained(tmp)
    run.config.save(tmp / "dpokit_config.yaml")
    (tmp / "trainer_state.json").write_text(json.dumps(
        {**asdict(run.state), "total_steps": run.total_steps}, indent=2))
    if path.exists():
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def train(config: Config, demo: bool = False) -> Path:
    """Run DPO training as configured; returns the directory of the final model."""
    run = setup(config, demo)
    loss = config.loss
    diagnostics = Diagnostics(run.total_steps, warmup_steps(config.train, run.total_steps), loss.beta, run.log.print,
                              per_token=rewards_per_token(loss.loss_type, loss.sequence_logps))
    return fit(run, step=lambda window: train_step(run, window), new_window=MetricSums,
               evaluate=(lambda: evaluate(run)) if run.eval_pairs else None, name="train",
               extra=lambda step: {"beta": beta_at(loss.beta, loss.beta_schedule, step - 1, run.total_steps)},
               observe=diagnostics.observe, done="saved the aligned model to {final}")


def interactive() -> bool:
    """Whether a progress bar would be seen as one: stderr is a terminal, or a notebook runs us.
    In a log file a bar is a stream of carriage returns."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def fit(run: Any, step: Callable[[Any], float], new_window: Callable[[], Any],
        evaluate: Callable[[], dict[str, float]] | None, name: str, done: str,
        extra: Callable[[int], dict[str, float]] = lambda step: {},
        observe: Callable[[dict[str, Any]], None] = lambda row: None) -> Path:
    """The loop shared by DPO (`train`) and SFT (`dpokit.sft`): optimizer steps, logging,
    evaluation and checkpoints, then the final model.

    ``run`` holds the run's state (`Run`, or SFT's); ``step(window)`` takes one optimizer step,
    adding its metrics to ``window`` (from ``new_window()``, read with ``window.means()``) and
    returning the gradient norm before clipping; ``evaluate()`` returns ``eval_*`` metrics;
    ``extra(step)`` adds fields to each logged row; ``observe(row)`` sees every logged row.
    """
    from tqdm.auto import tqdm

    cfg = run.config
    progress = tqdm(total=run.total_steps, desc=name, unit="step", dynamic_ncols=True,
                    disable=not (run.info.is_main and cfg.output.progress and interactive()))
    run.log.progress = progress
    # config: when to log, evaluate and save (strategies, fractional steps), resolved once
    intervals = Intervals.resolve(cfg, run.total_steps, run.stream.size, run.info.world_size)
    evaluate = evaluate if intervals.evaluates else None
    try:
        def eval_row() -> dict[str, Any]:
            row = {"step": run.state.step, **evaluate(), "epoch": round(run.stream.epochs_done(), 4)}
            if run.state.step:  # config: reduce_lr_on_plateau steps on evaluations (not eval_on_start's, as the Trainer)
                observe_eval(run.scheduler, row, cfg.train.metric_for_best_model)
            return row

        if evaluate and cfg.train.eval_on_start:
            run.log.log(eval_row())
        window, window_start, window_tokens = new_window(), time.perf_counter(), run.state.tokens_seen
        while run.state.step < run.total_steps:
            grad_norm = step(window)
            n = run.state.step
            progress.update(1)
            if intervals.log(n):
                elapsed = time.perf_counter() - window_start
                row = {"step": n, **window.means(), "grad_norm": grad_norm,
                       "learning_rate": run.optimizer.param_groups[0]["lr"],
                       "epoch": round(run.stream.epochs_done(), 4),
                       "num_tokens": run.state.tokens_seen,
                       "tokens_per_second": (run.state.tokens_seen - window_tokens) * run.info.world_size / elapsed,
                       **extra(n)}
                run.log.log(row)
                observe(row)
                window, window_start, window_tokens = new_window(), time.perf_counter(), run.state.tokens_seen
            if evaluate and intervals.eval(n):
                run.log.log(eval_row())
            if intervals.save(n):
                save_model(run, run.out_dir / f"checkpoint-{n}")
                dist.barrier()
        if evaluate:
            run.log.log(eval_row())
        final = run.out_dir / "final"
        save_model(run, final)
        dist.barrier()
        if run.info.is_main:
            run.log.print(done.format(final=final))
        return final
    finally:
        progress.close()
        run.log.close()
