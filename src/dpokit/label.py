"""``dpokit data label``: preference pairs from your own model's answers (on-policy data).

Each prompt gets two answers: two samples of ``--model`` (answers 0 and 1 of the prompt's seeds),
or one of ``--model`` and one of ``--model-b`` drawn with the same seed. They are shown as A and B
in an order drawn per prompt (so a model's answers are not always on the same side), and the
labeller picks the better one, a tie (or skip), or quits. With ``--judge`` a reward model or a
function picks instead, with no person: any prompt list becomes preference pairs (the iterative
DPO recipe: sample from the current model, judge, train again).

Each pick is appended to ``--output`` at once, flushed to disk, as a row ``dpokit train`` reads:
chat messages when the model's tokenizer has a chat template (training then renders the answer
under the same template it was generated with), else plain strings, the answer as generated
(``prompt + answer`` is the text the model wrote). Ties, skips, identical and empty answers go to
a second file beside it (``pairs.skipped.jsonl``), so that rerunning the same command skips every
prompt already decided and asks only the rest: an interrupted session (quit, Ctrl-C, a crash)
loses nothing and asks nothing twice. A half-written last line left by a crash is cut off.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from dpokit.errors import ConfigError
from dpokit.generate import (
    Completion,
    SamplingConfig,
    complete,
    load_lm,
    model_source,
    read_prompts,
    sample_seed,
)
from dpokit.report_html import count, prompt_text
from dpokit.writable import check_writable


class Quit(Exception):
    """The labeller quit (``q`` or the end of input)."""


KEYS = {"a": "a", "b": "b", "t": "tie", "tie": "tie", "s": "tie", "skip": "tie", "q": "quit", "quit": "quit"}


# ---- the files --------------------------------------------------------------------------------


def skipped_path(output: Path) -> Path:
    """Where ties and skips are kept: ``pairs.jsonl`` -> ``pairs.skipped.jsonl``."""
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(f"{stem}.skipped.jsonl")


def prompt_key(prompt: Any) -> str:
    """A prompt's identity across runs: its text, or a chat prompt's single user message, else its JSON."""
    if isinstance(prompt, list) and len(prompt) == 1 and prompt[0].get("role") == "user":
        prompt = prompt[0].get("content", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def repair_tail(path: Path) -> bool:
    """Cut a half-written last line (no newline at the end: a crash mid-write); True if one was cut."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    with open(path, "r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
    return True


def decided(path: Path) -> Counter:
    """How many times each prompt was decided in ``path`` (a pairs or skipped file)."""
    done: Counter = Counter()
    if not path.is_file():
        return done
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                done[prompt_key(json.loads(line)["prompt"])] += 1
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ConfigError(f"{path}, line {number}: not a row this command wrote (no JSON object with a "
                                  "'prompt')\n  fix: pass a new --output, or fix that line") from None
    return done


