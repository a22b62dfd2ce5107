"""The training loop, one for every task (``tasks/``: DPO's preference pairs, SFT's sequences).

Read top to bottom: `setup` builds the run (data first, so bad data stops it before a model
loads; then the tokenizer, the policy, the task's reference, the optimizer, and a checkpoint's state
when resuming), `fit` runs one linear loop of optimizer steps with logging, evaluation and
checkpoints, and saves the final model. Each optimizer step (`train_step`) takes ``grad_accum``
micro-batches; the task divides each micro-batch's loss by the whole step's normaliser (pairs,
tokens), so batch B x accumulation K gives the same update as batch BK x 1.

SIGTERM (what SLURM and Kubernetes send before a kill) and Ctrl-C stop the run at the next step
boundary with a checkpoint; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import math
import random
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

import numpy as np
import torch

from dpokit import checkpoint, dist, fsdp, launch, models, sharded
from dpokit.attention import attention_of
from dpokit.config import Config, TrainConfig
from dpokit.data.stream import DataStream
from dpokit.divergence import last_checkpoint
from dpokit.errors import ConfigError, RuntimeFault
from dpokit.intervals import Intervals
from dpokit.logps import SequenceScorer, compile_decoders
from dpokit.losses import resolve_loss_config
from dpokit.modelcheck import check_saved_weights, check_weights_outside, fit_context
from dpokit.models import (
    TINY,
    autocast,
    casts_kept,
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
from dpokit.peak import peak_flops
from dpokit.run import Run, TrainState
from dpokit.tasks import make_task
from dpokit.tiny import resolve
from dpokit.tracking import MetricsLog, build_tracker, check_trackers, device_names
from dpokit.watch import Watch


def total_steps(cfg: TrainConfig, num_examples: int, world_size: int) -> int:
    if cfg.steps is not None:
        return cfg.steps
    per_step = cfg.batch_size * cfg.grad_accum * world_size
    return max(1, math.ceil((cfg.epochs or 1.0) * num_examples / per_step))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup(config: Config, task: str = "dpo", demo: bool = False) -> Run:
    """Build a run of ``task`` (``dpo`` or ``sft``): data (checked first), tokenizer, models,
    optimizer, and with ``train.resume`` the checkpoint's state."""
    notes = launch.from_accelerate(config)  # what an accelerate config file asks for, from the environment
    device = resolve_device(config.model.device)
    info = dist.init(device.type)
    check_trackers(config.output)  # a report_to package missing stops the run here, before the data loads
    seed_everything(config.train.seed + info.rank)
    precision = config.model.precision = resolve_precision(config.model.precision, device)
    config.loss = resolve_loss_config(config.loss)  # a config built in code may leave beta to the loss
    given = config.to_dict()  # before the model changes anything (the layout it allows)
    out_dir = Path(config.output.dir)
    log = MetricsLog(None, enabled=info.is_main)
    for note in notes + models.precision_notes(precision, device):
        log.print(note)
    job = make_task(task, config)
    job.load(log.print)  # bad data stops us here, before any model loads
    check_optimizer(config.train, device)  # and a bad optimizer
    fsdp.check(config.train, precision, config.model.ref_refresh_steps, config.model.load_in_4bit)
    resume_from = checkpoint.find(config.train.resume, out_dir) if config.train.resume else None
    resume_state = (checkpoint.check_resumable(resume_from, job.name, given, info.world_size)
                    if resume_from else None)
    check_weights_outside(config.model.weights, out_dir, resume_from is not None)  # never overwrite the start
    if resume_from is not None:  # its weights whole, before any model loads
        check_saved_weights(resume_from)
    if info.is_main:  # a bad --output stops us here too
        checkpoint.check_output_dir(out_dir, resume_from is not None, log.print)

    with dist.main_first():  # ``tiny``: the built-in model's directory, built once, by rank 0
        job.model_config = resolve(config.model)
    fit_context(config.data, job.model_config.weights or job.model_config.name_or_path,
                config.model.name_or_path == TINY, log.print, trust_remote_code=config.model.trust_remote_code)
    tokenizer = load_tokenizer(job.model_config)
    if config.data.chat_template:
        tokenizer.chat_template = config.data.chat_template
    job.tokenize(tokenizer, log.print)
    lengths = job.lengths()  # tokens per training example: the data's fingerprint, and length grouping
    data_key = checkpoint.data_key(lengths)
    if resume_from is not None and resume_state is not None:
        checkpoint.check_same_data(resume_from, resume_state, len(job.train), data_key)
    if (config.train.early_stopping_patience or config.train.load_best_model_at_end) and not job.eval:
        raise ConfigError("early stopping and load_best_model_at_end pick checkpoints by an evaluation metric, "
                          "and this run has no evaluation data\n  fix: add --eval-data FILE or --eval-fraction 0.1")
    check_scheduler(config.train, bool(job.eval) and config.train.eval_strategy != "no")  # and a bad schedule
    steps = total_steps(config.train, len(job.train), info.world_size)
    warmup = warmup_steps(config.train, steps)
    policy = load_policy(job.model_config, device, config.data.max_length)  # LoRA / QLoRA adapters when configured
    policy.train()
    job.prepare(policy, device, precision, steps, log.print)  # the reference comes from the starting policy
    if config.model.compile:  # after the reference is copied from the uncompiled policy
        compile_decoders(policy, getattr(getattr(job, "reference", None), "model", None))  # a frozen reference's
    scorer = fsdp.place(SequenceScorer(policy), getattr(job, "reference", None), config.train, precision, device,
                        log.print)  # DDP, or FSDP2 shards (the reference's too)
    optimizer = build_optimizer(policy, config.train, device)
    scheduler = build_scheduler(optimizer, config.train, steps)
    stream = DataStream(len(job.train), config.train.seed, info.rank, info.world_size)
    stream.key = data_key
    if config.data.group_by_length:
        stream.lengths = lengths
        stream.group = 64 * config.train.batch_size * config.train.grad_accum * info.world_size
    devices = device_names(device)  # every rank's device, for the trackers (a collective)
    start_step = resume_state["counters"]["step"] if resume_state is not None else 0
    if info.is_main:
        config.save(out_dir / "config.yaml")
        if resume_state is not None:  # logs hold each step once: rows past the checkpoint go
            checkpoint.keep_logs_up_to(out_dir, start_step)
    log = build_tracker(config, out_dir, info.is_main, resume_state is not None, devices, start_step)
    watch = Watch(config, info.is_main, job.diagnostics(steps, warmup, log.print),
                  peak_flops(device, precision, config.output.peak_tflops))
    run = Run(config, given, job, info, device, precision, tokenizer, policy, scorer, optimizer, scheduler,
              torch.amp.GradScaler(device.type, enabled=precision == "fp16"), stream, TrainState(), steps, warmup,
              out_dir, log, job.metrics(), watch)
    if resume_from is not None and resume_state is not None:
        checkpoint.load_checkpoint(run, resume_from, resume_state)
    if info.is_main:
        n_params = sum(p.numel() for p in policy.parameters())
        start = f" from {config.model.weights}" if config.model.weights else ""
        resumed = f", resuming {resume_from} at step {run.state.step}" if resume_from else ""
        log.print(f"{'demo: ' if demo else ''}{job.name} of {config.model.name_or_path}{start} ({n_params / 1e6:.1f}M "
                  f"params), precision {precision}, device {device}, attention {attention_of(policy)}, {len(job.train)} train / {len(job.eval)} eval "
                  f"{job.unit}, {steps} steps x {config.train.batch_size * config.train.grad_accum * info.world_size} "
                  f"{job.unit}, {job.describe()}{resumed}")
    return run


