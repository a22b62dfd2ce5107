"""Pieces of the loop: the data stream, precision choice, steps (schedules: test_optim.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dpokit.data.stream import DataStream


def test_stream_cycles_with_a_new_shuffle_each_epoch():
    stream = DataStream(size=10, seed=3)
    [first], [second] = stream.take(10), stream.take(10)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second
    assert stream.state() == {"epoch": 1, "position": 10}
    [big] = DataStream(size=10, seed=3).take(16)  # an effective batch larger than the data is fine
    assert big[:10] == first and len(big) == 16


def test_stream_resumes_from_its_state():
    a = DataStream(size=7, seed=1)
    a.take(9)
    b = DataStream(size=7, seed=1, **a.state())
    assert a.take(3, 4) == b.take(3, 4)


def test_stream_shards_by_rank_in_the_order_of_one_process():
    """2 processes x batch 2 see, micro-batch by micro-batch, the examples 1 process x batch 4 sees,
    also across an epoch's end (7 examples), so a run resumes on another number of processes."""
    one = DataStream(size=7, seed=0).take(4, 3)
    ranks = [DataStream(size=7, seed=0, rank=r, world_size=2).take(2, 3) for r in range(2)]
    for k in range(3):
        assert sorted(ranks[0][k] + ranks[1][k]) == sorted(one[k])
    assert DataStream(size=7, seed=0, world_size=2).state() == DataStream(size=7, seed=0).state()


def test_auto_precision_on_cpu_follows_the_cpu_flags():
    from dpokit.models import cpu_has_fast_bf16, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("fp16", cpu) == "fp16"


def test_bf16_asked_for_on_a_cpu_that_emulates_it_is_warned_about():
    from dpokit.models import cpu_has_fast_bf16, precision_notes

    cpu = torch.device("cpu")
    notes = precision_notes("bf16", cpu)
    if cpu_has_fast_bf16():
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].startswith("warning: --precision bf16")
        assert "picks fp32" in notes[0]
    assert precision_notes("fp32", cpu) == precision_notes("bf16", torch.device("cuda")) == []


def test_no_dropout_anywhere_in_policy_or_reference(tmp_path, tiny_tokenizer):
    """Attention dropout (a float rate Llama passes to SDPA) is off too, not only nn.Dropout layers;
    the frozen reference is in eval mode without gradients."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dpokit.config import ModelConfig
    from dpokit.models import load_policy
    from dpokit.reference import FrozenModel

    LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                 attention_dropout=0.5)).save_pretrained(tmp_path / "m")
    policy = load_policy(ModelConfig(name_or_path=str(tmp_path / "m"), precision="fp32"), torch.device("cpu"))
    policy.train()
    ids = torch.randint(3, len(tiny_tokenizer), (2, 24))
    torch.testing.assert_close(policy(ids).logits, policy(ids).logits, rtol=0, atol=0)
    assert policy.config.attention_dropout == 0.5  # the saved config keeps the model's own setting

    reference = FrozenModel(copy.deepcopy(policy), "copy")
    assert not reference.model.training
    assert not any(p.requires_grad for p in reference.model.parameters())


def small_run_config(tmp_path, model_dir, **train):
    import json

    from dpokit.config import Config, DataConfig, LossConfig, ModelConfig, OutputConfig, TrainConfig

    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": " Yes, fine.", "rejected": " No."})
                            + "\n" for i in range(8)))
    precision = train.pop("precision", "fp32")
    layout = train.pop("layout", "prefix")
    return Config(model=ModelConfig(name_or_path=str(model_dir), precision=precision, device="cpu"),
                  data=DataConfig(path=str(data), max_length=64, layout=layout), loss=LossConfig(),
                  train=TrainConfig(**{"steps": 2, "batch_size": 4, "lr": 1e-3, **train}),
                  output=OutputConfig(dir=str(tmp_path / "out"), progress=False))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_are_finite(tmp_path, llama_dir, precision):
    from dpokit.train import setup, train_step

    run = setup(small_run_config(tmp_path, llama_dir, precision=precision))
    assert run.scaler.is_enabled() == (precision == "fp16")
    for _ in range(2):
        assert math.isfinite(train_step(run))
    assert math.isfinite(run.window.means()["loss"]) and run.state.step == 2


def test_fp16_overflow_skips_the_update_and_lowers_the_scale(tmp_path, llama_dir):
    from dpokit.train import setup, train_step

    run = setup(small_run_config(tmp_path, llama_dir, precision="fp16"))
    run.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # scaled gradients overflow
    before = [p.detach().clone() for p in run.policy.parameters()]
    train_step(run)  # no error: the scaler skips the step
    assert run.scaler.get_scale() < 2.0**127
    assert all(torch.equal(a, b) for a, b in zip(before, run.policy.parameters()))


def test_unwritable_output_fails_before_any_model_loads(tmp_path, llama_dir):
    from dpokit.errors import ConfigError
    from dpokit.train import setup

    blocker = tmp_path / "file"
    blocker.write_text("")
    config = small_run_config(tmp_path, tmp_path / "no-such-model")  # loading it would fail differently
    config.output.dir = str(blocker / "out")
    with pytest.raises(ConfigError, match="--output .*cannot write there"):
        setup(config)


def test_num_tokens_and_grad_norm_as_trl_logs_them(tmp_path, llama_dir):
    """``num_tokens`` counts prompt + chosen and prompt + rejected whatever the layout; ``grad_norm``
    is taken before clipping."""
    from dpokit.train import setup, train_step

    seen = []
    for layout in ("prefix", "padded"):
        run = setup(small_run_config(tmp_path / layout, llama_dir, layout=layout, max_grad_norm=1e-6))
        grad_norm = train_step(run)
        assert grad_norm > 1e-3  # far above the clipping threshold: logged before clipping
        seen.append(run.state.tokens_seen)
    assert len({p.num_tokens for p in run.task.train}) == 1  # all pairs alike: 4 of them in the step
    assert seen == [4 * run.task.train[0].num_tokens] * 2


def test_warmup_rounds_up_as_transformers_does():
    from dpokit.config import Config
    from dpokit.train import warmup_steps

    config = Config()
    config.train.warmup_ratio = 0.1
    assert warmup_steps(config.train, 5) == 1  # a short run still warms up
    assert warmup_steps(config.train, 120) == 12


def test_output_with_old_checkpoints(tmp_path):
    """Unfinished checkpoints of an earlier run are named in a note; complete ones stop a new run
    (it would mix with them) and point at --resume latest; leftover temporary saves are removed."""
    from dpokit.checkpoint import MARKER, check_output_dir
    from dpokit.errors import ConfigError

    for step in (4, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-16.tmp").mkdir()
    notes = []
    check_output_dir(tmp_path, False, notes.append)
    assert not (tmp_path / "checkpoint-16.tmp").exists()
    assert any("checkpoint-4, checkpoint-12" in n and "earlier run" in n for n in notes)
    notes.clear()
    check_output_dir(tmp_path / "fresh", False, notes.append)
    assert notes == []
    (tmp_path / "checkpoint-12" / MARKER).write_text("{}")
    with pytest.raises(ConfigError, match="checkpoint-12.*\n  fix: add --resume latest"):
        check_output_dir(tmp_path, False, notes.append)
    check_output_dir(tmp_path, True, notes.append)  # resuming it is fine
