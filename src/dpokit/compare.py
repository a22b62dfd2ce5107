"""``dpokit compare``: the aligned model and its reference answer the same prompts, side by side.

Both models answer each prompt ``--num-samples`` times; answer ``j`` of a prompt is drawn with the
same seed by both models (`generate.sample_seed`), so differences come from the models, not the
dice. Output: the terminal (two columns), ``--markdown``, a self-contained HTML report
(``--report``, `report_html`), and ``--output`` JSON with every answer and number.

With ``--judge`` each answer is scored and each prompt's pair of answers gives a verdict; the win
rate of the policy (ties count half) comes with a 95% Wilson interval (`judge`).

The KL divergence KL(policy || reference) is estimated from the policy's own samples ``y ~ pi``:
``sum over the generated tokens of log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)``, averaged over
samples (the Monte Carlo estimate RLHF and the DPO paper's reward / KL frontier use, Rafailov et al.
2023, fig. 2). It needs samples of the policy's untouched distribution (temperature 1, no top-k or
top-p): the answers are reused when they are such samples, otherwise ``--kl-samples`` pure samples
per prompt are drawn for it. Answers cut at ``--max-new-tokens`` make it the KL of the answers' first
that many tokens. Both log-probs come from the training scorer (`logps.SequenceScorer`).
"""

from __future__ import annotations

import json
import math
import shutil
import textwrap
from pathlib import Path
from typing import Any

import torch

from dpokit.data.collate import collate
from dpokit.data.pairs import TokenizedPair
from dpokit.errors import ConfigError
from dpokit.generate import Completion, SamplingConfig, complete, load_lm, model_source, read_prompts
from dpokit.judge import Judge, load_judge, verdict, win_rate
from dpokit.logps import SequenceScorer, layout_for
from dpokit.models import autocast
from dpokit.report_html import count, prompt_text, render, sampling_text
from dpokit.writable import check_writable

# ---- the KL estimate --------------------------------------------------------------------------


@torch.no_grad()
def sequence_logps(model: Any, items: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 8,
                   precision: str = "fp32") -> list[float]:
    """Summed log-probs of each completion given its prompt (``(prompt_ids, completion_ids)`` items).

    Items are laid out as training lays out pairs: two neighbours with the same prompt share one
    prefix block (an odd one out is scored twice); the scorer is training's, in fp32 log-softmax.
    """
    device = next(model.parameters()).device
    longest = max((len(p) + len(c) for p, c in items), default=1)
    layout, _ = layout_for(model, "prefix", longest)
    pairs: list[tuple[int, int]] = []
    i = 0
    while i < len(items):
        j = i + 1 if i + 1 < len(items) and items[i + 1][0] == items[i][0] else i
        pairs.append((i, j))
        i = j + 1
    out = [0.0] * len(items)
    scorer = SequenceScorer(model)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = collate([TokenizedPair(items[a][0], items[a][1], items[b][1]) for a, b in chunk], layout,
                        pad_id).to(device)
        with autocast(precision, device):
            logps = scorer(batch).logps.tolist()  # (2B,) chosen = first item, rejected = second
        for k, (a, b) in enumerate(chunk):
            out[a], out[b] = logps[k], logps[len(chunk) + k]
    return out


def kl_samples(policy: Any, reference: Any, samples: list[Completion], pad_id: int, batch_size: int = 8,
               precision: str = "fp32") -> list[float]:
    """Per sample ``y ~ pi``: log pi(y | x) - log pi_ref(y | x), summed over its generated tokens."""
    items = [(c.prompt_ids, c.ids) for c in samples]
    mine = sequence_logps(policy, items, pad_id, batch_size, precision)
    theirs = sequence_logps(reference, items, pad_id, batch_size, precision)
    return [a - b for a, b in zip(mine, theirs)]


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def same_vocabulary(a: Any, b: Any) -> bool:
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


# ---- the comparison ---------------------------------------------------------------------------


def answers(model: Any, tokenizer: Any, prompts: list[Any], sampling: SamplingConfig, num: int, seed: int,
            batch_size: int | None, precision: str, first_index: int = 0) -> list[list[Completion]]:
    """``num`` answers to each prompt: ``[prompt][sample]``; sample j is seeded by (seed, prompt, j)."""
    per_sample = [complete(model, tokenizer, prompts, sampling, batch_size, seed, first_index + j, precision)
                  for j in range(num)]
    return [[per_sample[j][i] for j in range(num)] for i in range(len(prompts))]


def _answer(c: Completion, score: float | None) -> dict[str, Any]:
    return {"text": c.text.strip(), "tokens": c.num_tokens, "finished": c.finished, "score": score}


