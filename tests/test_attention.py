"""The attention kernel a CPU run takes: the probe's two kernels (SDPA and ``dpokit_eager``)
compute the same attention, the cached timings decide, the choice reaches the model (and a
separate reference) unless a kernel is named, and log-probs do not depend on it."""

from __future__ import annotations

import json

import pytest
import torch

from dpokit.attention import (
    KERNELS,
    MAX_SCORES,
    attention_of,
    choose_attention,
    cpu_attention,
    measure,
    probe_key,
)
from dpokit.config import ModelConfig
from dpokit.data.collate import collate
from dpokit.data.pairs import TokenizedPair
from dpokit.lean_attention import NAME as LEAN
from dpokit.logps import SequenceScorer
from dpokit.models import load_model
from dpokit.reference import cache_path, load_reference_model

CPU = torch.device("cpu")


def cached(path, heads, head_dim, length, sdpa, eager, precision="fp32"):
    path.write_text(json.dumps({probe_key(heads, head_dim, length, precision): {"sdpa": sdpa, LEAN: eager}}))


def test_probe_kernels_compute_the_same_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 24, 16) for _ in range(3))
    causal = torch.ones(24, 24, dtype=torch.bool).tril()
    mask = torch.zeros(1, 1, 24, 24).masked_fill_(~causal, torch.finfo(torch.float32).min)
    expected = torch.softmax((q @ k.transpose(-1, -2)) / 4.0 + mask, dim=-1) @ v  # (2, 4, 24, 16), by hand
    for name, kernel in KERNELS.items():
        torch.testing.assert_close(kernel(q, k, v, mask), expected, rtol=1e-5, atol=1e-5, msg=name)


def test_measure_times_both_kernels_and_leaves_threads_and_random_numbers():
    threads, state = torch.get_num_threads(), torch.random.get_rng_state()
    times = measure(2, 16, 32, torch.float32, repeats=1)
    assert set(times) == set(KERNELS) and all(0 < t < 5 for t in times.values())
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)  # a run's LoRA init must not depend on a probe


def test_cached_timings_decide(tmp_path):
    cache = tmp_path / "attention.json"
    cached(cache, 4, 32, 128, sdpa=2.0, eager=1.0)
    assert cpu_attention(4, 32, 128, "fp32", cache) == LEAN
    cached(cache, 4, 32, 128, sdpa=1.0, eager=0.95)  # within noise: keep SDPA
    assert cpu_attention(4, 32, 128, "fp32", cache) == "sdpa"


def test_probe_runs_once_and_is_cached(tmp_path):
    cache = tmp_path / "attention.json"
    first = cpu_attention(2, 16, 48, "fp32", cache)
    times = json.loads(cache.read_text())[probe_key(2, 16, 48, "fp32")]
    assert set(times) == set(KERNELS) and first in KERNELS
    cached(cache, 2, 16, 48, sdpa=9.0, eager=1.0)  # what is cached is what decides: no second probe
    assert cpu_attention(2, 16, 48, "fp32", cache) == LEAN


def test_long_rows_keep_sdpa_without_probing(tmp_path):
    cache = tmp_path / "attention.json"
    length = int((MAX_SCORES / 8) ** 0.5) + 1  # 8 heads' scores just over the limit
    cached(cache, 8, 64, length, sdpa=9.0, eager=1.0)
    assert cpu_attention(8, 64, length, "fp32", cache) == "sdpa"


@pytest.fixture
def eager_faster(tmp_path, monkeypatch, llama_dir):
    """A cache that says eager is faster at the tiny Llama's shape and 64 tokens."""
    from transformers import AutoConfig

    from dpokit.attention import attention_shape

    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path))
    heads, head_dim = attention_shape(AutoConfig.from_pretrained(llama_dir))
    cached(tmp_path / "attention.json", heads, head_dim, 64, sdpa=2.0, eager=1.0)


@pytest.mark.usefixtures("eager_faster")
def test_training_load_takes_the_faster_kernel_unless_one_is_named(llama_dir):
    cfg = ModelConfig(name_or_path=str(llama_dir), precision="fp32", gradient_checkpointing=False)
    assert attention_of(load_model(cfg, CPU, max_length=64)) == LEAN
    assert attention_of(load_model(cfg, CPU)) == "sdpa"  # no length (generation, evaluation): as loaded
    named = ModelConfig(name_or_path=str(llama_dir), precision="fp32", attn_implementation="sdpa")
    assert attention_of(load_model(named, CPU, max_length=64)) == "sdpa"
    assert attention_of(load_model(cfg, CPU, max_length=96)) in KERNELS  # another shape: probed


@pytest.mark.usefixtures("eager_faster")
def test_separate_reference_takes_the_policys_kernel(llama_dir):
    cfg = ModelConfig(name_or_path=str(llama_dir), precision="fp32", ref_model=str(llama_dir))
    policy = load_model(cfg, CPU, max_length=64)
    assert attention_of(load_reference_model(cfg, CPU, policy)) == LEAN
    assert attention_of(load_reference_model(cfg, CPU)) == "sdpa"


def test_logps_do_not_depend_on_the_kernel(llama_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ids = lambda n: torch.randint(5, 200, (n,)).tolist()  # noqa: E731
    pairs = [TokenizedPair(ids(p), ids(c), ids(r)) for p, c, r in ((12, 9, 14), (30, 5, 7), (3, 20, 11))]
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    scores = {}
    for kernel in ("sdpa", "eager", LEAN):
        model.set_attn_implementation(kernel)
        scores[kernel] = SequenceScorer(model)(collate(pairs, "prefix", tiny_tokenizer.pad_token_id)).logps.detach()
    torch.testing.assert_close(scores["eager"], scores["sdpa"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(scores[LEAN], scores["eager"], rtol=1e-5, atol=1e-5)


def test_reference_cache_is_keyed_by_the_kernel():
    paths = {cache_path([], "hash", kernel, "fp32", CPU) for kernel in ("sdpa", "eager")}
    assert len(paths) == 2


def test_models_of_other_recipes_keep_sdpa(gpt2_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path))  # nothing cached: a probe would run and write
    model = AutoModelForCausalLM.from_pretrained(gpt2_dir, attn_implementation="sdpa")
    assert choose_attention(model, CPU, "fp32", 64) == "sdpa"  # GPT-2's eager scales its own way
    assert not (tmp_path / "attention.json").exists()


def test_gpu_and_named_kernels_are_left_alone(llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="eager")
    assert choose_attention(model, CPU, "fp32", 64) == "eager"  # not SDPA to begin with: left as it is
    model.set_attn_implementation("sdpa")
    assert choose_attention(model, torch.device("meta"), "fp32", 64) == "sdpa"  # not a CPU
