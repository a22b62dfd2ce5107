"""Shared fixtures: tiny real models and tokenizers, built locally (no network), saved and loaded
through the real ``from_pretrained`` path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
HH_RLHF = SHARED / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


@pytest.fixture(scope="session", autouse=True)
def dpokit_cache(tmp_path_factory) -> Path:
    """One cache per test session, so the built-in tiny model is built once and never read from $HOME."""
    path = Path(os.environ.get("DPOKIT_TEST_CACHE") or tmp_path_factory.mktemp("dpokit-cache"))
    os.environ["DPOKIT_CACHE"] = str(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return path


@pytest.fixture(scope="session")
def tiny_dir(dpokit_cache) -> Path:
    """The built-in tiny model (a warmed-up 4-layer Llama with its BPE tokenizer)."""
    from dpokit.tiny import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The built-in tiny BPE tokenizer (no chat template)."""
    from dpokit.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


def make_random_model(arch: str, path: Path, tokenizer, seed: int = 0) -> Path:
    """Save a tiny random ``llama`` or ``gpt2`` model with ``tokenizer`` under ``path``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=512, **common))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512,
                                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common))
    else:
        raise ValueError(arch)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_random_model("llama", tmp_path_factory.mktemp("llama"), tiny_tokenizer)


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_random_model("gpt2", tmp_path_factory.mktemp("gpt2"), tiny_tokenizer)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from more threads, and lose much when other processes hold the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def aligned_run(tmp_path_factory, tiny_dir) -> Path:
    """A short real DPO run of the tiny model (``dpokit train``, fp32) on sample pairs, whose chosen
    answers give examples ("For example, ...") and whose rejected answers never do, with held-out
    pairs as eval data and checkpoints every 5 steps. Holds ``pairs.jsonl``, ``held.jsonl``,
    ``run/`` (``final``, ``checkpoint-5`` ... ``checkpoint-15``, ``metrics.jsonl``)."""
    from dpokit.cli import main

    root = tmp_path_factory.mktemp("aligned")
    assert main(["data", "sample", "--output", str(root / "pairs.jsonl"), "--n", "64", "--seed", "1"]) == 0
    assert main(["data", "sample", "--output", str(root / "held.jsonl"), "--n", "16", "--seed", "2"]) == 0
    assert main(["train", "--data", str(root / "pairs.jsonl"), "--eval-data", str(root / "held.jsonl"),
                 "--model", "tiny", "--steps", "20", "--batch-size", "8", "--grad-accum", "2", "--lr", "1e-4",
                 "--logging-steps", "10", "--save-steps", "5", "--max-length", "128", "--precision", "fp32",
                 "--progress", "false", "--output", str(root / "run")]) == 0
    return root


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs (``mount(bytes, readonly=False)`` -> its mount point), for full and read-only disks
    (a full disk cannot be faked honestly); skipped where mounting is refused; unmounted after."""
    mounted = []

    def mount(size: int, readonly: bool = False) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if readonly else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
