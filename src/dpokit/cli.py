"""The ``dpokit`` command.

``dpokit train`` and ``dpokit data validate | stats | prepare`` read their options through
``configure.py`` (YAML + flags); the smaller commands (``data sample``, ``data add``, ``generate``)
use argparse directly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dpokit.errors import DpokitError

SFT_HELP = """Supervised fine-tuning, the stage before DPO. Data (--data): {prompt, completion} rows,
{messages} conversations (assistant turns are trained), or preference pairs (the chosen answers).
Prompts are masked. Full fine-tuning, or --lora true / --load-in-4bit true (QLoRA). Then run
`dpokit train --model sft_checkpoints/final --data PREFERENCES`. Same keys as `dpokit train`.
"""


def cmd_train(argv: list[str], command: str = "train") -> int:
    """``dpokit train`` (DPO) and ``dpokit sft``: the same config machinery and loop, two tasks."""
    from dpokit import configure, recipes

    if any(a in ("-h", "--help") for a in argv):
        print((SFT_HELP if command == "sft" else "") + configure.help_text(command))
        return 0
    config, switches, info = configure.resolve(argv, command)
    if warning := recipes.warning(info["why"]):  # on stderr, so --print-config's YAML stays clean
        print(warning, file=sys.stderr)
    if "print_config" in switches:
        print(config.to_yaml(), end="")
        return 0
    if info["demo"]:
        what = "SFT on the chosen answers of the sample pairs" if command == "sft" else "the built-in demo"
        print(f"demo: running {what} (sample pairs, tiny model); `dpokit {command} --help` shows every option",
              flush=True)
    from transformers.utils import logging as hf_logging

    from dpokit import dist
    from dpokit.train import RunStopped, train

    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars at every save
    try:
        train(config, task="sft" if command == "sft" else "dpo", demo=info["demo"])
    except RunStopped as stop:
        if dist.is_main():
            print(f"stopped by {stop.why} after step {stop.step} of {stop.total}; checkpoint {stop.checkpoint}.\n"
                  f"Resume with:\n  {resume_command(command, argv)}", file=sys.stderr, flush=True)
        return stop.exit_code
    finally:
        dist.shutdown()  # under torchrun: all ranks leave together
    return 0


def resume_command(command: str, argv: list[str]) -> str:
    """The command line that resumes this run: its own arguments with ``--resume latest``."""
    import os
    import shlex

    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.replace("_", "-") in ("--resume", "--train.resume", "--resume-from-checkpoint"):
            skip = True
            continue
        if arg.replace("_", "-").startswith(("--resume=", "--train.resume=", "--resume-from-checkpoint=")):
            continue
        args.append(arg)
    line = shlex.join(["dpokit", command, *args, "--resume", "latest"])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        line = f"{line}   (under the same torchrun command: torchrun ... -m {line})"
    return line


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Give an OSError raised while writing ``path`` that path, if it has none (a full disk)."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def cmd_data_sample(args: argparse.Namespace) -> int:
    from dpokit.data.jsonl import write_jsonl
    from dpokit.data.samples import sample_pairs

    if args.n < 1:
        raise DpokitError(f"--n must be at least 1 (got {args.n}): the number of sample pairs to write")
    rows = sample_pairs(args.n, seed=args.seed)
    with naming(args.output):
        write_jsonl(args.output, rows)
    print(f"wrote {len(rows)} sample pairs to {args.output}")
    return 0


def cmd_data_add(args: argparse.Namespace) -> int:
    from dpokit.data.add import cmd_data_add as add

    return add(args.output)


def read_prompts(path: Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped."""
    if not path.is_file():
        raise DpokitError(f"prompts file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DpokitError(f"--prompts-file {path}, line {line}: not UTF-8 text (bytes {raw[e.start:e.start + 4]!r} "
                          "cannot be decoded); save the file as UTF-8, one prompt per line") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from transformers.utils import logging as hf_logging

    from dpokit.generate import SamplingConfig, generate, load_for_generation
    from dpokit.models import resolve_device

    hf_logging.disable_progress_bar()  # no "Loading weights" bar before the answers

    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.greedy)
    if args.batch_size < 1:
        raise DpokitError(f"--batch-size must be at least 1 (got {args.batch_size})")
    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += read_prompts(Path(args.prompts_file))
    if not prompts:
        raise DpokitError("no prompts: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    torch.manual_seed(args.seed)
    model, tokenizer = load_for_generation(args.model, resolve_device(args.device), args.trust_remote_code)
    answers = generate(model, tokenizer, prompts, sampling, args.batch_size, seed=args.seed)  # seeded per prompt
    for prompt, text in zip(prompts, answers):
        print(f"### {prompt}\n{text}\n")
    return 0


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors (a bad value, a missing option) end as every error does: `error:`
    and `fix:` lines, exit 2. Subcommands' parsers are of the same class."""

    def error(self, message: str):  # type: ignore[override]
        raise DpokitError(f"`{self.prog}`: {message}\n  fix: `{self.prog} --help` lists its options and values")


def build_parser() -> argparse.ArgumentParser:
    from dpokit import __version__
    from dpokit.eval_cli import add_compare, add_eval, add_label
    from dpokit.plot import add_parser as plot_parser

    parser = Parser(prog="dpokit", description="Align causal LMs with human preferences (DPO).",
                    epilog="--debug anywhere on the command line (or DPOKIT_DEBUG=1) adds the traceback to an error")
    parser.add_argument("--version", action="version", version=f"dpokit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train with DPO (see `dpokit train --help`)", add_help=False)
    sub.add_parser("sft", help="supervised fine-tuning before DPO (see `dpokit sft --help`)", add_help=False)
    plot_parser(sub)  # dpokit plot RUN_DIR ... (plot.py)

    data = sub.add_parser("data", help="make and check preference data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    sample = data_sub.add_parser("sample", help="write built-in sample preference pairs")
    sample.add_argument("--output", default="preference_data.jsonl", help="JSONL file to write")
    sample.add_argument("--n", type=int, default=10, help="number of pairs (default 10)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the generator")
    sample.set_defaults(func=cmd_data_sample, parser=sample)
    add = data_sub.add_parser("add", help="type pairs in (also reads a pipe); 'done' ends")
    add.add_argument("--output", default="my_prefs.jsonl", help="JSONL file to append to")
    add.set_defaults(func=cmd_data_add, parser=add)
    for name, text in (("validate", "check every row of a data source; exit 1 on bad rows"),
                       ("stats", "token lengths, truncation at --max-length, duplicates"),
                       ("prepare", "normalise (+ tokenize with --model) once into --output-dir")):
        data_sub.add_parser(name, help=f"{text} (see `dpokit data {name} --help`)", add_help=False)
    add_label(data_sub)

    gen = sub.add_parser("generate", help="generate text with a model")
    gen.add_argument("--model", "--weights", dest="model", default="dpo_checkpoints/final",
                     help="model directory (a training output) or hub id")
    gen.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    gen.add_argument("--prompts-file", "--prompts_file", help="a text file with one prompt per line")
    gen.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.7)
    gen.add_argument("--top-p", "--top_p", type=float, default=0.9)
    gen.add_argument("--top-k", "--top_k", type=int, default=50)
    gen.add_argument("--greedy", action="store_true", help="always take the most likely token")
    gen.add_argument("--batch-size", "--batch_size", type=int, default=8)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", default="auto")
    gen.add_argument("--trust-remote-code", "--trust_remote_code", action="store_true")
    gen.set_defaults(func=cmd_generate, parser=gen)
    add_eval(sub)
    add_compare(sub)
    return parser


def unknown_argument_message(extra: list[str], parser: argparse.ArgumentParser) -> str:
    """argparse's "unrecognized arguments", with the closest option (the helper `dpokit train` uses)."""
    from dpokit.configure import closest_name

    prog = parser.prog
    flag = next((a.split("=", 1)[0] for a in extra if a.startswith("-")), None)
    if flag is None:
        return f"unexpected argument '{extra[0]}' for `{prog}` (`{prog} --help` lists its options)"
    options: dict[str, str] = {}  # normalised -> as shown (the first, hyphenated spelling)
    for action in parser._actions:  # argparse has no public list of a parser's options
        for option in action.option_strings:
            options.setdefault(option.lstrip("-").replace("-", "_"), option)
    close = closest_name(flag.lstrip("-").replace("-", "_"), options)
    hint = f"; did you mean '{options[close]}'?" if close else ""
    return f"unknown option '{flag}' for `{prog}`{hint} (`{prog} --help` lists them all)"


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure ends in `error:` and `fix:` lines (``failures.py``)."""
    from dpokit.hostmem import tune

    tune()  # before torch allocates anything (`dpokit.hostmem`)
    from dpokit.failures import debug_wanted, report

    argv, debug = debug_wanted(sys.argv[1:] if argv is None else argv)
    # bitsandbytes (imported through peft in LoRA runs) warns on every CPU run that an optional
    # faster 4-bit kernel package is missing: noise for everyone not running QLoRA on a CPU.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    command = " ".join(argv[:2] if argv[:1] == ["data"] else argv[:1]).strip()
    try:
        if argv and argv[0] in ("train", "sft"):
            return cmd_train(argv[1:], argv[0])
        if len(argv) >= 2 and argv[0] == "data" and argv[1] in ("validate", "stats", "prepare"):
            from dpokit.datacmd import run as run_data_command

            return run_data_command(argv[1], argv[2:])
        args, extra = build_parser().parse_known_args(argv)
        if extra:
            raise DpokitError(unknown_argument_message(extra, args.parser))
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 (the boundary: the user sees `error:` / `fix:`, never a traceback)
        return report(e, command if not command.startswith("-") else "", debug)
