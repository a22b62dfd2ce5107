"""Generation from small pure steps: batched prompts, left padding, the chat template when present.

One batch goes ``left_pad`` -> ``prefill`` -> (``filter_logits`` -> ``pick`` -> ``decode_one``)*,
with a key/value cache, until every row has produced an end-of-sequence token or
``max_new_tokens``. Rows are left-padded so that every row's next token is at the right edge;
position ids count real tokens only, so a padded row sees what it would see alone.

Sampling draws each row's noise from its own generator, seeded by (seed, prompt, sample index)
(`sample_seed`): an answer does not depend on the other prompts in its batch, nor on the batch
size, and two models asked with the same seed draw the same noise (``dpokit compare`` and
``dpokit data label`` rely on this). A token is picked by the Gumbel-max rule,
``argmax(logits / T + g)`` with ``g = -log(-log u)``, which samples from ``softmax(logits / T)``
exactly (Gumbel 1954; Maddison et al. 2014), after top-k and top-p have set the logits of the
tokens they drop to -inf.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dpokit.errors import ConfigError


@dataclass
class SamplingConfig:
    """How tokens are picked."""

    max_new_tokens: int = 128
    """Tokens to generate after each prompt (``--max-new-tokens``)."""
    temperature: float = 0.7
    """Softmax temperature; 0 picks the most likely token, like ``greedy`` (``--temperature``)."""
    top_p: float = 0.9
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches this
    (``--top-p``; 1 turns it off)."""
    top_k: int = 50
    """Sample from this many of the most likely tokens (``--top-k``; 0 turns it off)."""
    greedy: bool = False
    """Always take the most likely token (``--greedy``)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")
        if not 0.0 <= self.temperature < float("inf"):
            raise ConfigError(f"--temperature must be 0 or more (got {self.temperature}); 0 is greedy decoding")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be in (0, 1] (got {self.top_p}); 1 turns nucleus sampling off")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be 0 or more (got {self.top_k}); 0 turns top-k sampling off")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    @property
    def is_pure(self) -> bool:
        """Whether tokens are drawn from the model's own distribution, untouched (temperature 1, no
        top-k, no top-p): the samples a KL estimate needs."""
        return not self.is_greedy and self.temperature == 1.0 and self.top_p == 1.0 and self.top_k == 0


def model_source(model: str, flag: str = "--model", tokenizer: bool = True) -> str:
    """Where to load ``model`` from: ``tiny`` is the built-in tiny model; a local-looking path must
    exist and hold a loadable model (``modelcheck.check_source``)."""
    from dpokit.modelcheck import check_source
    from dpokit.models import TINY
    from dpokit.tiny import tiny_model_dir

    if model == TINY:
        return str(tiny_model_dir())
    return check_source(model, flag, tokenizer)


def load_for_generation(model: str, device: torch.device, trust_remote_code: bool = False) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = model_source(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        lm = AutoModelForCausalLM.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 (transformers, safetensors and OS errors alike)
        if isinstance(e, torch.cuda.OutOfMemoryError):
            raise
        from dpokit.modelcheck import load_failure

        raise load_failure(model, e) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm.to(device).eval(), tokenizer


def load_lm(name: str, device: torch.device, precision: str = "fp32", flag: str = "--model",
            trust_remote_code: bool = False) -> tuple[Any, Any]:
    """A causal LM and its tokenizer for generating and scoring, loaded as training loads models
    (``tiny``, saved LoRA adapters merged, dropout off). On a GPU the weights are cast to the half
    precision asked for (no master weights are needed without training); elsewhere they stay fp32
    and run under autocast."""
    from dpokit.config import ModelConfig
    from dpokit.models import load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=model_source(name, flag), gradient_checkpointing=False,
                      trust_remote_code=trust_remote_code)
    model = load_model(cfg, device).eval()
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        model = model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    return model, load_tokenizer(cfg)


def read_prompts(path: str | Path, flag: str = "--prompts") -> list[Any]:
    """Prompts from a file: JSON Lines / JSON rows with a ``prompt`` (a string or chat messages), or
    else UTF-8 text, one prompt per non-empty line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{flag} {path}: no such file\n  fix: pass a text file with one prompt per line, "
                          "or a JSONL file with a 'prompt' in each row")
    if path.name.lower().endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")):
        from dpokit.data.jsonl import iter_jsonl
        from dpokit.errors import DataError

        prompts = []
        for line, row in iter_jsonl(path):
            prompt = row.get("prompt")
            if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt):
                raise DataError("no 'prompt' (a non-empty string or list of chat messages) in this row",
                                path=str(path), line=line, column="prompt",
                                hint="give each row a 'prompt', or pass a text file with one prompt per line")
            prompts.append(prompt.strip() if isinstance(prompt, str) else prompt)
    else:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise ConfigError(f"{flag} {path}, line {line}: not UTF-8 text\n  fix: save the file as UTF-8, "
                              "one prompt per line") from None
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"{flag} {path}: no prompts in the file\n  fix: write one prompt per line")
    return prompts


