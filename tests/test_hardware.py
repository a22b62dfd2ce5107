"""Close to the hardware: host memory that does not fault on every step (``hostmem.py``), and an
optimizer step that casts each trainable weight to bf16 once (``models.casts_kept``)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SRC = str(Path(__file__).resolve().parents[1] / "src")

# A step's worth of tensors (1 to 8 MiB, 108 MiB in all) alive at once, then all freed, twice: the
# second round needs the same memory again, as the next training step does. (Left to itself glibc
# learns after a few rounds of one fixed pattern; a training step's shapes change every step.)
ROUNDS = """
import json, os, resource
from dpokit.hostmem import tune
tuned = tune()
import torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
sizes = [(k % 8 + 1) << 20 for k in range(24)]
for r in range(2):
    start = faults()
    alive = [torch.ones(n, dtype=torch.uint8) for n in sizes]
    del alive
huge = sum(int(line.split()[1]) for line in open("/proc/self/smaps") if line.startswith("AnonHugePages"))
print(json.dumps({"tuned": tuned, "faults": faults() - start, "thp": os.environ.get("THP_MEM_ALLOC_ENABLE"),
                  "huge_kib": huge}))
"""


def rounds(**env: str) -> dict:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "THP_", "DPOKIT_HOST"))}
    run_env.update(PYTHONPATH=SRC, **env)
    out = subprocess.run([sys.executable, "-c", ROUNDS], env=run_env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_tuned_host_memory_stops_refaulting():
    """With the system's allocator settings the first round's memory goes back to the kernel and
    the second round faults it in again (27,000 faults of 4 KiB); tuned, it reuses it."""
    system = rounds(DPOKIT_HOST_MEMORY="system")
    tuned = rounds()
    assert system["tuned"] is False and system["thp"] is None
    assert tuned["tuned"] is True and tuned["thp"] == "1"
    assert system["faults"] > 10000, system
    assert tuned["faults"] < system["faults"] / 5, (tuned, system)
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[never]" not in thp.read_text():
        assert tuned["huge_kib"] > 0, tuned  # torch asked for huge pages, and the kernel gave some


def test_users_allocator_choice_stands():
    """An allocator setting of the user's own (here glibc's MALLOC_ARENA_MAX) turns tuning off, and
    a THP_MEM_ALLOC_ENABLE of their own stands."""
    assert rounds(MALLOC_ARENA_MAX="2")["tuned"] is False
    assert rounds(THP_MEM_ALLOC_ENABLE="0")["thp"] == "0"


def test_console_script_tunes_before_torch():
    """`dpokit` (``cli.main``) tunes host memory first, whatever the command, early enough for
    torch to take huge pages."""
    code = ("import os; from dpokit.cli import main; main(['no-such-command']); import torch; "
            "big = torch.ones(64 << 20, dtype=torch.uint8); "
            "huge = sum(int(line.split()[1]) for line in open('/proc/self/smaps') if line.startswith('AnonHugePages')); "
            "print(os.environ.get('THP_MEM_ALLOC_ENABLE'), huge > 0)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "THP_", "DPOKIT_HOST"))}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": SRC}, capture_output=True, text=True)
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    huge = "True" if thp.exists() and "[never]" not in thp.read_text() else out.stdout.split()[-1]
    assert out.stdout.split()[-2:] == ["1", huge], out.stdout + out.stderr


class CastCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the casts of the given fp32 tensors to bf16, per tensor."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        super().__init__()
        self.watch = {t.data_ptr(): i for i, t in enumerate(tensors)}
        self.counts = [0] * len(tensors)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16:
            if (i := self.watch.get(args[0].data_ptr())) is not None:
                self.counts[i] += 1
        return func(*args, **kwargs)


def one_step(tmp_path: Path, model_dir: Path, name: str) -> tuple[list[int], dict[str, torch.Tensor]]:
    """Casts of each trainable Linear weight during one bf16 step (2 micro-batches, gradient
    checkpointing), and the update."""
    import dpokit.train
    from dpokit.config import Config, DataConfig, ModelConfig, OutputConfig, TrainConfig

    config = Config(
        model=ModelConfig(name_or_path=str(model_dir), precision="bf16", device="cpu", gradient_checkpointing=True),
        data=DataConfig(max_length=64),  # the built-in sample pairs
        train=TrainConfig(steps=1, batch_size=2, grad_accum=2, warmup_steps=0, seed=5),
        output=OutputConfig(dir=str(tmp_path / name), progress=False))
    run = dpokit.train.setup(config)
    weights = [m.weight for m in run.policy.modules() if type(m) is torch.nn.Linear and m.weight.requires_grad]
    before = {n: p.detach().clone() for n, p in run.policy.named_parameters()}
    with CastCounter(weights) as counter:
        dpokit.train.train_step(run)
    return counter.counts, {n: p.detach() - before[n] for n, p in run.policy.named_parameters()}


def test_weights_cast_once_per_step(tmp_path, llama_dir, monkeypatch):
    """Two micro-batches under gradient checkpointing run each layer's forward four times and the
    head's twice; each trainable weight is still cast to bf16 once, and the update is exactly the
    one that casts every time."""
    import dpokit.train

    kept, kept_update = one_step(tmp_path, llama_dir, "kept")
    monkeypatch.setattr(dpokit.train, "casts_kept", lambda *a, **k: contextlib.nullcontext())
    every, every_update = one_step(tmp_path, llama_dir, "every")
    assert kept and set(kept) == {1}, kept
    # Without it the counter sees every cast: four per layer weight (two micro-batches, each forward
    # recomputed), two for the output head (its fused log-softmax does not run it again).
    assert min(every) >= 2 and sorted(every)[1] >= 4, every
    for name, change in kept_update.items():
        assert torch.equal(change, every_update[name]), name


def test_compile_takes_the_reference_too(tmp_path, llama_dir):
    """``--compile`` compiles the frozen reference's decoder as well as the policy's (compiling is
    lazy: nothing is traced here)."""
    from dpokit.config import Config, DataConfig, ModelConfig, OutputConfig, TrainConfig
    from dpokit.train import setup

    config = Config(model=ModelConfig(name_or_path=str(llama_dir), device="cpu", compile=True),
                    data=DataConfig(max_length=64), train=TrainConfig(steps=1, batch_size=2),
                    output=OutputConfig(dir=str(tmp_path / "out"), progress=False))
    run = setup(config)
    reference = run.task.reference.model
    assert reference is not run.policy
    for model in (run.policy, reference):
        assert model.base_model._compiled_call_impl is not None


def test_schedules_do_not_import_peft():
    """A run without LoRA does not import peft (nor bitsandbytes through it): transformers'
    scheduler module would, wherever peft is installed. The schedule still works, and peft, asked
    for later, imports as usual."""
    code = ("import sys, torch; from dpokit.config import TrainConfig; from dpokit.optim import build_scheduler; "
            "opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0); "
            "s = build_scheduler(opt, TrainConfig(warmup_steps=2, scheduler='linear'), 10); "
            "before = sorted(m for m in ('peft', 'bitsandbytes') if m in sys.modules); "
            "opt.step(); s.step(); import peft, transformers.trainer_utils as tu; "
            "print(before, s.get_last_lr()[0], tu.is_peft_available())")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC},
                         capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[-2] == "[] 0.5 True", out.stdout + out.stderr
