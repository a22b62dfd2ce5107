"""``dpokit data validate | stats | prepare``: check, measure and pre-tokenize preference data.

All three read their options like ``dpokit train`` (``configure.py``): a data source (or a recipe
YAML) as the positional argument, then any ``--key value`` (``--format``, ``--columns``,
``--split``, ``--model``, ``--max-length``, ``--on-bad-row``, ...).

* ``validate SOURCE``: reads every row and reports the row count, the detected format, and every
  problem by file and line (or row index), column and fix; errors give exit code 1 (unless
  ``--on-bad-row skip``), and so do a faulty file (empty, not rows of objects, corrupt) and a source
  with no pairs kept; a source that cannot be read at all (no such path, split) is exit 2; warnings
  and notes exit 0. With ``--model`` it also tokenizes, and
  reports the rows ``--max-length`` would drop.
* ``stats SOURCE``: token-length percentiles of prompt / chosen / rejected for a tokenizer
  (``--model``, default the built-in tiny one), how many pairs ``--max-length`` would truncate or
  drop, duplicates, and rows with chosen == rejected. Bad rows are counted, not fatal.
* ``prepare SOURCE --output-dir DIR``: normalises (and, with ``--model``, tokenizes) once into DIR;
  ``dpokit train --data DIR`` then reads it without re-reading or re-tokenizing the source.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from dpokit.data.pairs import PreferencePair
from dpokit.data.report import LoadReport
from dpokit.data.resolve import PREPARED_MARKER
from dpokit.errors import ConfigError, DataError

USAGE = """usage: dpokit data {validate,stats,prepare} SOURCE|RECIPE.yaml [--KEY VALUE ...]

