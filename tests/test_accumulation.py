"""Gradient accumulation: batch B with K micro-batches gives the same update as batch BK at once,
through the real training step, for a loss on summed log-probs (DPO) and for losses with a
token-averaged term (ORPO's NLL, with or without the prompt, DPO + RPO), whose normaliser is the
whole step's tokens under that NLL."""

from __future__ import annotations

import json

import pytest
import torch

# Completions of very different lengths, so micro-batches hold different numbers of chosen tokens:
# normalising a token-averaged term per micro-batch would give a different update.
PAIRS = [
    ("What is two plus two?", " Four.", " It is five, or maybe six, depending on the day."),
    ("Name a colour.", " Blue is a calm colour that many people like a lot.", " Loud."),
    ("Say hello.", " Hello there, it is good to meet you.", " Go away."),
    ("Is water wet?", " Yes.", " Water is a dry powder that nobody has ever seen."),
    ("Count to three.", " One, two, three.", " Seven."),
    ("What do cats say?", " Cats say meow when they want food or attention.", " Woof."),
    ("Where is Paris?", " In France.", " Paris is on the moon, next to the big crater."),
    ("Give a greeting.", " Good morning to you and to everyone here today!", " No."),
]


def update(tmp_path, model_dir, loss: dict, batch_size: int, grad_accum: int) -> dict[str, torch.Tensor]:
    """Parameter change after one optimizer step of plain SGD (lr 1, no clipping): minus the gradient.

    SGD, not AdamW: Adam's first step is about ``lr * sign(grad)``, blind to the gradient's scale.
    """
    from dpokit.config import Config, DataConfig, LossConfig, ModelConfig, OutputConfig, TrainConfig
    from dpokit.train import setup, train_step

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
    config = Config(
        model=ModelConfig(name_or_path=str(model_dir), precision="fp32", device="cpu"),
        data=DataConfig(path=str(data), max_length=64, layout="padded"),
        loss=LossConfig(**loss),
        train=TrainConfig(steps=1, batch_size=batch_size, grad_accum=grad_accum, max_grad_norm=0.0,
                          warmup_steps=0, scheduler="constant", seed=3),
        output=OutputConfig(dir=str(tmp_path / f"out-{batch_size}x{grad_accum}"), progress=False))
    run = setup(config)
    params = [p for p in run.policy.parameters() if p.requires_grad]
    run.optimizer = torch.optim.SGD(params, lr=1.0)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda _: 1.0)
    reference_model = getattr(run.task.reference, "model", None)  # the frozen copy (reference.py)
    if reference_model is not None:  # a reference unlike the policy, so DPO's gradient is not the h = 0 one
        with torch.no_grad():
            for p in reference_model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    before = {n: p.detach().clone() for n, p in run.policy.named_parameters()}
    train_step(run)
    return {n: p.detach() - before[n] for n, p in run.policy.named_parameters()}


@pytest.mark.parametrize("loss", [{"loss_type": "sigmoid"}, {"loss_type": "orpo"},
                                  {"loss_type": "orpo", "orpo_prompt_nll": True},
                                  {"loss_type": "sigmoid", "rpo_alpha": 1.0}], ids=["dpo", "orpo", "orpo-prompt", "rpo"])
def test_batch_b_times_k_equals_batch_bk(tmp_path, llama_dir, loss):
    whole = update(tmp_path, llama_dir, loss, batch_size=8, grad_accum=1)
    accumulated = update(tmp_path, llama_dir, loss, batch_size=2, grad_accum=4)
    scale = max(float(d.abs().max()) for d in whole.values())
    assert scale > 1e-4  # the step did move the weights
    worst = max(float((whole[n] - accumulated[n]).abs().max()) for n in whole)
    assert worst < 1e-6 * max(1.0, scale), (worst, scale)