def train_step(run: Run) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the gradient norm before clipping."""
    cfg = run.config.train
    groups = [[run.task.train[i] for i in indices] for indices in run.stream.take(cfg.batch_size, cfg.grad_accum)]
    batches = [run.task.batch(examples) for examples in groups]
    # The whole step's normalisers (all micro-batches, all ranks), so B x K equals BK x 1.
    counts = torch.tensor([run.task.counts(b) for b in batches], dtype=torch.float64, device=run.device).sum(0)
    totals = dist.all_reduce_sum(counts).tolist()
    bad_loss = None
    with casts_kept(run.precision, run.device, sharded.is_sharded(run.policy)):  # weights cast once a step
        for k, (batch, examples) in enumerate(zip(batches, groups)):
            with dist.gradient_sync(run.scorer, k == len(batches) - 1):  # all-reduce on the last micro-step only
                with autocast(run.precision, run.device):
                    out = run.task.forward(run.scorer, batch, examples, run.state.step)
                # DDP averages gradients over ranks, so scale by world size to keep "sum over the step".
                loss = run.task.objective(out, totals) * run.info.world_size
                if not math.isfinite(float(loss.detach())):  # still run backward: under DDP every rank must
                    bad_loss = float(loss.detach())
                run.scaler.scale(loss).backward()
            run.window.add(out)
            run.state.micro_step += 1
            run.state.tokens_seen += run.task.num_tokens(examples)
    stop_if_not_finite(run, bad_loss)
    grad_norm = optimizer_step(run)
    run.task.after_step(run.state.step)
    run.watch.step_done(sum(run.task.flops(examples) for examples in groups))
    return grad_norm


def stop_if_not_finite(run: Run, bad_loss: float | None) -> None:
    """Stop the run before the update when any rank's loss was NaN or Inf (``bad_loss``, None when
    this rank's was finite); under fp16 the loss scaler would otherwise skip such steps silently."""
    if dist.any_true(bad_loss is not None):
        value = "not finite on another rank" if bad_loss is None else bad_loss
        raise RuntimeFault(
            f"step {run.state.step + 1}: the loss is {value}; the run is stopped before the update, and "
            f"{last_checkpoint(run.out_dir)}\n  fix: lower --lr or --beta, or use --precision fp32")


