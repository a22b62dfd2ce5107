"""Optimizers and schedules by the Trainer's names (optim.py), and when the loop logs, evaluates and
saves (intervals.py): hand-worked rates, every schedule against transformers' own, every optimizer
stepping a real tiny model (or a clear stop), and a real run with fractional steps."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import get_scheduler
from transformers.trainer_utils import SchedulerType

from dpokit.config import Config, OutputConfig, TrainConfig
from dpokit.errors import ConfigError
from dpokit.intervals import Intervals
from dpokit.optim import (
    BNB_OPTIMIZERS,
    ELSEWHERE,
    TORCH_OPTIMIZERS,
    build_optimizer,
    build_scheduler,
    check_optimizer,
    check_scheduler,
    observe_eval,
    step_scheduler,
    warmup_steps,
)

CPU = torch.device("cpu")
# Arguments some schedules need (the Trainer's lr_scheduler_kwargs).
KWARGS = {"cosine_with_min_lr": {"min_lr_rate": 0.1}, "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
          "warmup_stable_decay": {"num_decay_steps": 4}}


def rates(name: str, total: int = 12, **train) -> list[float]:
    """The learning rate of each of ``total`` optimizer steps under dpokit's schedule ``name``."""
    cfg = TrainConfig(lr=1.0, scheduler=name, scheduler_kwargs=KWARGS.get(name), **train)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg, total)
    out = []
    for step in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        step_scheduler(scheduler)
        observe_eval(scheduler, {"eval_loss": 1.0 + step}, "eval_loss")  # metric schedules only; worse each time
    return out


def test_the_scheduler_names_are_the_trainers():
    from typing import get_args

    from dpokit.config import SchedulerName

    assert set(get_args(SchedulerName)) == {s.value for s in SchedulerType}


