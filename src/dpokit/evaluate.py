"""``dpokit eval``: did alignment work on held-out pairs? The training metrics, by the training code.

A saved model (``OUT/final`` or a checkpoint) is scored on preference pairs against a reference,
and the numbers are the ones training logs for its evaluation (TRL's names, ``eval_`` prefixed):
preference accuracy (``eval_rewards/accuracies``: the implicit reward of the chosen answer above the
rejected one's, Rafailov et al. 2023, sec. 5), the mean margin, the chosen and rejected rewards and
log-probs, and the policy's own preference (mean per-token log-prob of chosen above rejected, no
reference). Accuracy is also broken down by the pairs' length, and by which answer is longer
(a model that learned "longer is better" shows it there).

Everything the numbers depend on comes from the run itself unless a flag says otherwise: the loss
and its settings, beta (as the run's last step used it, beta schedules included), ``max_length``,
the layout and the chat template are read from the model's ``dpokit_config.yaml``; the
reference is the run's starting model. Data loading, tokenization (and its cache), layouts,
the chunked log-prob scorer, the loss registry and the metric sums are the training run's own,
so ``eval`` on a run's eval data reproduces the run's final evaluation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dpokit.config import Config, DataConfig, LossConfig, ModelConfig
from dpokit.configure import build_config, load_yaml
from dpokit.data.cache import tokenize_cached
from dpokit.data.collate import collate
from dpokit.data.pairs import PreferencePair, TokenizedPair
from dpokit.data.presets import find_preset
from dpokit.data.sources import main_spec, read_prepared, read_source
from dpokit.errors import ConfigError, DpokitError
from dpokit.logps import SequenceScorer, layout_for
from dpokit.losses import LossSpec, beta_at, get_loss, needs_prompt_logps, resolve_loss_config
from dpokit.modelcheck import fit_context
from dpokit.models import TINY, autocast, load_model, load_tokenizer, resolve_device, resolve_precision
from dpokit.reference import FrozenModel, Reference, Zeros
from dpokit.tasks.preference import PairMetrics, PairOutput, loss_inputs  # the training metrics' own code
from dpokit.writable import check_writable

RUN_CONFIG = "dpokit_config.yaml"  # saved beside every dpokit model (`checkpoint.save_final`)
RUN_STATE = "trainer_state.json"


# ---- what the run saved -----------------------------------------------------------------------


def saved_config(model: str, log=print) -> Config | None:
    """The config a dpokit run saved with ``model`` (a directory), or None (no such file, or one this
    version cannot read: then the defaults and flags apply, and a note says so). A start model
    (``--weights``) that is not there any more is kept by name: it is only needed as the reference."""
    path = Path(model).expanduser() / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        flat = load_yaml(path)
        weights = flat.get("model.weights")
        if weights and not Path(weights).expanduser().is_dir():
            flat["model.weights"] = None
        config = build_config(flat)
    except DpokitError as e:
        log(f"note: cannot read {path} ({str(e).splitlines()[0]}); the defaults and flags apply")
        return None
    config.model.weights = weights
    return config


def run_beta(model: str, loss: LossConfig) -> float:
    """The beta of the step whose weights ``model`` holds (the last optimizer step, or the best one under
    ``load_best_model_at_end``): what that step's evaluation used; ``loss.beta`` when the run saved no
    step counts."""
    path = Path(model).expanduser() / RUN_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        step, total = int(state.get("weights_step") or state["step"]), int(state["total_steps"])  # the best
    except (OSError, ValueError, KeyError, TypeError):
        return loss.beta
    return beta_at(loss.beta, loss.beta_schedule, max(0, step - 1), total)


def run_reference(config: Config | None) -> str | None:
    """The reference the run trained against: ``none`` (reference-free), its ``ref_model``, or the
    model it started from; None when there is no saved config to tell."""
    if config is None:
        return None
    if config.model.reference == "none":
        return "none"
    return config.model.ref_model or config.model.weights or config.model.name_or_path


# ---- scoring ----------------------------------------------------------------------------------


@dataclass
class PairScore:
    """One pair's numbers, for the breakdowns."""

    chosen_tokens: int
    rejected_tokens: int
    margin: float  # chosen reward - rejected reward
    policy_prefers: bool  # mean per-token log-prob of chosen above rejected's
    reference_prefers: bool | None  # the same for the reference model (None without one)

    @property
    def correct(self) -> bool:
        return self.margin > 0  # strict, as training counts rewards/accuracies