def optimizer_step(run: Run) -> float:
    """Clip, check and apply the accumulated gradients; returns the gradient norm before clipping.

    Under fp16 the gradients are unscaled first, and a step whose gradients overflowed is skipped
    with a smaller loss scale (``torch.amp.GradScaler``); any other non-finite gradient stops the
    run before the update.
    """
    params = [p for p in run.policy.parameters() if p.requires_grad]
    max_norm = run.config.train.max_grad_norm if run.config.train.max_grad_norm > 0 else math.inf
    run.scaler.unscale_(run.optimizer)
    grad_norm = fsdp.clip_grad_norm(params, max_norm)
    if not math.isfinite(grad_norm) and not run.scaler.is_enabled():
        raise RuntimeFault(
            f"step {run.state.step + 1}: the gradient norm is {grad_norm}; the run is stopped before the "
            f"update, and {last_checkpoint(run.out_dir)}\n  fix: lower --lr (or --beta), or use --precision fp32")
    run.scaler.step(run.optimizer)  # optimizer.step(), unless fp16 gradients overflowed
    run.scaler.update()
    step_scheduler(run.scheduler)  # metric-driven schedules (reduce_lr_on_plateau) step at evaluations
    run.optimizer.zero_grad(set_to_none=True)
    run.state.step += 1
    return grad_norm


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """The task's metrics on the evaluation examples (this rank's share), under ``eval_`` names."""
    run.policy.eval()
    window = run.task.metrics()
    step = max(0, run.state.step - 1)  # the last training step's settings (beta), logged on the same row
    mine = run.task.eval[run.info.rank :: run.info.world_size]
    size = run.config.train.eval_batch_size or run.config.train.batch_size
    batches = [mine[start : start + size] for start in range(0, len(mine), size)]
    # FSDP2's forward gathers weights with every rank: a rank with fewer batches joins with a spare one.
    rounds = dist.max_over_ranks(len(batches)) if sharded.is_sharded(run.policy) else len(batches)
    for i in range(rounds):
        examples = batches[i] if i < len(batches) else run.task.eval[:1]
        batch = run.task.batch(examples)
        with autocast(run.precision, run.device):
            out = run.task.forward(run.scorer, batch, examples, step)
        if i < len(batches):
            window.add(out)
    run.policy.train()
    return window.means(prefix="eval_")


@dataclass
class RunStopped(Exception):
    """The run stopped on a signal at a step boundary, after saving ``checkpoint``."""

    step: int
    total: int
    why: str
    checkpoint: Path

    @property
    def exit_code(self) -> int:
        return 130 if self.why == "SIGINT" else 143