@pytest.mark.parametrize("name", [s.value for s in SchedulerType])
def test_every_schedule_follows_transformers(name):
    """Warmup ceil(0.1 * 12) = 2 steps, the schedule's own arguments, stepped once per optimizer step
    (metric schedules at each evaluation): the rates transformers.get_scheduler gives."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_scheduler(name, optimizer, num_warmup_steps=2, num_training_steps=12,
                              scheduler_specific_kwargs=KWARGS.get(name, {}))
    expected = []
    for step in range(12):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if name in ("reduce_lr_on_plateau", "greedy"):
            reference.step(1.0 + step)
        else:
            reference.step()
    assert rates(name) == pytest.approx(expected)


def test_hand_worked_rates():
    # linear: 0 at the first step, up over ceil(0.1 * 10) = 1 warmup step, then down to 1/9 of the peak.
    assert rates("linear", 10) == pytest.approx([0.0] + [(10 - t) / 9 for t in range(1, 10)])
    # constant has no warmup in transformers; constant_with_warmup has.
    assert rates("constant", 4) == [1.0] * 4
    assert rates("constant_with_warmup", 4, warmup_steps=2) == pytest.approx([0.0, 0.5, 1.0, 1.0])
    # cosine_with_min_lr ends near 10% of the peak, not 0 (SmolLM3's min_lr_rate: 0.1).
    assert rates("cosine_with_min_lr", 10, warmup_steps=0) == pytest.approx(
        [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(10)])
    # inverse_sqrt: 1 / sqrt(t / warmup) after warmup (timescale = warmup steps).
    inv = rates("inverse_sqrt", 17, warmup_steps=4)
    assert inv[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0]) and inv[16] == pytest.approx(0.5)


def test_warmup_rounds_up_as_transformers_does():
    assert warmup_steps(TrainConfig(warmup_ratio=0.1), 5) == 1  # a short run still warms up
    assert warmup_steps(TrainConfig(warmup_ratio=0.1), 120) == 12
    assert warmup_steps(TrainConfig(warmup_steps=7), 120) == 7
    assert warmup_steps(TrainConfig(warmup_steps=0.05), 120) == 6  # below 1: a fraction (transformers 5)
    assert warmup_steps(TrainConfig(warmup_steps=0), 120) == 0


def test_reduce_lr_on_plateau_steps_at_evaluations():
    cfg = TrainConfig(lr=1.0, scheduler="reduce_lr_on_plateau", scheduler_kwargs={"patience": 0, "factor": 0.5})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, cfg, 10)
    step_scheduler(scheduler)  # an optimizer step alone changes nothing
    assert optimizer.param_groups[0]["lr"] == 1.0
    for loss in (1.0, 2.0, 3.0):  # worse and worse: halved after each evaluation past the first
        observe_eval(scheduler, {"eval_loss": loss}, "eval_loss")
    assert optimizer.param_groups[0]["lr"] == 0.25
    with pytest.raises(ConfigError, match="eval_nope' is not an evaluation metric"):
        observe_eval(scheduler, {"eval_loss": 1.0}, "eval_nope")
    with pytest.raises(ConfigError, match="does not evaluate"):
        check_scheduler(cfg, evaluates=False)


def test_schedule_arguments_that_do_not_fit_are_a_clear_error():
    with pytest.raises(ConfigError, match=r"cosine_with_min_lr.*\n  fix: .*min_lr_rate"):
        check_scheduler(TrainConfig(scheduler="cosine_with_min_lr"), evaluates=True)
    with pytest.raises(ConfigError, match="linear' with scheduler_kwargs {'power': 2}"):
        check_scheduler(TrainConfig(scheduler="linear", scheduler_kwargs={"power": 2}), evaluates=True)


# ---- optimizers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_batch(llama_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    ids = tiny_tokenizer(["The capital of France is Paris.", "Two plus two equals four."], padding=True,
                         return_tensors="pt")
    return model, ids


def one_step(model, ids, optim: str, **train):
    model = copy.deepcopy(model).train()
    cfg = TrainConfig(optim=optim, lr=1e-3, **train)
    check_optimizer(cfg, CPU)
    optimizer = build_optimizer(model, cfg, CPU)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(**ids, labels=ids["input_ids"]).loss.backward()
    optimizer.step()
    return model, optimizer, before


RUN_HERE = [*TORCH_OPTIMIZERS, *(n for n in BNB_OPTIMIZERS if not n.startswith("paged_ademamix"))]


@pytest.mark.parametrize("optim", RUN_HERE)
def test_every_optimizer_takes_a_step(model_and_batch, optim):
    model, optimizer, before = one_step(*model_and_batch, optim)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)  # every weight moved
    assert all(bool(torch.isfinite(p.detach()).all()) for p in model.parameters())
    kinds = (("ademamix", "AdEMAMix"), ("lion", "Lion"), ("rmsprop", "RMSprop"), ("adagrad", "Adagrad"), ("sgd", "SGD"),
             ("adafactor", "Adafactor"), ("adam", "AdamW"))  # the class the Trainer builds for the name
    assert type(optimizer).__name__.startswith(next(cls for part, cls in kinds if part in optim))
    states = [s for s in optimizer.state.values() if "state1" in s]
    if optim in BNB_OPTIMIZERS:  # bitsandbytes' state: 8-bit for the large weights of the 8-bit ones
        dtypes = {s["state1"].dtype for s in states}
        assert dtypes == ({torch.uint8, torch.float32} if "8bit" in optim else {torch.float32})


def test_the_trainers_arguments_reach_the_optimizer(model_and_batch):
    _, optimizer, _ = one_step(*model_and_batch, "adamw_torch", adam_betas=(0.8, 0.95), adam_epsilon=1e-6,
                               weight_decay=0.1)
    group = optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["lr"], group["weight_decay"]) == ((0.8, 0.95), 1e-6, 1e-3, 0.1)
    _, adafactor, _ = one_step(*model_and_batch, "adafactor")
    assert (adafactor.defaults["scale_parameter"], adafactor.defaults["relative_step"]) == (False, False)
    _, paged, _ = one_step(*model_and_batch, "paged_adamw_8bit")
    assert paged.is_paged and paged.args.optim_bits == 8 and paged.param_groups[0]["weight_decay"] == 0.0


def test_weight_decay_spares_biases_and_norms_as_the_trainer_does(model_and_batch):
    """With zero gradients, AdamW's step is the decay alone: weights shrink by lr * wd; norm weights
    (RMSNorm, by name) keep their values."""
    model = copy.deepcopy(model_and_batch[0])
    optimizer = build_optimizer(model, TrainConfig(lr=0.1, weight_decay=0.5), CPU)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1.0 if "norm" in name else 1 - 0.1 * 0.5
        assert torch.allclose(p, before[name] * factor), name
    assert any("norm" in n for n in before) and any("norm" not in n for n in before)


def test_optimizers_that_cannot_run_stop_with_the_nearest():
    with pytest.raises(ConfigError, match=r"paged_ademamix_8bit' does not run on cpu.*\n  fix: --optim adamw_bnb_8bit"):
        check_optimizer(TrainConfig(optim="paged_ademamix_8bit"), CPU)
    for name in ELSEWHERE:
        with pytest.raises(ConfigError, match=rf"'{name}' needs a package .*\n  fix: --optim \w+ is the nearest"):
            check_optimizer(TrainConfig(optim=name), CPU)
    with pytest.raises(ConfigError, match=r"unknown train.optim 'adamw_torh'; did you mean 'adamw_torch'\?\n  fix: "
                                          r"choose one of adamw_torch, adamw_torch_fused, adafactor"):
        check_optimizer(TrainConfig(optim="adamw_torh"), CPU)


# ---- intervals ----------------------------------------------------------------------------------


def intervals(total: int, examples: int = 100, **output) -> Intervals:
    train = {k: output.pop(k) for k in ("eval_steps", "eval_strategy") if k in output}
    cfg = Config(train=TrainConfig(batch_size=2, **train), output=OutputConfig(**output))
    return Intervals.resolve(cfg, total, examples)


def test_fractional_steps_are_fractions_of_the_run_rounded_up():
    every = intervals(10, logging_steps=0.25, save_steps=0.5, eval_steps=0.3)
    assert [s for s in range(1, 11) if every.log(s)] == [1, 3, 6, 9, 10]  # ceil(2.5) = 3, first and last always
    assert [s for s in range(1, 11) if every.save(s)] == [5]  # never at the last step: final/ is written then
    assert [s for s in range(1, 11) if every.eval(s)] == [3, 6, 9]  # the final evaluation follows the loop
    assert [s for s in range(1, 8) if intervals(7, save_steps=0.5).save(s)] == [4]  # ceil(3.5)


def test_strategies():
    epoch = intervals(12, examples=8, save_strategy="epoch", logging_strategy="epoch", eval_strategy="epoch")
    assert [s for s in range(1, 13) if epoch.save(s)] == [4, 8]  # 4 steps per epoch of 8 pairs, batch 2
    assert [s for s in range(1, 13) if epoch.log(s)] == [1, 4, 8, 12]
    off = intervals(12, save_strategy="no", logging_strategy="no", eval_strategy="no", save_steps=2, eval_steps=2)
    assert not any(off.save(s) or off.eval(s) for s in range(1, 13)) and not off.evaluates
    assert [s for s in range(1, 13) if off.log(s)] == [1, 12]
    assert not any(intervals(12, save_steps=0).save(s) for s in range(1, 13))


def test_bad_intervals_are_refused():
    with pytest.raises(ValueError, match="output.save_steps must be a whole number of steps, or a fraction"):
        OutputConfig(save_steps=2.5)
    with pytest.raises(ValueError, match="train.eval_steps"):
        TrainConfig(eval_steps=-0.5)


def test_a_run_saves_at_a_fraction_and_follows_the_schedule(tmp_path, tiny_dir, one_thread):
    """save_steps 0.5 of 4 steps: checkpoint-2 only; cosine_with_min_lr's logged rates, hand-worked."""
    from dpokit.cli import main
    from dpokit.data.jsonl import write_jsonl
    from dpokit.data.samples import sample_pairs

    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, sample_pairs(16, seed=3))
    out = tmp_path / "out"
    assert main(["train", "--data", str(data), "--model", str(tiny_dir), "--max_steps", "4", "--batch-size", "2",
                 "--precision", "fp32", "--progress", "false", "--output", str(out), "--save_steps", "0.5",
                 "--logging-steps", "1", "--lr", "1e-4", "--warmup-steps", "0", "--lr_scheduler_type",
                 "cosine_with_min_lr", "--lr_scheduler_kwargs", "{min_lr_rate: 0.1}", "--max-length", "64"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    # Logged after step t: the rate of the next step, 0.1 + 0.9 * (1 + cos(pi t / 4)) / 2 of the peak.
    expected = [1e-4 * (0.1 + 0.45 * (1 + math.cos(math.pi * t / 4))) for t in (1, 2, 3, 4)]
    assert [r["learning_rate"] for r in rows] == pytest.approx(expected)
