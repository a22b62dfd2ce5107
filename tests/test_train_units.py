"""Pieces of the loop: the data stream, the learning-rate shape, precision choice."""

from __future__ import annotations

import copy

import pytest
import torch

from dpokit.train import PairStream, lr_factor


def test_stream_cycles_with_a_new_shuffle_each_epoch():
    stream = PairStream(size=10, seed=3)
    first, second = stream.take(10), stream.take(10)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second
    assert stream.state() == {"epoch": 1, "position": 10}
    big = PairStream(size=10, seed=3).take(16)  # an effective batch larger than the data is fine
    assert big[:10] == first and len(big) == 16


def test_stream_resumes_from_its_state():
    a = PairStream(size=7, seed=1)
    a.take(9)
    b = PairStream(size=7, seed=1, **a.state())
    assert a.take(12) == b.take(12)


def test_stream_shards_by_rank():
    ranks = [PairStream(size=8, seed=0, rank=r, world_size=2).take(4) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(8))


@pytest.mark.parametrize("shape", ["constant", "linear", "cosine"])
def test_lr_warms_up_then_follows_the_shape(shape):
    total, warmup = 100, 10
    factors = [lr_factor(s, total, warmup, shape) for s in range(total)]
    assert factors[0] == pytest.approx(1 / 11)
    assert all(a < b for a, b in zip(factors[:10], factors[1:11]))
    assert factors[10] == pytest.approx(1.0)
    if shape == "constant":
        assert factors[-1] == 1.0
    else:
        assert factors[-1] < 0.05 and all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_auto_precision_on_cpu_follows_the_cpu_flags():
    from dpokit.models import cpu_has_fast_bf16, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("fp16", cpu) == "fp16"


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
