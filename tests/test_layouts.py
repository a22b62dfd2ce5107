"""Every batch layout gives the padded layout's numbers: per-pair summed log-probs and gradients
(fp32, relative 1e-6) on Llama and GPT-2, under SDPA, eager attention and gradient checkpointing,
and the same loss curve over 20 training steps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dpokit.data.collate import LAYOUTS, collate
from dpokit.logps import SequenceScorer
from dpokit.models import enable_checkpointing

HH_RLHF = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
pytestmark = [pytest.mark.skipif(not HH_RLHF.is_file(), reason="the shared HH-RLHF sample is not here"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def hh_pairs(tiny_tokenizer):
    from test_collate import hh_tokenized

    return hh_tokenized(tiny_tokenizer, n=6, max_length=160)


def scores_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logps = SequenceScorer(model)(batch).logps  # (2B,)
    weights = torch.linspace(-1.0, 2.0, logps.shape[0])
    (logps * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logps.detach(), grads


def check_layouts(model, pairs, pad_id) -> None:
    base, base_grads = scores_and_grads(model, collate(pairs, "padded", pad_id))
    for layout in LAYOUTS[1:]:
        logps, grads = scores_and_grads(model, collate(pairs, layout, pad_id))
        rel = ((logps - base).abs() / base.abs()).max().item()
        assert rel <= 1e-6, f"{layout}: per-sequence log-probs differ by {rel:.1e} (relative)"
        assert grads.keys() == base_grads.keys()
        for name, g in base_grads.items():
            err = ((grads[name] - g).norm() / g.norm()).item()
            assert err <= 1e-5, f"{layout}: gradient of {name} differs by {err:.1e} (relative)"


@pytest.mark.parametrize("arch,attn", [("llama", "sdpa"), ("llama", "eager"), ("llama", "dpokit_eager"),
                                       ("gpt2", "sdpa"), ("gpt2", "eager")])
def test_layouts_match_padded(arch, attn, hh_pairs, tiny_tokenizer, request):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(f"{arch}_dir"), dtype=torch.float32,
                                                 attn_implementation=attn)
    check_layouts(model, hh_pairs, tiny_tokenizer.pad_token_id)


@pytest.mark.parametrize("attn", ["sdpa", "dpokit_eager"])
def test_layouts_match_padded_with_gradient_checkpointing(attn, llama_dir, hh_pairs, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32, attn_implementation=attn)
    plain = scores_and_grads(model, collate(hh_pairs, "prefix", tiny_tokenizer.pad_token_id))
    enable_checkpointing(model)
    model.train()
    check_layouts(model, hh_pairs, tiny_tokenizer.pad_token_id)
    again = scores_and_grads(model, collate(hh_pairs, "prefix", tiny_tokenizer.pad_token_id))
    torch.testing.assert_close(again[0], plain[0], rtol=1e-6, atol=0)


def test_layouts_agree_under_bf16_autocast(llama_dir, hh_pairs, tiny_tokenizer):
    """The additive mask in bf16 keeps sequences apart: layouts agree to bf16 precision."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = {layout: SequenceScorer(model)(collate(hh_pairs, layout, tiny_tokenizer.pad_token_id)).logps
                  for layout in LAYOUTS}
    for layout in LAYOUTS[1:]:
        assert ((scores[layout] - scores["padded"]).abs() / scores["padded"].abs()).max() < 1e-2


def test_prompt_logps_match_across_layouts_and_a_solo_forward(llama_dir, hh_pairs, tiny_tokenizer):
    """The chosen prompts' summed log-probs (ORPO's NLL over the prompt) and their gradients are
    the same in every layout, and equal those of each ``prompt + chosen`` run alone through the
    model's own forward (tokens 1..p-1, each predicted by the one before)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    weights = torch.linspace(-1.0, 2.0, len(hh_pairs))

    def prompt_scores(layout: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = SequenceScorer(model)(collate(hh_pairs, layout, tiny_tokenizer.pad_token_id, prompt_logps=True))
        (out.prompt_logps * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out.prompt_logps.detach(), grads

    base, base_grads = prompt_scores("padded")
    with torch.no_grad():
        solo = []
        for pair in hh_pairs:
            ids = torch.tensor([pair.prompt_ids + pair.chosen_ids])  # (1, L)
            logps = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # (L, V)
            p = len(pair.prompt_ids)
            solo.append(logps[: p - 1].gather(-1, ids[0, 1:p, None]).sum())
    assert ((base - torch.stack(solo)).abs() / base.abs()).max() <= 1e-6
    for layout in LAYOUTS[1:]:
        logps, grads = prompt_scores(layout)
        assert ((logps - base).abs() / base.abs()).max() <= 1e-6, layout
        for name, g in base_grads.items():
            assert ((grads[name] - g).norm() / g.norm()).item() <= 1e-5, (layout, name)


def test_same_loss_curve_over_20_steps(llama_dir, tmp_path):
    """Train 20 steps in each layout (same pairs, same batches): the losses agree to 1e-5."""
    from dpokit.configure import resolve
    from dpokit.train import setup, train_step

    curves = {}
    for layout in LAYOUTS:
        config, _, _ = resolve([
            "--data", str(HH_RLHF), "--max-samples", "24", "--model", str(llama_dir),
            "--output", str(tmp_path / layout), "--layout", layout, "--steps", "20", "--batch-size", "3",
            "--lr", "1e-4", "--warmup-steps", "0", "--precision", "fp32", "--max-length", "96",
            "--save-steps", "0", "--progress", "false", "--device", "cpu"])
        run = setup(config)
        curve = []
        for _ in range(20):
            train_step(run)
            curve.append(run.window.means()["loss"])
            run.window = run.task.metrics()
        curves[layout] = curve
    assert abs(curves["padded"][0] - math.log(2)) < 1e-6  # policy == reference at the first step
    assert abs(curves["padded"][-1] - math.log(2)) > 1e-3  # and the policy moved after that
    for layout in LAYOUTS[1:]:
        diff = max(abs(a - b) for a, b in zip(curves[layout], curves["padded"]))
        assert diff <= 1e-5, f"{layout}: loss curve differs from padded by {diff:.1e}"


def test_length_grouped_stream():
    """Grouping keeps each epoch a permutation, orders every mega-batch longest first, and cuts the
    padded layout's padding."""
    from dpokit.data.pairs import TokenizedPair
    from dpokit.data.stream import DataStream

    pairs = [TokenizedPair([5] * (3 + 7 * i % 40), [6] * (1 + i % 5), [7] * (2 + i % 3)) for i in range(24)]
    lengths = [p.num_tokens for p in pairs]
    grouped = DataStream(len(pairs), seed=0, lengths=lengths, group=12)
    plain = DataStream(len(pairs), seed=0)
    [epoch] = grouped.take(24)
    assert sorted(epoch) == list(range(24)) and epoch != plain.take(24)[0]
    for start in (0, 12):
        mega = [lengths[i] for i in epoch[start : start + 12]]
        assert mega == sorted(mega, reverse=True)
    resumed = DataStream(len(pairs), seed=0, lengths=lengths, group=12, epoch=0, position=6)
    assert resumed.take(6) == [epoch[6:12]]

    def padded_slots(order: list[int]) -> int:
        return sum(collate([pairs[i] for i in order[s : s + 4]], "padded", 0)
                   .input_ids.numel() for s in range(0, 24, 4))

    assert padded_slots(epoch) < padded_slots(DataStream(len(pairs), seed=0).take(24)[0])
