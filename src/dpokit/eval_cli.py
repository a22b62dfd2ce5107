"""The options of ``dpokit eval``, ``dpokit compare`` and ``dpokit data label`` (argparse).

Only argparse here, so that building the ``dpokit`` parser imports no torch; each command's code
is imported when it runs (``evaluate.py``, ``compare.py``, ``label.py``).
"""

from __future__ import annotations

import argparse
from importlib import import_module
from typing import Any

EVAL_HELP = ("preference accuracy, margins, rewards and log-probs on held-out pairs, by the training "
             "code (settings from the model's saved config)")
COMPARE_HELP = "two models' answers side by side, a judge's win rate, the KL to the reference, an HTML report"
LABEL_HELP = "make preference pairs from a model's own answers: you pick the better one (or a judge does)"


def _runner(module: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        return import_module(module).run(args)

    return run


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None,
                   help="mixed precision (default: the run's, else auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--trust-remote-code", "--trust_remote_code", action="store_true",
                   help="run model code shipped with a hub repository")


def _sampling_flags(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=temperature, help="0 is greedy decoding")
    p.add_argument("--top-p", "--top_p", type=float, default=0.9 if temperature != 1.0 else 1.0)
    p.add_argument("--top-k", "--top_k", type=int, default=50 if temperature != 1.0 else 0)
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--seed", type=int, default=0, help="sampling seed; each prompt's answers are seeded by it")
    p.add_argument("--batch-size", "--batch_size", type=int, default=None,
                   help="prompts per generation batch (default: 8 on CPU, as many as fit on a GPU)")
    p.add_argument("--judge", help="a reward model (directory or hub id of a sequence classifier with one "
                   "output) or a Python function module:function / file.py:function of (prompt, answer)")
    p.add_argument("--judge-batch-size", "--judge_batch_size", type=int, default=8)


def add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help=EVAL_HELP, description=EVAL_HELP)
    p.add_argument("--model", required=True, help="the model to evaluate (a training output, e.g. OUT/final)")
    p.add_argument("--ref", help="the reference model (default: the model the run started from); none: "
                   "reference log-probs of 0")
    p.add_argument("--data", required=True, help="preference pairs: any source `dpokit train` reads")
    p.add_argument("--split", help="split of a hub data set or directory (a preset's default: its eval split)")
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--loss-type", "--loss_type", help="default: the run's")
    p.add_argument("--beta", type=float, help="default: the run's (at its last step)")
    p.add_argument("--batch-size", "--batch_size", type=int, help="pairs per batch (default: the run's)")
    p.add_argument("--max-length", "--max_length", type=int, help="default: the run's")
    p.add_argument("--max-prompt-length", "--max_prompt_length", type=int, help="default: the run's")
    p.add_argument("--layout", choices=("padded", "packed", "prefix"), help="default: the run's")
    p.add_argument("--max-samples", "--max_samples", type=int, help="evaluate only the first N pairs")
    p.add_argument("--on-bad-row", "--on_bad_row", choices=("error", "skip"), help="default: the run's")
    p.add_argument("--buckets", type=int, default=4, help="length buckets of the breakdown (default 4)")
    _model_flags(p)
    p.set_defaults(func=_runner("dpokit.evaluate"), parser=p)


def add_compare(sub: Any) -> None:
    p = sub.add_parser("compare", help=COMPARE_HELP, description=COMPARE_HELP)
    p.add_argument("--model", required=True, help="the aligned model (e.g. OUT/final)")
    p.add_argument("--ref", required=True, help="the model to compare with (e.g. the SFT model it started from)")
    p.add_argument("--prompts", required=True, help="prompts: a text file (one per line) or JSONL with 'prompt'")
    p.add_argument("--num-samples", "--num_samples", type=int, default=1, help="answers per prompt and model")
    p.add_argument("--kl-samples", "--kl_samples", type=int, default=None,
                   help="the policy's own samples per prompt for the KL estimate (default: --num-samples; 0: no KL)")
    p.add_argument("--report", help="write a self-contained HTML report here")
    p.add_argument("--markdown", help="write the comparison as Markdown here")
    p.add_argument("--output", help="write every answer, score and summary as JSON here")
    p.add_argument("--tie-margin", "--tie_margin", type=float, default=0.0,
                   help="judge scores closer than this are a tie (default 0: only equal scores)")
    _sampling_flags(p, temperature=0.7)
    _model_flags(p)
    p.set_defaults(func=_runner("dpokit.compare"), parser=p)


def add_label(data_sub: Any) -> None:
    p = data_sub.add_parser("label", help=LABEL_HELP, description=LABEL_HELP)
    p.add_argument("--model", required=True, help="the model whose answers are labelled")
    p.add_argument("--model-b", "--model_b", help="a second model for answer B (default: a second sample of --model)")
    p.add_argument("--prompts", required=True, help="prompts: a text file (one per line) or JSONL with 'prompt'")
    p.add_argument("--output", required=True, help="JSONL file the pairs are appended to (rerun it to continue)")
    p.add_argument("--tie-margin", "--tie_margin", type=float, default=0.0,
                   help="with --judge: scores closer than this are a tie, not a pair")
    _sampling_flags(p, temperature=1.0)
    _model_flags(p)
    p.set_defaults(func=_runner("dpokit.label"), parser=p)