@torch.no_grad()
def score_pairs(policy: torch.nn.Module, reference: Reference, pairs: list[TokenizedPair], loss: LossSpec,
                loss_cfg: LossConfig, beta: float, layout: str, pad_id: int, batch_size: int, precision: str,
                device: torch.device) -> tuple[dict[str, float], list[PairScore]]:
    """Training's evaluation metrics (``eval_*``) over ``pairs``, and each pair's numbers."""
    policy.eval()
    scorer = SequenceScorer(policy)
    sums = PairMetrics()
    scores: list[PairScore] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = collate(chunk, layout, pad_id, prompt_logps=needs_prompt_logps(loss_cfg)).to(device)
        with autocast(precision, device):
            pol = scorer(batch)
            ref = reference.logps(batch, chunk)
        out = loss.fn(loss_inputs(pol, ref, beta), loss_cfg)
        sums.add(PairOutput(out, pol))
        b = pol.num_pairs
        margins = (out.chosen_rewards.float() - out.rejected_rewards.float()).tolist()
        pol_pref = (pol.mean[:b] > pol.mean[b:]).tolist()
        ref_pref = (ref.mean[:b] > ref.mean[b:]).tolist() if isinstance(reference, FrozenModel) else [None] * b
        tokens = pol.tokens.tolist()
        scores += [PairScore(tokens[i], tokens[b + i], margins[i], pol_pref[i], ref_pref[i]) for i in range(b)]
    metrics = sums.means(prefix="eval_")
    if scores and scores[0].reference_prefers is not None:
        metrics["eval_reference_preference"] = sum(bool(s.reference_prefers) for s in scores) / len(scores)
    return metrics, scores


def _group(scores: list[PairScore], label: str) -> dict[str, Any]:
    n = len(scores)
    return {"bucket": label, "pairs": n,
            "accuracy": sum(s.correct for s in scores) / n if n else math.nan,
            "margin": sum(s.margin for s in scores) / n if n else math.nan,
            "policy_preference": sum(s.policy_prefers for s in scores) / n if n else math.nan}