# ---- the steps --------------------------------------------------------------------------------


def sample_seed(seed: int, prompt: Any, index: int = 0) -> int:
    """The seed of answer ``index`` to ``prompt``: the same for every model and batch."""
    key = f"{seed}\x00{index}\x00{prompt!r}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """Tokens that end an answer: the tokenizer's EOS and the model's own (Llama 3's end of turn)."""
    ids = {tokenizer.eos_token_id}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return {i for i in ids if i is not None}


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded on the left to one length, and the mask of real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids that count real tokens only: a left-padded row starts at 0 at its first token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def filter_logits(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """(B, V) logits divided by the temperature, with -inf outside top-k and outside the top-p nucleus
    (the smallest set of most likely tokens whose probability reaches ``top_p``; never empty)."""
    logits = logits.float() / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = ordered.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability of the more likely tokens
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before >= sampling.top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def gumbel_noise(generators: list[torch.Generator], vocab: int, device: torch.device) -> torch.Tensor:
    """(B, V) Gumbel noise, row i from ``generators[i]``."""
    u = torch.stack([torch.rand(vocab, generator=g, device=device) for g in generators])  # (B, V)
    return -torch.log(-torch.log(u.clamp(min=1e-20)))


def pick(logits: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """(B,) next tokens: the most likely one (``noise`` None) or a sample (Gumbel-max)."""
    return (logits if noise is None else logits + noise).argmax(-1)


def _cache_names(model: Any) -> tuple[str, bool]:
    """The forward's keyword for the key/value cache (``cache`` from transformers 5.24, before that
    ``past_key_values``), and whether it takes ``logits_to_keep`` (the last position's logits only)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def _forward(model: Any, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any
             ) -> tuple[torch.Tensor, Any]:
    name, keep = _cache_names(model)
    extra = {"logits_to_keep": 1} if keep else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{name: cache}, **extra)
    cache = out.cache if name == "cache" else out.past_key_values
    return out.logits[:, -1], cache  # (B, V)


def prefill(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Run the prompts; returns the logits of each row's next token (B, V) and the key/value cache."""
    return _forward(model, ids, mask, positions(mask), None)


def decode_one(model: Any, token: torch.Tensor, mask: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
    """Feed one new token per row (``token`` (B,), ``mask`` (B, T) including it); the next logits and cache."""
    pos = mask.sum(-1, keepdim=True) - 1  # (B, 1) the new token's position
    return _forward(model, token[:, None], mask, pos, cache)


@torch.no_grad()
def generate_batch(model: Any, prompts: list[list[int]], sampling: SamplingConfig, stop: set[int],
                   pad_id: int, seeds: list[int]) -> list[list[int]]:
    """Generated ids of each prompt (``prompts`` are token ids), the stop token included when reached."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    stop_t = torch.tensor(sorted(stop), device=device)
    logits, cache = prefill(model, ids, mask)
    out: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)  # (B,)
    for _ in range(sampling.max_new_tokens):
        if sampling.is_greedy:
            token = pick(logits, None)
        else:
            token = pick(filter_logits(logits, sampling), gumbel_noise(generators, logits.shape[-1], device))
        token = token.masked_fill(done, pad_id)  # (B,)
        for i in (~done).nonzero().flatten().tolist():
            out[i].append(int(token[i]))
        done |= torch.isin(token, stop_t)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, cache = decode_one(model, token, mask, cache)
    return out


# ---- prompts in, answers out ------------------------------------------------------------------


@dataclass
class Completion:
    """One answer: the prompt's ids, the generated ids (the stop token included when reached), the text."""

    prompt_ids: list[int]
    ids: list[int]
    text: str  # decoded, special tokens removed, as generated (leading space kept: prompt + text is the row)
    finished: bool  # ended with a stop token (False: cut at max_new_tokens)

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


def auto_batch_size(model: Any, tokens_per_row: int, device: torch.device) -> int:
    """Rows per batch: 8 on CPU; on a GPU as many as fit in ~70% of its free memory, from the key/value
    cache per token, the prefill's activations and the fp32 logits and noise of each row."""
    if device.type != "cuda":
        return 8
    from dpokit.logps import text_config

    free, _ = torch.cuda.mem_get_info(device)
    return rows_that_fit(text_config(model.config), next(model.parameters()).element_size(), tokens_per_row, free)


def rows_that_fit(config: Any, element_size: int, tokens_per_row: int, free_bytes: int) -> int:
    """Rows of ``tokens_per_row`` tokens that fit in 70% of ``free_bytes`` (1 to 512): per token, the
    keys and values of every layer and ~16 hidden-size activations of the prefill; per row, the fp32
    logits and the sampling noise over the vocabulary (4 tensors of 4 bytes)."""
    hidden = config.hidden_size
    heads = getattr(config, "num_attention_heads", 1)
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    per_token = 2 * config.num_hidden_layers * kv * head_dim * element_size + 16 * hidden * element_size
    per_row = tokens_per_row * per_token + 4 * 4 * config.vocab_size
    return max(1, min(512, int(0.7 * free_bytes / per_row)))


def complete(model: Any, tokenizer: Any, prompts: list[Any], sampling: SamplingConfig,
             batch_size: int | None = None, seed: int = 0, index: int | list[int] = 0,
             precision: str = "fp32") -> list[Completion]:
    """Answer ``prompts`` (strings, or chat message lists): answer ``index`` of each (one index for all,
    or one per prompt), seeded per prompt and index.

    Prompts are tokenized as training tokenizes them (`prompt_ids`); batches hold prompts of similar
    length (less padding) and the answers come back in the order of ``prompts``.
    """
    from dpokit.data.tokenize import prompt_ids
    from dpokit.models import autocast

    if not prompts:
        return []
    device = next(model.parameters()).device
    indices = index if isinstance(index, list) else [index] * len(prompts)
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    size = batch_size or auto_batch_size(model, len(encoded[order[0]]) + sampling.max_new_tokens, device)
    stop = stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop)
    results: list[Completion | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            with autocast(precision, device):
                new = generate_batch(model, [encoded[i] for i in rows], sampling, stop, pad,
                                     [sample_seed(seed, prompts[i], indices[i]) for i in rows])
            for i, ids in zip(rows, new):
                text = tokenizer.decode(ids, skip_special_tokens=True)
                results[i] = Completion(encoded[i], ids, text, bool(ids) and ids[-1] in stop)
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]


def generate(model: Any, tokenizer: Any, prompts: list[str], sampling: SamplingConfig,
             batch_size: int | None = 8, seed: int = 0) -> list[str]:
    """Completions for ``prompts`` (text after the prompt, special tokens removed, stripped)."""
    return [c.text.strip() for c in complete(model, tokenizer, prompts, sampling, batch_size, seed)]
