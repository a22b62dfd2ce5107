"""Judges score answers; a win rate with a confidence interval says which model answers better.

A judge maps ``(prompt, answer)`` pairs to scores, higher is better:

* a **reward model**: any ``AutoModelForSequenceClassification`` with one output (``num_labels=1``),
  from a directory or the hub. A prompt and its answer are shown to it as a conversation under
  its chat template (a user turn, then an assistant turn) when its tokenizer has one, else as a
  text pair (``tokenizer(prompt, answer)``, how template-less reward models were trained);
* a **Python function** ``module:function`` or ``path/to/file.py:function`` called with
  ``(prompt, answer)`` and returning a number (a toy judge, a rule, a call to another system).

Win rate (`win_rate`): each comparison is a win, a tie or a loss for the policy; the rate counts
ties as half a win, as AlpacaEval and MT-Bench's pairwise mode do. The 95% interval is Wilson's
score interval (Wilson 1927) on the number of comparisons. A comparison scores 0, 1/2 or 1, whose
variance is at most ``p(1 - p)``, the binomial's, so with ties the interval is conservative.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpokit.errors import ConfigError, DpokitError

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


# ---- win rate ---------------------------------------------------------------------------------


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``successes / n`` (Wilson 1927); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def verdict(policy_score: float, reference_score: float, tie_margin: float = 0.0) -> str:
    """``win``, ``tie`` or ``loss`` for the policy: a tie when the scores are within ``tie_margin``."""
    diff = policy_score - reference_score
    if abs(diff) <= tie_margin:
        return "tie"
    return "win" if diff > 0 else "loss"


@dataclass
class WinRate:
    """Wins, ties and losses of the policy, the rate (ties count half) and its 95% Wilson interval."""

    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def rate(self) -> float:
        return (self.wins + 0.5 * self.ties) / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.wins + 0.5 * self.ties, self.n)

    def describe(self) -> str:
        lo, hi = self.interval
        return (f"{self.rate:.3f} (95% CI {lo:.3f}-{hi:.3f}; {self.wins} wins, {self.ties} ties, "
                f"{self.losses} losses of {self.n})")

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {"win_rate": self.rate, "ci95": [lo, hi], "wins": self.wins, "ties": self.ties,
                "losses": self.losses, "n": self.n}


def win_rate(verdicts: list[str]) -> WinRate:
    return WinRate(verdicts.count("win"), verdicts.count("tie"), verdicts.count("loss"))


# ---- judges -----------------------------------------------------------------------------------


class Judge:
    """Scores ``(prompt, answer)`` pairs; higher is better."""

    name = "judge"

    def score(self, prompts: list[Any], answers: list[str]) -> list[float]:
        raise NotImplementedError


def _prompt_text(prompt: Any) -> str:
    """A prompt as the text a function judge sees: a chat prompt's last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else str(prompt)


class FunctionJudge(Judge):
    """A Python function of ``(prompt, answer)`` returning a number (``True`` counts 1)."""

    def __init__(self, fn: Callable[[str, str], float], name: str) -> None:
        self.fn, self.name = fn, name

    def score(self, prompts: list[Any], answers: list[str]) -> list[float]:
        out = []
        for i, (prompt, answer) in enumerate(zip(prompts, answers)):
            try:
                raw = self.fn(_prompt_text(prompt), answer)
            except Exception as e:  # the user's code: say where, keep it one error
                raise DpokitError(f"--judge {self.name} raised {type(e).__name__}: {e} on prompt {i + 1}\n  fix: "
                                  "call the function on that prompt and answer alone to see the traceback") from e
            try:
                value = float(raw)  # a bool, an int, a numpy or torch scalar
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                raise DpokitError(f"--judge {self.name} returned {raw!r} for prompt {i + 1}; a judge function "
                                  "must return a finite number (higher is better)")
            out.append(value)
        return out


class RewardModelJudge(Judge):
    """A sequence classifier with one output; its logit is the score."""

    def __init__(self, model: Any, tokenizer: Any, name: str, batch_size: int = 8, max_length: int = 2048) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.batch_size, self.max_length = batch_size, max_length

    def encode(self, prompts: list[Any], answers: list[str]) -> dict[str, Any]:
        """Token ids of the conversations (chat template) or text pairs, right-padded, as tensors."""
        tok = self.tokenizer
        common = {"padding": True, "truncation": True, "max_length": self.max_length, "return_tensors": "pt"}
        if tok.chat_template:
            texts = [tok.apply_chat_template(
                (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}])
                + [{"role": "assistant", "content": answer}], tokenize=False)
                for prompt, answer in zip(prompts, answers)]
            return tok(texts, add_special_tokens=False, **common)
        return tok([_prompt_text(p) for p in prompts], list(answers), **common)

    def score(self, prompts: list[Any], answers: list[str]) -> list[float]:
        import torch

        device = next(self.model.parameters()).device
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                enc = self.encode(prompts[start : start + self.batch_size], answers[start : start + self.batch_size])
                logits = self.model(**enc.to(device)).logits.float()  # (B, 1)
                out += logits[:, 0].tolist()
        return out


def _load_function(spec: str) -> Callable[[str, str], float]:
    target, _, attr = spec.rpartition(":")
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target).expanduser()
            if not path.is_file():
                raise ConfigError(f"--judge {spec}: no such file {path}\n  fix: pass file.py:function with an "
                                  "existing file, or module:function for an importable module")
            module_spec = importlib.util.spec_from_file_location(f"dpokit_judge_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # `module:function` finds modules in the current directory
            module = importlib.import_module(target)
    except ImportError as e:
        raise ConfigError(f"--judge {spec}: cannot import '{target}' ({e})\n  fix: run from the directory that "
                          "holds the module, set PYTHONPATH, or pass path/to/file.py:function") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--judge {spec}: '{target}' has no function '{attr}'\n  fix: name a function "
                          "taking (prompt, answer) and returning a score")
    return fn


def load_judge(spec: str, device: Any = None, precision: str = "fp32", batch_size: int = 8,
               trust_remote_code: bool = False) -> Judge:
    """The judge ``spec`` names: ``module:function`` / ``file.py:function``, else a reward model."""
    if ":" in spec and not Path(spec).exists():
        return FunctionJudge(_load_function(spec), spec)
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dpokit.generate import model_source

    source = model_source(spec, "--judge")
    dtype = torch.float32
    if device is not None and getattr(device, "type", "cpu") == "cuda" and precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(source, dtype=dtype,
                                                                   trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--judge {spec}: cannot load a reward model: {first}\n  fix: pass a directory or hub "
                          "id of a sequence classifier with one output, or module:function") from None
    if model.config.num_labels != 1:
        raise ConfigError(f"--judge {spec}: the model has {model.config.num_labels} outputs; a reward model has "
                          "one (num_labels=1)\n  fix: pass a reward model, or a function module:function")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id  # the classifier reads the last non-pad token
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    return RewardModelJudge(model.to(device or "cpu").eval(), tokenizer, spec, batch_size, min(limit, 8192))