SOURCE: a .jsonl/.json/.parquet/.csv file, a directory, a hub id, or a preset (ultrafeedback,
hh-rlhf, orca). Keys are those of `dpokit train --help`, e.g. --format, --columns '{prompt: question}',
--split, --config-name, --on-bad-row skip, --max-samples, --model (the tokenizer), --max-length,
--max-prompt-length, --num-proc; `prepare` needs --output-dir DIR."""


def _config(argv: list[str]) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """The run config for a data command: (config, the keys given, the recipe keys with no effect)."""
    from dpokit.configure import resolve

    config, _, info = resolve(argv, "data")
    if not config.data.path and not config.data.mixture:
        raise ConfigError("no data source given\n" + USAGE)
    return config, info["given"], info["why"]


def _where(sources: list[str], limit: int = 10) -> str:
    """``line 2`` / ``lines 2, 5`` / ``row indices 3, 7`` from pair sources (``file:line``, ``id#index``)."""
    numbers = [m.group(2) if m else s for s, m in ((s, re.search(r"([:#])(\d+)$", s)) for s in sources)]
    by_line = bool(sources) and re.search(r":\d+$", sources[0]) is not None
    word = ("line" if by_line else "row index") if len(numbers) == 1 else ("lines" if by_line else "row indices")
    more = f" and {len(numbers) - limit} more" if len(numbers) > limit else ""
    return f"{word} {', '.join(numbers[:limit])}{more}"


def _tokenizer(config: Any) -> Any:
    from dpokit.data.tokenize import prepare_tokenizer
    from dpokit.models import TINY, load_tokenizer
    from dpokit.tiny import build_tiny_tokenizer

    if config.model.name_or_path == TINY and config.model.weights is None:
        tokenizer = prepare_tokenizer(build_tiny_tokenizer())  # no need to build the tiny model itself
    else:
        tokenizer = prepare_tokenizer(load_tokenizer(config.model))
    if config.data.chat_template:
        tokenizer.chat_template = config.data.chat_template
    return tokenizer


def _print_reports(reports: list[tuple[LoadReport, str]], on_bad_row: str, details: int = 20) -> int:
    errors = 0
    for report, _ in reports:
        for line in report.summary(on_bad_row):
            print(line)
        bad = report.of("error")
        errors += len(bad)
        if bad and on_bad_row == "error":
            print(f"errors ({len(bad)}{', the first ' + str(details) if len(bad) > details else ''}):")
            for problem in bad[:details]:
                print("  " + problem.describe().replace("\n", "\n  "))
    return errors


# Reasons a source cannot be checked at all (exit 2, as every mistake on the command line); any other
# fault of the data, of one row or of the whole file (empty, not rows of objects, corrupt), is the
# verdict `validate` is run for: exit 1.
CANNOT_CHECK = {"missing file", "not a file", "unknown file type", "unknown split", "unknown config",
                "cannot load", "no splits", "mixture"}


def cmd_validate(argv: list[str]) -> int:
    config, given, unused = _config(argv)
    _warn_unused(unused)
    from dpokit.data.sources import read_train_eval

    try:
        train, evaluation, reports, _ = read_train_eval(config.data, config.train.seed)
    except DataError as e:
        if e.reason in CANNOT_CHECK:
            raise  # the source named cannot be read at all: a mistake on the command line (exit 2)
        print(f"error: {e}", file=sys.stderr)  # the data was read and is faulty: the check's verdict
        return 1
    errors = _print_reports(reports, config.data.on_bad_row)
    none_fit = False  # no training pair is left once tokenized: training would stop
    if "model.name_or_path" in given:
        from dpokit.data.tokenize import options, tokenize_pairs

        tokenizer = _tokenizer(config)
        for name, pairs in (("train", train), ("eval", evaluation)):
            if not pairs:
                continue
            _, stats = tokenize_pairs(pairs, tokenizer, config.data.max_length, config.data.max_prompt_length,
                                      config.data.num_proc, **options(config.data))
            print(f"{name} tokenized with {config.model.name_or_path}, max_length {config.data.max_length}: "
                  f"{stats.summary()}")
            for reason, sources in stats.dropped_sources.items():
                n = len(sources)
                print(f"  warning, dropped: {n} row{'s' if n != 1 else ''}: {reason} ({_where(sources)})")
            if advice := stats.advice(config.data.max_length, config.data.max_prompt_length):
                print(f"  {advice}")
            none_fit = none_fit or (name == "train" and not stats.kept)
    else:
        print("(pass --model NAME to also check token lengths against --max-length)")
    if errors and config.data.on_bad_row == "error":
        print(f"validate: {errors} bad row{'s' if errors != 1 else ''}; fix them, or pass --on-bad-row skip "
              "to train without them")
        return 1
    empty = [report for report, _ in reports if not report.pairs]
    if empty:
        print(f"validate: no pairs kept from {', '.join(r.source for r in empty)}; training would stop")
        return 1
    if none_fit:
        print(f"validate: no training pair is left once tokenized at max_length {config.data.max_length}; "
              "training would stop")
        return 1
    print("validate: ok")
    return 0


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0.0}
    s = sorted(values)

    def pct(q: float) -> int:  # nearest-rank percentile
        return s[max(0, math.ceil(q / 100 * len(s)) - 1)]

    return {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": s[-1], "mean": round(sum(s) / len(s), 1)}


def compute_stats(pairs: list[PreferencePair], tokenizer: Any, max_length: int,
                  max_prompt_length: int | None = None, max_completion_length: int | None = None,
                  chat_template_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Token lengths (untruncated), what ``max_length`` would do, and duplicates, for ``pairs``."""
    from dpokit.data.tokenize import TokenizeStats, encode_pair, fit_pair

    lengths: dict[str, list[int]] = {"prompt": [], "chosen": [], "rejected": []}
    fit = TokenizeStats()
    for pair in pairs:
        prompt, chosen, rejected = encode_pair(pair, tokenizer, chat_template_kwargs)
        lengths["prompt"].append(len(prompt))
        lengths["chosen"].append(len(chosen))
        lengths["rejected"].append(len(rejected))
        fit_pair(prompt, chosen, rejected, max_length, max_prompt_length, fit, pair.source, max_completion_length)
    keys = [json.dumps([p.prompt, p.chosen, p.rejected, p.system], sort_keys=True) for p in pairs]
    prompts = [json.dumps([p.prompt, p.system], sort_keys=True) for p in pairs]
    longest = [p + max(c, r) for p, c, r in zip(lengths["prompt"], lengths["chosen"], lengths["rejected"])]
    return {
        "pairs": len(pairs),
        "tokens": {k: _percentiles(v) for k, v in lengths.items()} | {"longer sequence": _percentiles(longest)},
        "max_length": max_length,
        "max_prompt_length": max_prompt_length,
        "would_drop": sum(fit.dropped.values()),
        "would_drop_by_reason": dict(fit.dropped),
        "would_truncate_completion": fit.truncated_completion,
        "would_truncate_prompt": fit.truncated_prompt,
        "duplicate_pairs": len(keys) - len(set(keys)),
        "repeated_prompts": len(prompts) - len(set(prompts)),
    }


def cmd_stats(argv: list[str]) -> int:
    config, _, unused = _config(argv)
    _warn_unused(unused)
    from dpokit.data.sources import read_train_eval

    data = replace(config.data, on_bad_row="skip")
    train, _, reports, _ = read_train_eval(data, config.train.seed)
    _print_reports(reports, "skip")
    same = sum(r.counts("error").get("chosen == rejected", 0) for r, _ in reports)
    tokenizer = _tokenizer(config)
    from dpokit.data.tokenize import DROP_LONG_PROMPT, DROP_SAME_AFTER_CUT, long_prompt_advice, options

    stats = compute_stats(train, tokenizer, config.data.max_length, config.data.max_prompt_length,
                          **options(config.data))
    chat = "its chat template" if tokenizer.chat_template else "no chat template (raw text; fallback template for chat data)"
    print(f"tokenizer: {config.model.name_or_path}, {chat}")
    print(f"{'tokens':<28}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{'mean':>10}")
    for name, row in stats["tokens"].items():
        print(f"{name:<28}{row['p50']:>8}{row['p90']:>8}{row['p99']:>8}{row['max']:>8}{row['mean']:>10}")
    limit = f"max_length {stats['max_length']}" + (
        f", max_prompt_length {stats['max_prompt_length']}" if stats["max_prompt_length"] else "")
    reasons = ", ".join(f"{n} {reason}" for reason, n in stats["would_drop_by_reason"].items())
    print(f"{limit}: {stats['would_drop']} pairs would be dropped{f' ({reasons})' if reasons else ''}, "
          f"{stats['would_truncate_completion']} would have completions truncated, "
          f"{stats['would_truncate_prompt']} prompts truncated")
    if advice := long_prompt_advice(stats["would_drop_by_reason"].get(DROP_LONG_PROMPT, 0), config.data.max_length,
                                    config.data.max_prompt_length):
        print(f"  {advice}")
    print(f"duplicates: {stats['duplicate_pairs']} pairs repeat an earlier pair; "
          f"{stats['repeated_prompts']} prompts repeat an earlier prompt")
    cut = stats["would_drop_by_reason"].get(DROP_SAME_AFTER_CUT, 0)
    print(f"chosen == rejected: {same} rows; {cut} more pair{'s' if cut != 1 else ''} once truncated to max_length "
          f"{config.data.max_length}"
          + (" (dropped: they part only past the cut)" if cut else ""))
    return 0


def cmd_prepare(argv: list[str]) -> int:
    config, given, unused = _config(argv)
    _warn_unused(unused)
    if "output.dir" not in given:
        raise ConfigError("dpokit data prepare needs --output-dir DIR (where the prepared data goes)")
    from dpokit.data.sources import load_train_eval

    out = Path(config.output.dir)
    train, evaluation = load_train_eval(config.data, config.train.seed, log=print)
    created = not out.exists()
    parts = {"train.jsonl": train, "eval.jsonl": evaluation}
    try:
        info = _write_prepared(out, parts, config, "model.name_or_path" in given)
    except BaseException as e:  # a full disk, Ctrl-C: the previous prepared data stays as it was
        for name in [*parts, PREPARED_MARKER]:
            with contextlib.suppress(OSError):  # (DIR may be a file: the error below says so)
                (out / f"{name}.tmp").unlink(missing_ok=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(out)
        raise
    (out / PREPARED_MARKER).unlink(missing_ok=True)  # the marker goes last: never beside half-moved files
    for name, pairs in parts.items():
        if pairs:
            os.replace(out / f"{name}.tmp", out / name)
        else:
            (out / name).unlink(missing_ok=True)
    os.replace(out / f"{PREPARED_MARKER}.tmp", out / PREPARED_MARKER)
    print(f"prepared {_prepared(len(train), len(evaluation), info['tokenized'])} in {out}; "
          f"train on them with `dpokit train --data {out}`")
    return 0


def _write_prepared(out: Path, parts: dict[str, list[PreferencePair]], config: Any, tokenize: bool) -> dict[str, Any]:
    """Write the pairs (``NAME.tmp``), their tokenized entries and the marker (``.tmp``) into ``out``; the
    caller moves them into place once all are written."""
    from dpokit.data.cache import tokenize_cached
    from dpokit.data.jsonl import write_jsonl
    from dpokit.data.tokenize import options

    out.mkdir(parents=True, exist_ok=True)
    for name, pairs in parts.items():
        if pairs:
            write_jsonl(out / f"{name}.tmp", [p.to_dict() for p in pairs])
    train, evaluation = parts["train.jsonl"], parts["eval.jsonl"]
    info: dict[str, Any] = {"dpokit_prepared": 1, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "source": config.data.path or "mixture", "train_pairs": len(train),
                            "eval_pairs": len(evaluation), "data": _jsonable(config.data), "tokenized": []}
    if tokenize:
        tokenizer = _tokenizer(config)
        for name, pairs in (("train", train), ("eval", evaluation)):
            if not pairs:
                continue
            _, stats, key = tokenize_cached(pairs, tokenizer, config.data.max_length, config.data.max_prompt_length,
                                            config.data.num_proc, config.data.tokenized_cache,
                                            save_to=out / "tokenized", log=print, **options(config.data))
            print(f"{name}: {stats.summary()}")
            if advice := stats.advice(config.data.max_length, config.data.max_prompt_length):
                print(f"  {advice}")
            info["tokenized"].append({"part": name, "model": config.model.name_or_path, "key": key,
                                      "max_length": config.data.max_length,
                                      "max_prompt_length": config.data.max_prompt_length,
                                      "pairs": len(pairs), "kept": stats.kept})
    (out / f"{PREPARED_MARKER}.tmp").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
    return info


def _prepared(train: int, evaluation: int, tokenized: list[dict[str, Any]]) -> str:
    """``2308 train / 0 eval pairs, tokenized with max_length 256: 1574 train pairs kept (734 dropped)``:
    the pairs that survive tokenization, not only those read."""
    text = f"{train} train / {evaluation} eval pairs"
    if not tokenized:
        return text + " (not tokenized: pass --model to see how many fit --max-length)"
    kept = ", ".join(f"{t['kept']} {t['part']} pairs kept" + (f" ({t['pairs'] - t['kept']} dropped)"
                                                              if t["kept"] < t["pairs"] else "") for t in tokenized)
    return f"{text}, tokenized with max_length {tokenized[0]['max_length']}: {kept}"


def _jsonable(obj: Any) -> Any:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(obj), default=str))


def _warn_unused(why: dict[str, str]) -> None:
    import sys

    from dpokit.recipes import warning as unused_warning

    if warning := unused_warning(why):
        print(warning, file=sys.stderr)


COMMANDS = {"validate": cmd_validate, "stats": cmd_stats, "prepare": cmd_prepare}


def run(command: str, argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    return COMMANDS[command](argv)