def estimate_kl(policy: Any, tokenizer: Any, reference: Any, ref_tokenizer: Any, prompts: list[Any],
                shown: list[list[Completion]], sampling: SamplingConfig, per_prompt: int, args: Any, precision: str,
                log=print) -> dict[str, Any] | None:
    """The KL estimate over ``per_prompt`` pure samples of the policy per prompt: the ``shown`` answers
    when they are such samples, else new ones (seeded after them); None when off or not comparable."""
    if not per_prompt:
        return None
    if not same_vocabulary(tokenizer, ref_tokenizer):
        log("note: the two models' tokenizers differ, so their log-probs of the same tokens cannot be compared: "
            "no KL estimate")
        return None
    if sampling.is_pure and per_prompt <= len(shown[0]):
        samples, source = [c for row in shown for c in row[:per_prompt]], "the answers above"
    else:
        pure = SamplingConfig(sampling.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0)
        drawn = answers(policy, tokenizer, prompts, pure, per_prompt, args.seed, args.batch_size, precision,
                        first_index=len(shown[0]))
        samples, source = [c for row in drawn for c in row], "separate samples (temperature 1, no top-k/top-p)"
    values = kl_samples(policy, reference, samples, tokenizer.pad_token_id, args.batch_size or 8, precision)
    mean, err = mean_and_stderr(values)
    return {"mean": mean, "stderr": err, "samples": len(values), "per_prompt": per_prompt, "from": source,
            "values": values}


