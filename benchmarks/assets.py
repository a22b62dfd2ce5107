"""The benchmark's inputs, built locally: HH-RLHF pairs, a tokenizer and a ~27M-parameter Llama.

* Data: the first ``n`` usable pairs of the shared HH-RLHF file, converted from the implicit
  prompt format (whole dialogues) to ``{prompt, chosen, rejected}``: the prompt is the dialogue up
  to and including the last ``"\\n\\nAssistant:"``, the completions are the two final assistant
  turns. Rows whose dialogues differ earlier, or with an empty final turn, are skipped.
* Tokenizer: a byte-level BPE with a vocabulary of 8,192, trained on all the file's dialogues.
* Model: a Llama (hidden 512, 6 layers, 8 heads, MLP 1,408, untied embeddings), random
  initialisation with a fixed seed: 27.7M parameters. Speed does not depend on the weights.
  Larger members of the same family for the scaling sweep (`SIZES`): ``125m`` (hidden 768,
  12 layers, 12 heads, MLP 3,072) and ``360m`` (hidden 1,024, 24 layers, 16 heads, MLP 3,328).
* Long pairs for the ``max_length`` sweep (`long_pairs`): the HH-RLHF dialogues as one token
  stream, cut into pairs of a 60% prompt and two 20% completions of ``max_length`` tokens, so
  that every pair fills 80% of ``max_length`` and no tool has to truncate it.

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


# (hidden, MLP, layers, heads, max positions) of each model size; the vocabulary is the tokenizer's.
SIZES = {"27m": (512, 1408, 6, 8, 4096), "125m": (768, 3072, 12, 12, 4096), "360m": (1024, 3328, 24, 16, 4096)}


def build_model(path: Path, tokenizer, seed: int = 0, size: str = "27m") -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    hidden, mlp, layers, heads, positions = SIZES[size]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def long_pairs(n: int, max_length: int, tokenizer) -> list[dict[str, str]]:
    """``n`` pairs cut from the dialogues' token stream: a prompt of 60% of ``max_length`` tokens
    and two completions of 20% each (chosen and rejected from different parts of the stream)."""
    prompt_len, completion_len = int(0.6 * max_length), int(0.2 * max_length)
    need = n * (prompt_len + 2 * completion_len)
    stream: list[int] = []
    for d in hh_dialogues():
        stream += tokenizer(d["chosen"], add_special_tokens=False)["input_ids"]
        if len(stream) >= need:
            break
    while len(stream) < need:  # the file is long enough for the usual sizes; repeat it otherwise
        stream += stream
    rows, at = [], 0
    for _ in range(n):
        pieces = []
        for length in (prompt_len, completion_len, completion_len):
            pieces.append(tokenizer.decode(stream[at : at + length]))
            at += length
        rows.append({"prompt": pieces[0], "chosen": pieces[1], "rejected": pieces[2]})
    return rows


def build_assets(root: Path, num_pairs: int, size: str = "27m", long_length: int | None = None) -> dict[str, str]:
    """Write ``model/`` (model + tokenizer; ``model-SIZE/`` for the larger sizes, sharing the
    tokenizer) and the pairs file under ``root`` (the HH-RLHF pairs, or `long_pairs` of
    ``long_length`` when given); return their paths."""
    root.mkdir(parents=True, exist_ok=True)
    base = root / "model"
    if not (base / "config.json").exists():
        build_model(base, build_tokenizer(base))
    model_dir = base if size == "27m" else root / f"model-{size}"
    if not (model_dir / "config.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base)
        tokenizer.save_pretrained(model_dir)
        build_model(model_dir, tokenizer, size=size)
    data = root / (f"hh-{num_pairs}.jsonl" if long_length is None else f"long-{long_length}-{num_pairs}.jsonl")
    if not data.exists():
        if long_length is None:
            rows = hh_pairs(num_pairs)
        else:
            from transformers import AutoTokenizer

            rows = long_pairs(num_pairs, long_length, AutoTokenizer.from_pretrained(base))
        with open(data, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return {"model": str(model_dir), "data": str(data)}
