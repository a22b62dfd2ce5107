"""Model FLOPs and the hardware's peak: hand-worked counts, the GPU table, the cached CPU probe."""

from __future__ import annotations

import json

import pytest
import torch

from dpokit.flops import (
    ModelCosts,
    attended_pairs,
    matmul_params,
    mfu,
    model_costs,
    step_flops,
    throughput_row,
)
from dpokit.peak import cpu_peak, cpu_probe_key, gpu_peak_tflops, peak_flops


def test_costs_hand_worked():
    costs = ModelCosts(matmul_params=1000, layers=2, attn_dim=8)
    assert costs.forward(tokens=10, attended=55) == 2 * 1000 * 10 + 4 * 2 * 8 * 55 == 23520
    assert costs.train(10, 55) == 3 * 23520
    assert costs.train(10, 55, frozen_weights=True) == 3 * 23520 - 2 * 1000 * 10  # no weight gradients
    assert costs.train(1, 0) == 6 * 1000  # the familiar 6N per token


def test_attended_pairs_hand_worked_and_against_the_mask():
    # prompt of 3: 1 + 2 + 3; chosen of 2: (3 + 1) + (3 + 2); rejected of 1: 3 + 1
    assert attended_pairs(3, 2, 1) == 6 + 9 + 4 == 19
    for p, c, r in ((5, 4, 7), (1, 1, 1), (9, 0, 3)):  # the prefix-shared layout's mask, counted
        n = p + c + r
        seg = torch.tensor([0] * p + [1] * c + [2] * r)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        allowed = causal & ((seg[None, :] == 0) | (seg[None, :] == seg[:, None]))  # (query, key)
        assert attended_pairs(p, c, r) == int(allowed.sum())


def test_step_flops_hand_worked():
    policy = ModelCosts(1000, 2, 8)
    # (prompt 3, chosen 2, rejected 1): 6 tokens, 19 attended pairs -> forward 12000 + 64 * 19 = 13216
    assert step_flops([(3, 2, 1)], policy) == 3 * 13216
    assert step_flops([(3, 2, 1)], policy, reference=policy) == 4 * 13216  # + the reference's forward
    assert step_flops([(3, 2, 1), (3, 2, 1)], policy) == 6 * 13216
    assert step_flops([], policy) == 0.0


def test_model_costs_of_a_llama_config_hand_worked():
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = dict(vocab_size=100, hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)
    # per layer: q 16x16 + k 16x8 + v 16x8 + o 16x16 = 768; gate/up/down 3 x 16x40 = 1920; head 100x16
    n = 2 * (768 + 1920) + 1600
    for tied in (False, True):  # a tied head still multiplies: counted either way
        config = LlamaConfig(**kwargs, tie_word_embeddings=tied)
        assert model_costs(config) == ModelCosts(n, 2, 16)
        torch.manual_seed(0)
        assert matmul_params(LlamaForCausalLM(config)) == n  # the real model counts the same


def test_model_costs_of_a_gpt2_config_hand_worked():
    from transformers import GPT2Config

    config = GPT2Config(vocab_size=100, n_embd=16, n_layer=2, n_head=4, n_positions=32)
    # per layer: c_attn 16x48, attn c_proj 16x16, c_fc 16x64, mlp c_proj 64x16; tied head 100x16; wpe left out
    assert model_costs(config) == ModelCosts(2 * (768 + 256 + 1024 + 1024) + 1600, 2, 16)


@pytest.mark.parametrize(("name", "precision", "tflops"), [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4), ("NVIDIA H100 PCIe", "bf16", 756.0), ("NVIDIA H100 NVL", "fp16", 835.0),
    ("NVIDIA H200", "bf16", 989.4), ("NVIDIA A100-SXM4-80GB", "bf16", 312.0), ("NVIDIA A100-PCIE-40GB", "fp32", 19.5),
    ("NVIDIA L4", "bf16", 121.0), ("NVIDIA L40S", "bf16", 362.0), ("NVIDIA A10G", "bf16", 70.0),
    ("NVIDIA A10", "fp16", 125.0), ("Tesla V100-SXM2-16GB", "fp16", 125.0), ("Tesla V100-SXM2-16GB", "bf16", None),
    ("Tesla T4", "fp16", 65.0), ("NVIDIA GeForce RTX 4090", "bf16", 165.2), ("Quadro P1000", "bf16", None)])
def test_gpu_peak_table(name, precision, tflops):
    assert gpu_peak_tflops(name, precision) == tflops


def test_given_peak_wins():
    peak = peak_flops(torch.device("cpu"), "bf16", peak_tflops=2.5)
    assert peak.flops == 2.5e12 and "given" in peak.source


def test_cpu_probe_is_measured_once_and_cached(tmp_path):
    cache = tmp_path / "peak_flops.json"
    first = cpu_peak("fp32", cache, size=128)
    assert first.flops > 1e8 and "measured" in first.source  # any CPU does 0.1 GFLOP/s
    stored = json.loads(cache.read_text())
    assert list(stored) == [cpu_probe_key("fp32")] and "threads" in cpu_probe_key("fp32")
    stored[cpu_probe_key("fp32")] = 123.0  # a second call reads the cache, it does not measure again
    cache.write_text(json.dumps(stored))
    assert cpu_peak("fp32", cache, size=128).flops == 123.0
    assert peak_flops(torch.device("cpu"), "fp32", cache=cache).flops == 123.0
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)  # another thread count is another machine's peak
        assert cpu_peak("fp32", cache, size=128).flops != 123.0
    finally:
        torch.set_num_threads(threads)
    assert len(json.loads(cache.read_text())) == 2


def test_mfu():
    assert mfu(1e12, 2.0, 1e12) == 0.5
    assert mfu(1e12, 2.0, 1e12, devices=2) == 0.25
    assert mfu(1e12, 2.0, None) is None and mfu(1e12, 0.0, 1e12) is None


def test_throughput_row():
    assert throughput_row(tokens=3000, steps=4, seconds=2.0, flops=6e11, peak_flops=1e12, devices=2) == {
        "tokens_per_second": 1500.0, "seconds_per_step": 0.5, "mfu": 0.15}
    assert "mfu" not in throughput_row(3000, 4, 2.0, 6e11, None)