def compare(args: Any, log=print) -> dict[str, Any]:
    """Run ``dpokit compare`` (``args`` as `eval_cli` parses them); returns what ``--output`` saves."""
    from dpokit.models import resolve_device, resolve_precision

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1 (got {args.num_samples})")
    if args.kl_samples is not None and args.kl_samples < 0:
        raise ConfigError(f"--kl-samples must be 0 or more (got {args.kl_samples}); 0 turns the KL estimate off")
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.greedy)
    prompts = read_prompts(args.prompts)
    model_source(args.model, "--model")  # a wrong path fails before anything loads
    model_source(args.ref, "--ref")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision or "auto", device)
    judge: Judge | None = None
    if args.judge:  # a bad judge fails before any generation
        judge = load_judge(args.judge, device, precision, args.judge_batch_size, args.trust_remote_code)
    policy, tokenizer = load_lm(args.model, device, precision, "--model", args.trust_remote_code)
    reference, ref_tokenizer = load_lm(args.ref, device, precision, "--ref", args.trust_remote_code)
    n = args.num_samples
    log(f"answering {len(prompts)} prompts x {n} with {args.model} and {args.ref}")
    mine = answers(policy, tokenizer, prompts, sampling, n, args.seed, args.batch_size, precision)
    theirs = answers(reference, ref_tokenizer, prompts, sampling, n, args.seed, args.batch_size, precision)

    k = n if args.kl_samples is None else args.kl_samples
    kl = estimate_kl(policy, tokenizer, reference, ref_tokenizer, prompts, mine, sampling, k, args, precision, log)

    items = []
    verdicts: list[str] = []
    flat_prompts = [p for p in prompts for _ in range(n)]
    scores_mine = scores_theirs = [None] * len(flat_prompts)
    if judge is not None:
        log(f"judging {2 * len(flat_prompts)} answers with {judge.name}")
        scores_mine = judge.score(flat_prompts, [c.text.strip() for row in mine for c in row])
        scores_theirs = judge.score(flat_prompts, [c.text.strip() for row in theirs for c in row])
    for i, prompt in enumerate(prompts):
        entries = []
        for j in range(n):
            a, b = scores_mine[i * n + j], scores_theirs[i * n + j]
            v = verdict(a, b, args.tie_margin) if judge is not None else None
            if v is not None:
                verdicts.append(v)
            entries.append({"sample": j, "policy": _answer(mine[i][j], a), "reference": _answer(theirs[i][j], b),
                            "verdict": v})
        items.append({"prompt": prompt, "answers": entries})
    summary = None
    if judge is not None:
        summary = win_rate(verdicts).to_dict()
        summary["mean_score"] = {"policy": sum(scores_mine) / len(scores_mine),
                                 "reference": sum(scores_theirs) / len(scores_theirs)}
    return {"model": args.model, "ref": args.ref, "prompts": args.prompts, "seed": args.seed, "num_samples": n,
            "sampling": {"max_new_tokens": sampling.max_new_tokens, "greedy": sampling.is_greedy,
                         "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k},
            "judge": judge.name if judge is not None else None, "win_rate": summary, "kl": kl, "items": items}


# ---- showing it -------------------------------------------------------------------------------

VERDICT_WORDS = {"win": "policy wins", "loss": "reference wins", "tie": "tie"}


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The headline: win rate and mean judge scores, and the KL estimate."""
    lines = []
    if result["win_rate"] is not None:
        w = result["win_rate"]
        lo, hi = w["ci95"]
        lines.append(f"win rate of {result['model']} over {result['ref']} (judge {result['judge']}): {w['win_rate']:.3f} "
                     f"(95% CI {lo:.3f}-{hi:.3f}; {w['wins']} wins, {w['ties']} ties, {w['losses']} losses of {w['n']})")
        ms = w["mean_score"]
        lines.append(f"mean judge score: policy {ms['policy']:.4g}, reference {ms['reference']:.4g}")
    if result["kl"] is not None:
        kl = result["kl"]
        lines.append(f"KL(policy || reference): {kl['mean']:.4g} nats per answer (standard error {kl['stderr']:.2g}; "
                     f"{kl['samples']} samples of the policy, {kl['from']})")
    return lines


def _verdict_line(entry: dict[str, Any]) -> str | None:
    if entry["verdict"] is None:
        return None
    return (f"verdict: {VERDICT_WORDS[entry['verdict']]} (score {entry['policy']['score']:.4g} vs "
            f"{entry['reference']['score']:.4g})")


def side_by_side(result: dict[str, Any], width: int | None = None) -> str:
    """The terminal view: each prompt, then both answers in two columns, then the verdict."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    col = max(20, (width - 3) // 2)
    out = []
    for i, item in enumerate(result["items"], start=1):
        for entry in item["answers"]:
            sample = f", answer {entry['sample'] + 1}" if result["num_samples"] > 1 else ""
            out += ["", *_wrap(f"[{i}/{len(result['items'])}{sample}] {prompt_text(item['prompt'])}", width)]
            a, b = entry["policy"], entry["reference"]
            heads = [f"{result['model']} ({a['tokens']} tokens)", f"{result['ref']} ({b['tokens']} tokens)"]
            left = textwrap.wrap(heads[0], col) + ["-" * col] + _wrap(a["text"], col)
            right = textwrap.wrap(heads[1], col) + ["-" * col] + _wrap(b["text"], col)
            for k in range(max(len(left), len(right))):
                l_part = left[k] if k < len(left) else ""
                r_part = right[k] if k < len(right) else ""
                out.append(f"{l_part:<{col}} | {r_part}".rstrip())
            if (line := _verdict_line(entry)) is not None:
                out.append(line)
    out.append("")
    for line in summary_lines(result):
        out += textwrap.wrap(line, width, subsequent_indent="  ")
    return "\n".join(out)


def _wrap(text: str, width: int) -> list[str]:
    lines = []
    for paragraph in (text or "(empty answer)").splitlines() or [""]:
        lines += textwrap.wrap(paragraph, width, replace_whitespace=False, drop_whitespace=True) or [""]
    return lines


def _md_cell(text: str) -> str:
    return (text or "(empty answer)").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def to_markdown(result: dict[str, Any]) -> str:
    """The comparison as Markdown: the summary, then a two-column table per prompt and answer."""
    lines = [f"# {result['model']} vs {result['ref']}", "",
             f"Prompts from `{result['prompts']}`, {count(result['num_samples'], 'answer')} each; sampling: "
             f"{sampling_text(result)}.", ""]
    lines += [f"- {line}" for line in summary_lines(result)]
    for i, item in enumerate(result["items"], start=1):
        lines += ["", f"## {i}. {_md_cell(prompt_text(item['prompt']))}"]
        for entry in item["answers"]:
            a, b = entry["policy"], entry["reference"]
            lines += ["", f"| {_md_cell(result['model'])} ({a['tokens']} tokens) | "
                          f"{_md_cell(result['ref'])} ({b['tokens']} tokens) |", "|---|---|",
                      f"| {_md_cell(a['text'])} | {_md_cell(b['text'])} |"]
            if (line := _verdict_line(entry)) is not None:
                lines += ["", f"*{line}*"]
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def run(args: Any) -> int:
    """``dpokit compare``: the side-by-side view, and the files asked for."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {args.batch_size})")
    for flag in ("markdown", "report", "output"):  # before any model loads
        if getattr(args, flag):
            check_writable(getattr(args, flag), f"--{flag}")
    result = compare(args)
    print(side_by_side(result))
    for path, text in ((args.markdown, lambda: to_markdown(result)), (args.report, lambda: render(result)),
                       (args.output, lambda: json.dumps(result, indent=2, ensure_ascii=False) + "\n")):
        if path:
            _write(path, text())
            print(f"wrote {path}")
    return 0
