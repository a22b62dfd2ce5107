"""LoRA and QLoRA (lora.py): the adapter-disabled reference seen through the scorer, merged saving
(loadable by transformers and its pipeline), QLoRA on CPU, DPO starting from an SFT adapter, and the
base the saved DPO adapter names."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from dpokit.config import ModelConfig
from dpokit.configure import build_config
from dpokit.data.collate import collate
from dpokit.data.tokenize import tokenize_pairs
from dpokit.logps import SequenceScorer
from dpokit.lora import ADAPTER_DIR, find_peft, save_policy
from dpokit.models import load_model, load_policy, load_tokenizer

CPU = torch.device("cpu")


def sample_batch(tokenizer, n: int = 4):
    from dpokit.data.sources import load_pairs

    pairs, _ = tokenize_pairs(load_pairs(None, n), tokenizer, 64)
    return collate(pairs, "padded", tokenizer.pad_token_id)


def randomise_lora(model, seed: int = 0, scale: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)


@torch.no_grad()
def logps(model, batch) -> torch.Tensor:
    return SequenceScorer(model)(batch).logps


def test_disable_adapter_gives_the_base_through_the_scorer(llama_dir):
    cfg = ModelConfig(name_or_path=str(llama_dir), lora=True, lora_r=4)
    policy = load_policy(cfg, CPU)
    batch = sample_batch(load_tokenizer(cfg))
    base = load_model(ModelConfig(name_or_path=str(llama_dir)), CPU)
    torch.testing.assert_close(logps(policy, batch), logps(base, batch), rtol=1e-6, atol=0)  # B = 0 at the start
    randomise_lora(policy)
    moved = logps(policy, batch)
    assert (moved - logps(base, batch)).abs().max() > 1e-2  # the scorer sees the adapters...
    with find_peft(policy).disable_adapter():  # ...and not when they are off
        torch.testing.assert_close(logps(policy, batch), logps(base, batch), rtol=1e-6, atol=0)
    torch.testing.assert_close(logps(policy, batch), moved)  # back on after the context
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_saved_merged_model_matches_the_policy(tmp_path, llama_dir, gpt2_dir, arch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    source = llama_dir if arch == "llama" else gpt2_dir  # GPT-2's Conv1D stores weights transposed
    cfg = ModelConfig(name_or_path=str(source), lora=True, lora_r=4)
    policy = load_policy(cfg, CPU)
    tokenizer = load_tokenizer(cfg)
    randomise_lora(policy)
    save_policy(policy, tmp_path / "final", tokenizer)
    batch = sample_batch(tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final", dtype=torch.float32)
    assert find_peft(merged) is None
    torch.testing.assert_close(logps(merged, batch), logps(policy, batch), rtol=1e-5, atol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    adapter = PeftModel.from_pretrained(base, str(tmp_path / "final" / ADAPTER_DIR))
    torch.testing.assert_close(logps(adapter, batch), logps(policy, batch), rtol=1e-6, atol=1e-5)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert all(p.abs().sum() > 0 for p in trainable)  # the save left the policy's adapters alone


def test_lora_training_writes_a_merged_model_and_the_adapter(tmp_path, tiny_dir):
    from safetensors.torch import load_file
    from transformers import pipeline

    from dpokit.train import train

    config = build_config({"model.lora": True, "model.lora_r": 4, "model.precision": "fp32", "model.device": "cpu",
                           "data.sample_size": 16, "data.max_length": 64, "train.steps": 3, "train.batch_size": 4,
                           "train.lr": 1e-2, "output.dir": str(tmp_path), "output.progress": False,
                           "output.save_steps": 0})
    final = train(config)
    assert (final / "config.json").is_file() and (final / ADAPTER_DIR / "adapter_config.json").is_file()
    merged, base = load_file(final / "model.safetensors"), load_file(tiny_dir / "model.safetensors")
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only the adapted linears moved
    text = pipeline("text-generation", model=str(final), device="cpu")("Explain", max_new_tokens=5,
                                                                        do_sample=False)
    assert text[0]["generated_text"].startswith("Explain")


def test_qlora_runs_on_cpu(tmp_path, tiny_dir):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoModelForCausalLM

    from dpokit.checkpoint import save_final
    from dpokit.tasks.preference import loss_inputs
    from dpokit.train import setup, train_step

    config = build_config({"model.load_in_4bit": True, "model.lora_r": 4, "model.precision": "fp32",
                           "model.device": "cpu", "data.sample_size": 8, "data.max_length": 64, "train.steps": 2,
                           "train.batch_size": 4, "train.lr": 1e-2, "output.dir": str(tmp_path),
                           "output.progress": False})
    assert config.model.lora  # 4-bit implies LoRA
    run = setup(config)
    assert run.task.reference.name == "lora"
    assert any(isinstance(m, Linear4bit) for m in run.policy.modules())
    assert all("lora_" in n for n, p in run.policy.named_parameters() if p.requires_grad)
    pairs = run.task.train[:4]
    batch = run.task.batch(pairs)
    policy, reference = run.scorer(batch), run.task.reference.logps(batch, pairs)
    out = run.task.spec.fn(loss_inputs(policy, reference, 0.1), config.loss)
    assert out.losses.mean().item() == pytest.approx(math.log(2), abs=1e-6)
    for _ in range(2):
        train_step(run)
    save_final(run, tmp_path / "final")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final", dtype=torch.float32)
    assert not any(isinstance(m, Linear4bit) for m in merged.modules())  # saved in full precision
    run.policy.eval()
    torch.testing.assert_close(logps(merged, batch), logps(run.policy, batch), rtol=1e-5, atol=1e-4)
    with find_peft(run.policy).disable_adapter():
        assert (logps(merged, batch) - logps(run.policy, batch)).abs().max() > 1e-3  # training moved it


def test_dpo_from_an_sft_adapter_refers_to_the_sft_model(tmp_path, llama_dir):
    from transformers import AutoModelForCausalLM

    from dpokit.train import setup

    sft_cfg = ModelConfig(name_or_path=str(llama_dir), lora=True, lora_r=4)
    sft_policy = load_policy(sft_cfg, CPU)
    randomise_lora(sft_policy, seed=1)
    tokenizer = load_tokenizer(sft_cfg)
    save_policy(sft_policy, tmp_path / "sft", tokenizer)
    sft_model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft", dtype=torch.float32)
    raw_base = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)

    for keys in ({"model.lora": True}, {}):  # a new LoRA on the merged SFT model, or full fine-tuning
        config = build_config({"model.name_or_path": str(tmp_path / "sft" / ADAPTER_DIR), "model.precision": "fp32",
                               "model.device": "cpu", "data.sample_size": 4, "data.max_length": 64,
                               "output.dir": str(tmp_path / "dpo"), "output.progress": False, **keys})
        run = setup(config)
        pairs = run.task.train
        batch = run.task.batch(pairs)
        reference = run.task.reference.logps(batch, pairs).logps
        torch.testing.assert_close(reference, logps(sft_model, batch), rtol=1e-5, atol=1e-4)
        assert (reference - logps(raw_base, batch)).abs().max() > 1e-2  # not the raw base


def test_qlora_from_an_sft_adapter_quantises_the_saved_merge_once(tmp_path, llama_dir):
    """The SFT model saved beside its adapter is loaded and quantised as it is: merging the
    adapter into an already 4-bit base would round twice and give another reference."""
    pytest.importorskip("bitsandbytes")
    from dpokit.models import load_model

    sft_cfg = ModelConfig(name_or_path=str(llama_dir), lora=True, lora_r=4)
    sft_policy = load_policy(sft_cfg, CPU)
    randomise_lora(sft_policy, seed=1)
    save_policy(sft_policy, tmp_path / "sft", load_tokenizer(sft_cfg))

    def quantised(source: Path) -> dict[str, torch.Tensor]:
        model = load_model(ModelConfig(name_or_path=str(source), load_in_4bit=True, gradient_checkpointing=False),
                           CPU)
        return model, {k: v.float() for k, v in model.state_dict().items() if v.is_floating_point()}

    from_adapter, weights = quantised(tmp_path / "sft" / ADAPTER_DIR)
    _, expected = quantised(tmp_path / "sft")
    assert Path(from_adapter.name_or_path).resolve() == (tmp_path / "sft").resolve()
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in weights)


def adapter_config_base(final: Path) -> str:
    return json.loads((final / ADAPTER_DIR / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_dpo_adapter_from_an_sft_adapter_is_correct_on_the_base_it_names(tmp_path, llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from dpokit.data.samples import sample_pairs
    from dpokit.train import train

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": " " + r["chosen"]}) + "\n"
                            for r in sample_pairs(8, 0)), encoding="utf-8")
    common = {"model.lora": True, "model.lora_r": 4, "model.precision": "fp32", "model.device": "cpu",
              "data.max_length": 64, "train.batch_size": 4, "train.steps": 2, "train.lr": 1e-2,
              "output.progress": False, "output.save_steps": 0}
    sft_final = train(build_config({**common, "model.name_or_path": str(llama_dir), "data.path": str(data),
                                    "output.dir": str(tmp_path / "sft")}), "sft")
    dpo_final = train(build_config({**common, "model.name_or_path": str(sft_final / ADAPTER_DIR),
                                    "data.sample_size": 8, "output.dir": str(tmp_path / "dpo")}))

    base = adapter_config_base(dpo_final)
    assert Path(base).resolve() == sft_final.resolve()  # the merged SFT model, not the raw base
    ids = torch.tensor([[1, 5, 17, 200, 42, 9, 311, 2]])

    @torch.no_grad()
    def token_logps(model) -> torch.Tensor:
        return model(input_ids=ids).logits.log_softmax(-1)  # (1, T, V)

    def adapter_on(base_dir) -> torch.nn.Module:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        return PeftModel.from_pretrained(model, str(dpo_final / ADAPTER_DIR)).merge_and_unload()

    expected = token_logps(AutoModelForCausalLM.from_pretrained(dpo_final, dtype=torch.float32))
    torch.testing.assert_close(token_logps(adapter_on(base)), expected, rtol=0, atol=1e-5)
    assert (token_logps(adapter_on(llama_dir)) - expected).abs().max() > 1e-3  # the raw base lacks the SFT update


def test_the_dpo_adapter_base_without_a_merged_sft_model_and_from_a_full_model(tmp_path, llama_dir):
    sft_policy = load_policy(ModelConfig(name_or_path=str(llama_dir), lora=True, lora_r=4), CPU)
    randomise_lora(sft_policy, seed=2)
    save_policy(sft_policy, tmp_path / "sft", load_tokenizer(ModelConfig(name_or_path=str(llama_dir))))
    lone = shutil.copytree(tmp_path / "sft" / ADAPTER_DIR, tmp_path / "lone" / ADAPTER_DIR)  # no merged model beside

    with pytest.warns(UserWarning, match="correct only on top of the merged model"):
        policy = load_policy(ModelConfig(name_or_path=str(lone), lora=True, lora_r=4), CPU)
    save_policy(policy, tmp_path / "dpo-lone")
    assert adapter_config_base(tmp_path / "dpo-lone") == str(llama_dir)  # kept, and the adapter's card says why
    assert "correct only on top of the merged model" in (tmp_path / "dpo-lone" / ADAPTER_DIR / "README.md").read_text()

    policy = load_policy(ModelConfig(name_or_path=str(tmp_path / "sft"), lora=True, lora_r=4), CPU)
    save_policy(policy, tmp_path / "dpo-full")
    assert adapter_config_base(tmp_path / "dpo-full") == str(tmp_path / "sft")  # a full model: itself


def test_bad_lora_targets_are_a_config_error(llama_dir):
    from dpokit.errors import ConfigError

    with pytest.raises(ConfigError, match="target"):
        load_policy(ModelConfig(name_or_path=str(llama_dir), lora=True, lora_target_modules=["no_such_proj"]), CPU)
