"""``dpokit_eager``: the same attention as transformers' eager on real models (grouped-query heads,
fp32, bf16, autocast, blocks of query rows), keeping only its probabilities, and handing anything
unusual to the model's own eager function."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from dpokit import lean_attention
from dpokit.attention import attention_of
from dpokit.lean_attention import NAME, attend, register


def batch(seed: int = 0, rows: int = 3, length: int = 40):
    rng = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (rows, length), generator=rng)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[1, :7] = 0  # left padding on one row
    return ids, mask


def run(model, kernel: str, ids, mask, autocast: bool = False):
    """Logits and every parameter's gradient of ``model`` under ``kernel``."""
    model.set_attn_implementation(kernel)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    (logits.square().mean()).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def llama(llama_dir):
    register()
    return AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)  # 4 heads over 2 key heads


def test_fp32_equals_transformers_eager(llama):
    ids, mask = batch()
    logits, grads = run(llama, "eager", ids, mask)
    lean_logits, lean_grads = run(llama, NAME, ids, mask)
    torch.testing.assert_close(lean_logits, logits, rtol=1e-6, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(lean_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16 weights", "autocast"])
def test_bf16_forward_is_transformers_eager_and_gradients_agree(llama, autocast):
    if not autocast:
        llama = llama.to(torch.bfloat16)
    ids, mask = batch(1)
    logits, grads = run(llama, "eager", ids, mask, autocast)
    lean_logits, lean_grads = run(llama, NAME, ids, mask, autocast)
    assert torch.equal(lean_logits, logits)  # the same operations in the same order
    for name, grad in grads.items():  # backward reads the bf16 probabilities: bf16 rounding apart
        scale = grad.float().abs().max().clamp_min(1e-6)
        assert ((lean_grads[name].float() - grad.float()).abs().max() / scale) < 0.02, name


def test_blocks_of_query_rows_change_nothing(llama, monkeypatch):
    ids, mask = batch(2)
    whole = run(llama, NAME, ids, mask)
    monkeypatch.setattr(lean_attention, "BLOCK_SCORES", 4 * 40 * 3)  # 3 query rows a block
    blocked = run(llama, NAME, ids, mask)
    torch.testing.assert_close(blocked[0], whole[0], rtol=1e-5, atol=1e-6)  # a matmul's shape moves fp32 rounding
    for name, grad in whole[1].items():
        torch.testing.assert_close(blocked[1][name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_keeps_only_the_probabilities_for_backward():
    torch.manual_seed(0)
    rows, heads, length, dim = 2, 4, 64, 16
    q, k, v = (torch.randn(rows, heads, length, dim, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mask = torch.zeros(rows, 1, length, length, dtype=torch.bfloat16).masked_fill_(
        ~torch.ones(length, length, dtype=torch.bool).tril(), torch.finfo(torch.bfloat16).min)

    def kept_bytes(fn) -> int:
        kept: dict[int, int] = {}

        def pack(t):
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(kept.values())

    def transformers_eager():
        scores = torch.matmul(q, k.transpose(-1, -2)) * dim**-0.5 + mask
        torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)

    scores = rows * heads * length * length
    lean = kept_bytes(lambda: attend(q, k, v, mask, dim**-0.5))
    assert lean == 3 * q.nbytes + 2 * scores  # q, k, v and the bf16 probabilities
    assert kept_bytes(transformers_eager) >= 6 * scores  # fp32 softmax and its bf16 copy


def test_unusual_requests_go_to_the_models_own_eager(llama, gpt2_dir):
    calls = []
    attention = llama.model.layers[0].self_attn
    own = lean_attention._own_eager(attention)
    assert own.__module__ == "transformers.models.llama.modeling_llama"
    q, k, v = torch.randn(1, 4, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)
    original = lean_attention._own_eager
    try:
        lean_attention._own_eager = lambda module: (lambda *a, **kw: calls.append(kw) or original(module)(*a, **kw))
        attention.train()
        lean_attention.lean_attention_forward(attention, q, k, v, None, scaling=0.25, dropout=0.1)
        lean_attention.lean_attention_forward(attention, q, k, v, None, scaling=0.25, softcap=30.0)
        gpt2 = AutoModelForCausalLM.from_pretrained(gpt2_dir, attn_implementation=NAME)
        gpt2(input_ids=torch.tensor([[5, 6, 7]]))  # not a model type of the standard recipe
    finally:
        lean_attention._own_eager = original
    assert len(calls) == 2 + gpt2.config.n_layer


def test_saved_model_does_not_name_the_kernel(llama, tmp_path):
    llama.set_attn_implementation(NAME)
    assert attention_of(llama) == NAME
    llama.save_pretrained(tmp_path)
    assert NAME not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