def by_length(scores: list[PairScore], buckets: int = 4) -> list[dict[str, Any]]:
    """Accuracy, margin and policy preference in ``buckets`` groups of about equal size, by the pair's
    completion tokens (chosen + rejected), shortest first; each labelled with its token range."""
    ranked = sorted(scores, key=lambda s: s.chosen_tokens + s.rejected_tokens)
    k = max(1, min(buckets, len(ranked)))
    out = []
    for i in range(k):
        part = ranked[i * len(ranked) // k : (i + 1) * len(ranked) // k]
        if part:
            lo, hi = (part[j].chosen_tokens + part[j].rejected_tokens for j in (0, -1))
            out.append(_group(part, f"{lo}-{hi} tokens"))
    return out


def by_longer(scores: list[PairScore]) -> list[dict[str, Any]]:
    """The same numbers for pairs whose chosen answer is longer, as long, or shorter than the rejected."""
    groups = (("chosen longer", lambda s: s.chosen_tokens > s.rejected_tokens),
              ("same length", lambda s: s.chosen_tokens == s.rejected_tokens),
              ("rejected longer", lambda s: s.chosen_tokens < s.rejected_tokens))
    return [_group(part, label) for label, test in groups if (part := [s for s in scores if test(s)])]


# ---- data -------------------------------------------------------------------------------------


def load_pairs(data: DataConfig, log=print) -> list[PreferencePair]:
    """All pairs of ``data.path`` (any source `dpokit train` reads), under the run's bad-row policy.
    A preset without ``--split`` gives its evaluation split; a prepared directory its eval part."""
    spec = main_spec(data)
    preset = find_preset(data.path) if spec.kind == "hub" and not Path(data.path).exists() else None
    if preset is not None and preset.eval_split and data.split is None:
        spec = replace(spec, split=preset.eval_split)
        log(f"data: {data.path}: the evaluation split '{preset.eval_split}' (--split picks another)")
    if spec.kind == "prepared" and data.split in ("eval", "test", "validation"):
        return read_prepared(spec.location, "eval")
    pairs, report = read_source(spec, data.max_samples)
    report.raise_errors(data.on_bad_row, data.path)
    report.raise_if_no_pairs(data.path)
    for line in report.summary(data.on_bad_row):
        log(f"data: {line}")
    return pairs


# ---- the command ------------------------------------------------------------------------------


def _model_config(name: str, saved: Config | None, args: Any) -> ModelConfig:
    from dpokit.generate import model_source

    source = model_source(name, "--model" if name == args.model else "--ref")
    base = saved.model if saved is not None else ModelConfig()
    return ModelConfig(name_or_path=source, precision=args.precision or base.precision,
                       attn_implementation=base.attn_implementation, trust_remote_code=args.trust_remote_code,
                       gradient_checkpointing=False, device=args.device)


def _loss_config(saved: Config | None, args: Any) -> LossConfig:
    loss = saved.loss if saved is not None else LossConfig()
    if args.loss_type and get_loss(args.loss_type).name != loss.loss_type:
        loss = LossConfig(loss_type=args.loss_type)  # another loss: its own defaults
    return resolve_loss_config(loss)


def evaluate_model(args: Any, log=print) -> dict[str, Any]:
    """Run ``dpokit eval`` (``args`` as `eval_cli` parses them); returns what ``--output`` saves."""

    saved = saved_config(args.model, log)
    loss_cfg = _loss_config(saved, args)
    beta = args.beta if args.beta is not None else (
        run_beta(args.model, loss_cfg) if saved is not None and loss_cfg == saved.loss else loss_cfg.beta)
    if beta <= 0:
        raise ConfigError(f"--beta must be positive (got {beta})")
    loss = get_loss(loss_cfg.loss_type)
    base = saved.data if saved is not None else DataConfig()
    try:
        data = replace(base, path=args.data, split=args.split, eval_path=None, eval_split=None, eval_fraction=0.0,
                       mixture=None, max_samples=args.max_samples, on_bad_row=args.on_bad_row or base.on_bad_row,
                       max_length=args.max_length or base.max_length, layout=args.layout or base.layout,
                       max_prompt_length=args.max_prompt_length or base.max_prompt_length)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    pairs = load_pairs(data, log)  # bad data stops us before a model loads
    policy_cfg = _model_config(args.model, saved, args)  # then a missing, empty or corrupt model directory

    ref_name = args.ref or run_reference(saved)
    if loss.needs_reference and ref_name is None:
        raise ConfigError(f"{args.model} has no {RUN_CONFIG} to name its reference, and loss '{loss.name}' "
                          "compares with one\n  fix: pass --ref START_MODEL (the model training started from), "
                          "or --ref none for reference log-probs of 0")
    fit_context(data, policy_cfg.name_or_path, args.model == TINY, log, trust_remote_code=args.trust_remote_code)
    device = resolve_device(args.device)
    precision = resolve_precision(policy_cfg.precision, device)
    tokenizer = load_tokenizer(policy_cfg)
    if data.chat_template:
        tokenizer.chat_template = data.chat_template
    tokenized, stats, _ = tokenize_cached(pairs, tokenizer, data.max_length, data.max_prompt_length, data.num_proc,
                                          data.tokenized_cache)
    log(f"data: {stats.summary()}")
    if not tokenized:
        raise DpokitError(f"no pairs of {args.data} left after tokenization; raise --max-length or check the data")
    policy = load_model(policy_cfg, device)
    reference: Reference = Reference()
    if loss.needs_reference:
        if ref_name == "none":
            reference = Zeros()
        else:
            reference = FrozenModel(load_model(replace(policy_cfg, name_or_path=_model_config(
                ref_name, saved, args).name_or_path), device), "model")
    layout, why = layout_for(policy, data.layout, data.max_length)
    if why is not None:
        log(f"note: {why}")
    if saved is not None and saved.model.ref_refresh_steps is not None and not args.ref:
        log("note: the run refreshed its reference while training (TR-DPO); eval compares with the start model")
    batch_size = args.batch_size or (saved.train.batch_size if saved is not None else 8)
    metrics, scores = score_pairs(policy, reference, tokenized, loss, loss_cfg, beta, layout, tokenizer.pad_token_id,
                                  batch_size, precision, device)
    return {"model": args.model, "reference": None if not loss.needs_reference else ref_name, "data": args.data,
            "pairs": len(tokenized), "loss_type": loss.name, "beta": beta, "metrics": metrics,
            "by_length": by_length(scores, args.buckets), "by_longer": by_longer(scores)}


ROWS = (("preference accuracy", "eval_rewards/accuracies", ".3f"),
        ("mean margin", "eval_rewards/margins", "+.4f"),
        ("chosen reward", "eval_rewards/chosen", "+.4f"),
        ("rejected reward", "eval_rewards/rejected", "+.4f"),
        ("chosen log-prob", "eval_logps/chosen", ".2f"),
        ("rejected log-prob", "eval_logps/rejected", ".2f"),
        ("loss", "eval_loss", ".4f"),
        ("policy's own preference", "eval_policy_preference", ".3f"),
        ("reference's own preference", "eval_reference_preference", ".3f"))


def format_result(result: dict[str, Any]) -> str:
    """The console table: the headline metrics with their logged names, then the breakdowns."""
    m = result["metrics"]
    against = f"against {result['reference']}" if result["reference"] else "(no reference)"
    lines = [f"dpokit eval: {result['model']} {against} on {result['pairs']} pairs of {result['data']} "
             f"(loss {result['loss_type']}, beta {result['beta']:g})", ""]
    for label, key, fmt in ROWS:
        if key in m:
            lines.append(f"  {label:<28}{format(m[key], fmt):>10}   {key}")
    lines.append("  (own preference: mean per-token log-prob of chosen above rejected; no reference)")
    for title, rows in (("by length (chosen + rejected tokens)", result["by_length"]),
                        ("by which answer is longer", result["by_longer"])):
        lines += ["", f"  {title:<38}{'pairs':>6}{'accuracy':>10}{'margin':>10}{'own pref':>10}"]
        lines += [f"  {r['bucket']:<38}{r['pairs']:>6}{r['accuracy']:>10.3f}{r['margin']:>+10.4f}"
                  f"{r['policy_preference']:>10.3f}" for r in rows]
    return "\n".join(lines)


def run(args: Any) -> int:
    """``dpokit eval``: print the table; ``--output`` writes the same numbers as JSON."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no weight-loading bars before the table
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.buckets < 1:
        raise ConfigError(f"--buckets must be at least 1 (got {args.buckets})")
    if args.output:
        check_writable(args.output)  # before the models load
    result = evaluate_model(args)
    print(format_result(result))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {out}")
    return 0