def append(path: Path, row: dict[str, Any]) -> None:
    """Append one row and push it to the disk before the next question."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def pair_row(prompt: Any, chosen: str, rejected: str, chat: bool, **extra: Any) -> dict[str, Any]:
    """A pair as ``dpokit train`` reads it: messages under a chat template, else plain strings."""
    if chat:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return {"prompt": messages, "chosen": [{"role": "assistant", "content": chosen.strip()}],
                "rejected": [{"role": "assistant", "content": rejected.strip()}], **extra}
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def pending(prompts: list[Any], done: Counter) -> tuple[list[Any], list[int]]:
    """The prompts not decided yet, and which time each appears in the list (a prompt listed twice
    is labelled twice; ``done`` counts the decisions already made per prompt)."""
    seen: Counter = Counter()
    todo, occurrence = [], []
    for prompt in prompts:
        key = prompt_key(prompt)
        seen[key] += 1
        if seen[key] > done[key]:
            todo.append(prompt)
            occurrence.append(seen[key] - 1)
    return todo, occurrence


def record(pick: str, prompt: Any, texts: tuple[str, str], scores: tuple[float, float] | None, labeller: str,
           chat: bool, output: Path, extra: Path) -> None:
    """Append a decision: a pick of A or B as a pair to ``output``, anything else to ``extra``."""
    info: dict[str, Any] = {"labeller": labeller}
    if pick in ("a", "b"):
        order = (0, 1) if pick == "a" else (1, 0)
        if scores is not None:
            info["scores"] = [scores[i] for i in order]  # chosen's, rejected's
        append(output, pair_row(prompt, texts[order[0]], texts[order[1]], chat, **info))
    else:
        if scores is not None:
            info["scores"] = list(scores)
        append(extra, {"prompt": prompt, "verdict": pick, "answers": [t.strip() for t in texts], **info})


# ---- answers and picks ------------------------------------------------------------------------


def two_answers(models: list[tuple[Any, Any]], prompts: list[Any], occurrence: list[int], sampling: SamplingConfig,
                seed: int, batch_size: int | None, precision: str) -> list[tuple[Completion, Completion]]:
    """Answers A and B to each prompt (the ``occurrence``-th time it appears in the list, so a repeated
    prompt gets new answers): samples 2k and 2k + 1 of one model, or sample k of each of two models;
    swapped for the prompts whose seed says so (the side a model's answer is shown on is random)."""
    if len(models) == 1:
        (model, tok), = models
        first = complete(model, tok, prompts, sampling, batch_size, seed, [2 * k for k in occurrence], precision)
        second = complete(model, tok, prompts, sampling, batch_size, seed, [2 * k + 1 for k in occurrence], precision)
    else:
        first, second = (complete(m, t, prompts, sampling, batch_size, seed, occurrence, precision) for m, t in models)
    out = []
    for prompt, k, a, b in zip(prompts, occurrence, first, second):
        out.append((b, a) if sample_seed(seed, prompt, -1 - k) & 1 else (a, b))
    return out


def ask(prompt: Any, a: Completion, b: Completion, place: str, stdin: TextIO, stdout: TextIO) -> str:
    """Show a prompt and its two answers; the pick: ``a``, ``b``, ``tie`` or ``quit`` (also at end of input)."""
    print(f"\n[{place}] Prompt:\n  {prompt_text(prompt)}", file=stdout)
    for name, c in (("A", a), ("B", b)):
        cut = ", cut at the token limit" if not c.finished else ""
        print(f"\n{name} ({c.num_tokens} tokens{cut}):\n  " + c.text.strip().replace("\n", "\n  "), file=stdout)
    while True:
        print("\nBetter answer? [a] A  [b] B  [t] tie / skip  [q] quit: ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            return "quit"
        pick = KEYS.get(line.strip().lower())
        if pick is not None:
            return pick
        print(f"  '{line.strip()}' is not a choice: type a, b, t or q", file=stdout)


def run(args: Any, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """``dpokit data label``: label until the prompts run out, the user quits or input ends."""
    from transformers.utils import logging as hf_logging

    from dpokit.judge import load_judge, verdict
    from dpokit.models import resolve_device, resolve_precision

    hf_logging.disable_progress_bar()
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.greedy)
    if sampling.is_greedy and not args.model_b:
        raise ConfigError("two answers from one model need sampling, but --greedy / --temperature 0 gives the same "
                          "answer twice\n  fix: drop --greedy (or set --temperature above 0), or pass --model-b")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {args.batch_size})")
    output = Path(args.output)
    check_writable(output)  # before any question: a pick must never be lost
    prompts = read_prompts(args.prompts)
    for name, flag in ((args.model, "--model"), (args.model_b, "--model-b")):
        if name:
            model_source(name, flag)  # a wrong path fails before any question
    extra = skipped_path(output)
    for path in (output, extra):
        if repair_tail(path):
            print(f"note: {path} ended in a half-written line (an earlier crash); it was removed", file=stdout)
    todo, occurrence = pending(prompts, decided(output) + decided(extra))
    print(f"{len(prompts)} prompts in {args.prompts}: {len(prompts) - len(todo)} already labelled, {len(todo)} to go; "
          f"pairs go to {output}, ties and skips to {extra}", file=stdout)
    if not todo:
        return 0
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision or "auto", device)
    judge = load_judge(args.judge, device, precision, args.judge_batch_size, args.trust_remote_code) \
        if args.judge else None
    models = [load_lm(args.model, device, precision, "--model", args.trust_remote_code)]
    if args.model_b:
        models.append(load_lm(args.model_b, device, precision, "--model-b", args.trust_remote_code))
    chat = bool(models[0][1].chat_template)
    labeller = judge.name if judge is not None else "human"
    counts: Counter = Counter()
    step = args.batch_size or (64 if judge is not None else 8)  # prompts answered before the next picks
    if judge is None and stdin.isatty():
        print("Pick the better answer of each pair; every pick is saved at once, q quits (rerun to continue).",
              file=stdout)
    try:
        for start in range(0, len(todo), step):
            batch = todo[start : start + step]
            pairs = two_answers(models, batch, occurrence[start : start + step], sampling, args.seed, args.batch_size,
                                precision)
            scores = None
            if judge is not None:
                scores = judge.score([p for p in batch for _ in (0, 1)], [c.text.strip() for ab in pairs for c in ab])
            for k, (prompt, (a, b)) in enumerate(zip(batch, pairs)):
                texts = (a.text, b.text)
                if not a.text.strip() or not b.text.strip() or a.text.strip() == b.text.strip():
                    pick = "empty" if not a.text.strip() or not b.text.strip() else "same"
                elif scores is not None:
                    v = verdict(scores[2 * k], scores[2 * k + 1], args.tie_margin)
                    pick = {"win": "a", "loss": "b", "tie": "tie"}[v]
                else:
                    place = f"{len(prompts) - len(todo) + start + k + 1}/{len(prompts)}"
                    pick = ask(prompt, a, b, place, stdin, stdout)
                if pick == "quit":
                    raise Quit
                pair_scores = None if scores is None else (scores[2 * k], scores[2 * k + 1])
                record(pick, prompt, texts, pair_scores, labeller, chat, output, extra)
                counts[pick in ("a", "b")] += 1
    except (Quit, KeyboardInterrupt) as stop:
        left = len(todo) - sum(counts.values())
        print(f"\n{'interrupted' if isinstance(stop, KeyboardInterrupt) else 'stopped'}: {count(counts[True], 'pair')} "
              f"and {counts[False]} ties / skips saved; {count(left, 'prompt')} left: rerun the same command to "
              "continue", file=stdout)
        return 130 if isinstance(stop, KeyboardInterrupt) else 0
    print(f"\nlabelled all {count(len(prompts), 'prompt')}: {count(counts[True], 'new pair')} in {output}, "
          f"{counts[False]} ties / skips in {extra}", file=stdout)
    return 0