class StopSignals:
    """SIGTERM and Ctrl-C (SIGINT) ask the loop to stop at the next step boundary; a second Ctrl-C
    stops at once (KeyboardInterrupt)."""

    def __init__(self, say) -> None:
        self.say = say
        self.requested: str | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested is None:
            self.say(f"{name}: stopping at the end of this step with a checkpoint"
                     + (" (Ctrl-C again to quit at once)" if signum == signal.SIGINT else ""))
        self.requested = self.requested or name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def interactive() -> bool:
    """Whether a progress bar would be seen as one: stderr is a terminal, or a notebook runs us.
    In a log file a bar is a stream of carriage returns."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def fit(run: Run) -> Path:
    """Optimizer steps with logging, evaluation and checkpoints, then the final model."""
    from tqdm.auto import tqdm

    cfg, watch = run.config, cast(Watch, run.watch)
    when = Intervals.resolve(cfg, run.total_steps, run.stream.size, run.info.world_size)
    evaluates = bool(run.task.eval) and when.evaluates
    progress = tqdm(total=run.total_steps, initial=run.state.step, desc=run.task.name, unit="step",
                    dynamic_ncols=True, disable=not (run.info.is_main and cfg.output.progress and interactive()))
    run.log.progress = progress

    def evaluate_and_log() -> bool:
        """Log an evaluation row; True when it is the best so far."""
        row = {"step": run.state.step, **evaluate(run), "epoch": round(run.stream.epochs_done(), 4)}
        run.log.log(row)
        if run.state.step:  # reduce_lr_on_plateau follows evaluations (not eval_on_start's, as the Trainer)
            observe_eval(run.scheduler, row, cfg.train.metric_for_best_model)
        return watch.evaluated(row)

    try:
        with StopSignals(run.log.print) as signals:
            watch.start(run, resumed=bool(cfg.train.resume))
            if evaluates and cfg.train.eval_on_start and run.state.step == 0:
                evaluate_and_log()
            saved = run.state.step if cfg.train.resume else None  # the step of the newest checkpoint
            stopped_early = None
            while run.state.step < run.total_steps:
                grad_norm = train_step(run)
                n, last = run.state.step, run.state.step == run.total_steps
                progress.update(1)
                if when.log(n):
                    row = watch.train_row(run, grad_norm)
                    run.log.log(row)
                    watch.logged(run, row, progress)
                best = False
                if evaluates and when.eval(n):
                    best = evaluate_and_log()
                    stopped_early = watch.stopper.reason()
                keep_best = best and cfg.train.load_best_model_at_end  # final/ may come from this step
                if (when.save(n) or keep_best) and not (last or stopped_early):
                    checkpoint.save_checkpoint(run)
                    saved = n
                if stopped_early:
                    run.log.print(f"{stopped_early}: the run stops at step {n} of {run.total_steps}")
                    break
                if dist.any_true(signals.requested is not None) and not last:
                    path = checkpoint.save_checkpoint(run) if saved != n else run.out_dir / f"checkpoint-{n}"
                    raise RunStopped(n, run.total_steps, signals.requested or "SIGTERM", path)
        if evaluates and not stopped_early:
            evaluate_and_log()
        if cfg.train.load_best_model_at_end:
            load_best(run)
        watch.before_final(run)  # a diverged run saves no broken final/
        final = run.out_dir / "final"
        checkpoint.save_final(run, final)
        dist.barrier()
        if run.info.is_main:
            watch.finish(run, final)
            run.log.print(run.task.done(str(final)))
        return final
    finally:
        progress.close()
        watch.close()
        run.log.close()


def load_best(run: Run) -> None:
    """Put the best evaluation's weights into the policy (``load_best_model_at_end``)."""
    stopper = cast(Watch, run.watch).stopper
    if stopper.best_step is None or stopper.best_step == run.state.step:
        return  # the weights in memory are the best ones
    best = run.watch.best_checkpoint(run.out_dir)
    if best is None:
        run.log.print(f"warning: the best evaluation (step {stopper.best_step}) has no checkpoint; final/ holds "
                      "the last weights")
        return
    checkpoint.load_weights(run.policy, best)
    run.weights_step = stopper.best_step
    run.log.print(f"final/ holds the best checkpoint, {best} ({stopper.metric} {stopper.best_value:.6g} at step "
                  f"{stopper.best_step})")


def train(config: Config, task: str = "dpo", demo: bool = False) -> Path:
    """Run ``task`` (``dpo`` or ``sft``) as configured; returns the directory of the final model.
    An output directory this run created is removed again when the run fails before its first step."""
    out_dir = Path(config.output.dir)
    existed = out_dir.exists()
    try:
        return fit(setup(config, task, demo))
    except BaseException:
        if not existed and dist.is_main():
            remove_if_nothing_done(out_dir)
        raise


def remove_if_nothing_done(out_dir: Path) -> None:
    """Remove ``out_dir`` when it holds only what a run writes before its first step (its config, a
    metrics log without training rows)."""
    if not out_dir.is_dir() or any(p.name not in ("config.yaml", "metrics.jsonl") for p in out_dir.iterdir()):
        return
    metrics = out_dir / "metrics.jsonl"
    if metrics.is_file() and '"loss"' in metrics.read_text(encoding="utf-8", errors="replace"):
        return
    shutil.rmtree(out_dir, ignore_errors=True)
