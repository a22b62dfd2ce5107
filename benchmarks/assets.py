"""The benchmark's inputs, built locally: HH-RLHF pairs, a tokenizer and a ~27M-parameter Llama.

* Data: the first ``n`` usable pairs of the shared HH-RLHF file, converted from the implicit
  prompt format (whole dialogues) to ``{prompt, chosen, rejected}``: the prompt is the dialogue up
  to and including the last ``"\\n\\nAssistant:"``, the completions are the two final assistant
  turns. Rows whose dialogues differ earlier, or with an empty final turn, are skipped.
* Tokenizer: a byte-level BPE with a vocabulary of 8,192, trained on all the file's dialogues.
* Model: a Llama (hidden 512, 6 layers, 8 heads, MLP 1,408, untied embeddings), random
  initialisation with a fixed seed: 27.7M parameters. Speed does not depend on the weights.

Everything is written under one directory and reused when already there.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

HH_RLHF = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
MARKER = "\n\nAssistant:"
VOCAB_SIZE = 8192


def hh_dialogues(path: Path = HH_RLHF) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split_implicit_prompt(chosen: str, rejected: str) -> dict[str, str] | None:
    """``{prompt, chosen, rejected}`` from two whole dialogues sharing all but the last turn."""
    cut = chosen.rfind(MARKER)
    if cut < 0:
        return None
    end = cut + len(MARKER)
    prompt = chosen[:end]
    if not rejected.startswith(prompt) or MARKER in rejected[end:]:
        return None  # the dialogues differ before the final assistant turn
    row = {"prompt": prompt, "chosen": chosen[end:], "rejected": rejected[end:]}
    if not row["chosen"].strip() or not row["rejected"].strip():
        return None
    return row


def hh_pairs(n: int) -> list[dict[str, str]]:
    rows = []
    for d in hh_dialogues():
        row = split_implicit_prompt(d["chosen"], d["rejected"])
        if row is not None:
            rows.append(row)
        if len(rows) == n:
            return rows
    raise ValueError(f"only {len(rows)} usable pairs in {HH_RLHF}")


def build_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = [t for d in hh_dialogues() for t in (d["chosen"], d["rejected"])]
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.save_pretrained(path)
    return tokenizer


def build_model(path: Path, tokenizer, seed: int = 0) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def build_assets(root: Path, num_pairs: int) -> dict[str, str]:
    """Write ``model/`` (model + tokenizer) and ``pairs.jsonl`` under ``root``; return their paths."""
    root.mkdir(parents=True, exist_ok=True)
    model_dir, data = root / "model", root / f"hh-{num_pairs}.jsonl"
    if not (model_dir / "config.json").exists():
        tokenizer = build_tokenizer(model_dir)
        build_model(model_dir, tokenizer)
    if not data.exists():
        with open(data, "w", encoding="utf-8") as f:
            for row in hh_pairs(num_pairs):
                f.write(json.dumps(row) + "\n")
    return {"model": str(model_dir), "data": str(data)}
