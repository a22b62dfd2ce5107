"""Reading a run's config: the field defaults, the command's built-in recipe (``dpokit sft``'s; the
demo), YAML files and flags, each layer over the one before, onto the dataclasses of ``config.py``.

jsonargparse checks each value against its field's type, builds the dataclasses (``__post_init__``)
and writes ``--help`` from the docstrings. Added here is what it lacks (ANCHORS.md): a key spelled
dotted (``train.batch_size``), by its field name when unique, or as a short flag (``--data``), ``-`` or
``_`` alike; TRL / Hugging Face names (``recipes.py``); closest-match suggestions; every unknown YAML
key in one error with its line."""

from __future__ import annotations

import argparse
import difflib
import re
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dpokit import recipes
from dpokit.config import SECTIONS, Config
from dpokit.errors import ConfigError

# Short flags (the guides' names) -> dotted keys, in the order `--help` lists them.
SHORT = {"data": "data.path", "dataset": "data.path", "model": "model.name_or_path", "weights": "model.weights",
         "output": "output.dir", "steps": "train.steps", "epochs": "train.epochs", "beta": "loss.beta",
         "lr": "train.lr", "batch_size": "train.batch_size", "grad_accum": "train.grad_accum",
         "max_length": "data.max_length", "max_prompt_length": "data.max_prompt_length",
         "precision": "model.precision", "seed": "train.seed", "logging_steps": "output.logging_steps",
         "save_steps": "output.save_steps", "eval_data": "data.eval_path", "layout": "data.layout"}
SWITCHES = ("print_config", "help", "demo")
HINTS = {f"{s}.{name}": hint for s, cls in SECTIONS.items() for name, hint in typing.get_type_hints(cls).items()}
_NAMES = [key.split(".")[1] for key in HINTS]
# Every spelling of a dpokit key (underscores) -> its dotted key; then, for suggestions, the recipe keys too.
KEYS = {**SHORT, **{k: k for k in HINTS}, **{k.split(".")[1]: k for k in HINTS if _NAMES.count(k.split(".")[1]) == 1}}
SPELLINGS = {**{n: getattr(r, "target", f"recipe.{n}") for n, r in recipes.RULES.items()}, **KEYS}


def lookup(norm: str) -> str | None:
    """The dotted key of a spelling (``recipe.<name>`` for a TRL / Hugging Face key), else None."""
    return f"recipe.{norm}" if norm in recipes.RULES else KEYS.get(norm)


def closest_name(name: str, names: Mapping[str, str], short: Iterable[str] = (), cutoff: float = 0.6) -> str | None:
    """The spelling in ``names`` ({spelling: what it sets}) an unknown ``name`` most likely meant: the one
    thing it begins among the ``short`` spellings (``batch`` -> ``batch_size``), then dpokit's keys, then
    all; else the closest (difflib). `dpokit generate` uses it too."""
    for pool in (short, KEYS, names):
        hits = sorted((n for n in pool if n in names and n.startswith(name)), key=len)
        if hits and len({names[n] for n in hits}) == 1:
            return hits[0]
    return next(iter(difflib.get_close_matches(name, list(names), n=1, cutoff=cutoff)), None)


def closest_key(norm: str, cutoff: float = 0.6) -> str | None:
    """The accepted key closest to an unknown one; under a section (``train.lern_rate``), a key of it."""
    section, dot, name = norm.partition(".")
    if not (dot and section in SECTIONS):
        return closest_name(norm, {**SPELLINGS, **{s: s for s in SECTIONS}}, SHORT, cutoff)
    choices = {n: t for n, t in SPELLINGS.items() if t.startswith(f"{section}.") and "." not in n}
    choices.update({f.name: f"{section}.{f.name}" for f in fields(SECTIONS[section])})
    return choices.get(closest_name(name, choices, SHORT, cutoff) or "")


def _normalise(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def _unknown(keys: list[str], where: str, lines: Mapping[str, int] | None = None) -> ConfigError:
    """One error naming every unknown key, each with its line (given ``lines``) and closest key."""
    lines, tail = lines or {}, " (`dpokit train --help` lists them all)"
    shown = (lambda k: "--" + _normalise(k).replace("_", "-")) if where == "the command line" else (lambda k: k)
    hints = [f"; did you mean '{shown(c)}'?" if (c := closest_key(_normalise(k))) else "" for k in keys]
    if len(keys) == 1:
        line = f", line {lines[keys[0]]}" if keys[0] in lines else ""
        return ConfigError(f"unknown key '{shown(keys[0])}' in {where}{line}{hints[0]}{tail}")
    items = [f"  {f'line {lines[k]}: ' if k in lines else ''}'{k}'{h or ' (no key is close)'}" for k, h in zip(keys, hints)]
    return ConfigError("\n".join([f"{len(keys)} unknown keys in {where}{tail}:", *items]))


def flatten_yaml(data: Any, where: str, lines: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A YAML mapping (sections and/or flat keys) -> {dotted key: value}, recipe keys converted. In a
    TRL / alignment-handbook recipe (a flat file with a recipe key that is not a dpokit key), a flat key
    not close to any key is another trainer's option: named in the warning, not an error."""
    if not isinstance(data, (dict, type(None))):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(data).__name__}")
    data, flat, unknown = data or {}, {}, []
    recipe = any(str(k) in recipes.RULES and str(k) not in KEYS for k in data) and not set(data) & set(SECTIONS)
    nested = {k for k, v in data.items() if k in SECTIONS and isinstance(v, dict)}
    items = [(f"{k}.{sub}", v) for k in nested for sub, v in data[k].items()]
    for written, value in items + [(str(k), v) for k, v in data.items() if k not in nested]:
        if (found := lookup(norm := _normalise(written))) is not None:
            flat[found] = value
        elif recipe and "." not in norm and closest_key(norm, cutoff=0.85) is None:
            flat[f"unused.{norm}"] = "not a key of dpokit or of the TRL / Hugging Face recipes it reads"
        else:
            unknown.append(written)
    if unknown:
        raise _unknown(unknown, where, lines)
    if recipe and "loss.beta" in flat:
        flat[recipes.BETA_MARK] = flat["loss.beta"]
    return recipes.convert(flat, where)


def _key_lines(text: str) -> dict[str, int]:
    """{key as written (``section.field`` under a section): line} of YAML text that parses."""
    root, lines = yaml.compose(text, Loader=yaml.SafeLoader), {}
    for key, value in root.value if isinstance(root, yaml.MappingNode) else []:
        lines.setdefault(str(key.value), key.start_mark.line + 1)
        for sub, _ in value.value if key.value in SECTIONS and isinstance(value, yaml.MappingNode) else []:
            lines.setdefault(f"{key.value}.{sub.value}", sub.start_mark.line + 1)
    return lines


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.name.lower().endswith((".jsonl", ".json", ".csv", ".parquet", ".gz")):
        raise ConfigError(f"{path} looks like a data file; pass it with --data {path} (a positional argument "
                          "is a YAML config file)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        return flatten_yaml(yaml.safe_load(text), str(path), _key_lines(text))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the config file as UTF-8") from None
    except yaml.YAMLError as e:
        where = f", line {mark.line + 1}" if (mark := getattr(e, "problem_mark", None)) else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None


def builtin(name: str) -> dict[str, Any]:
    """A built-in recipe: ``demo`` (`dpokit train --demo`) or ``sft`` (the defaults of ``dpokit sft``)."""
    text = resources.files("dpokit").joinpath(f"builtin/{name}.yaml").read_text(encoding="utf-8")
    return flatten_yaml(yaml.safe_load(text), f"the built-in {name} recipe")


def parse_cli(argv: list[str]) -> tuple[list[str], dict[str, Any], set[str]]:
    """argv -> positional args, {dotted key: value} (flag values are strings for jsonargparse; a recipe
    key's is read as YAML and converted), and the bare switches (``--print-config``, ``--demo``)."""
    positional, values, switches, i = [], {}, set(), 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        name, eq, value = arg[2:].partition("=")
        if not arg.startswith("--"):
            positional.append(arg)
            continue
        if (norm := _normalise(name)) in SWITCHES:
            switches.add(norm)
            continue
        if (key := "config" if norm == "config" else lookup(norm)) is None:
            raise _unknown([name], "the command line")
        bare = not eq and (i >= len(argv) or argv[i].startswith("--"))
        if bare and not (key.startswith("recipe.") or HINTS.get(key) in (bool, bool | None)):
            raise ConfigError(f"--{name} needs a {'path' if key == 'config' else 'value'}")
        if not eq:
            value, i = ("true", i) if bare else (argv[i], i + 1)
        if key == "config":
            positional.append(value)
        else:  # a recipe key's value is read as YAML here (its rule converts it); a field's, by jsonargparse
            try:
                values[key] = yaml.safe_load(value) if key.startswith("recipe.") else value
            except yaml.YAMLError:
                values[key] = value
    return positional, recipes.convert(values, "the command line"), switches


def _new_parser(defaults: dict[str, Any] | None = None) -> Any:
    """The jsonargparse parser of the five sections, types, defaults and help from the dataclasses
    (``defaults``: a command's own, over the fields')."""
    from jsonargparse import ArgumentParser, DefaultHelpFormatter, set_parsing_settings

    class Formatter(DefaultHelpFormatter):
        def _format_action_invocation(self, action: Any) -> str:  # every flag of a key: short ones, dotted
            short = [f"--{n.replace('_', '-')}" for n, k in SHORT.items() if k == action.dest]
            return " | ".join([*short, f"--{action.dest.replace('_', '-')}"])

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(exit_on_error=False, add_help=False, usage=argparse.SUPPRESS, formatter_class=Formatter)
    for section, cls in SECTIONS.items():
        parser.add_class_arguments(cls, section)
    for action in parser._actions:  # the "--model CONFIG" group options: a config file is positional
        action.help = argparse.SUPPRESS if action.dest in SECTIONS else action.help
    parser.set_defaults(defaults or {})
    return parser


_parser = cache(_new_parser)


def flag(key: str) -> str:
    """The shortest command-line flag of a dotted key (``loss.beta`` -> ``--beta``)."""
    return "--" + min((s for s, k in KEYS.items() if k == key), key=len).replace("_", "-")


def _words(hint: Any) -> str:
    """What a field type accepts, in words (``a number (float, e.g. 0.1) or null``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_words(a) for a in args if a is not type(None)) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    return {bool: "true or false", int: "a whole number (int, e.g. 8)", float: "a number (float, e.g. 0.1)",
            str: "a string", list: "a list (e.g. [q_proj, v_proj])", tuple: "two numbers (e.g. [0.9, 0.999])",
            dict: "a mapping (e.g. {key: value})"}.get(origin or hint, str(hint))


def build_config(flat: dict[str, Any]) -> Config:
    """{dotted key: value} -> a checked `Config`: types by jsonargparse, values by the dataclasses, the
    loss by its registry, the mixture by its reader, the optimizer's name by ``optim.py``."""
    from dpokit.data.mixture import parse_mixture
    from dpokit.losses import resolve_loss_config
    from dpokit.optim import check_optim_name

    nested: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in flat.items():
        nested[key.split(".")[0]][key.split(".", 1)[1]] = value
    try:
        namespace = _parser().parse_object(nested)
    except (argparse.ArgumentError, TypeError, ValueError) as e:
        key = found.group(1) if (found := re.search(r'Parser key "([^"]+)"', str(e))) else None
        if key not in HINTS:
            raise ConfigError(f"bad config: {str(e).strip().splitlines()[0]}") from None
        raise ConfigError(f"bad value {flat.get(key)!r} for '{key}' ({flag(key)}): expects {_words(HINTS[key])}") from None
    try:
        config = Config(**{s: part for s, part in _parser().instantiate(namespace).items() if s in SECTIONS})
        if config.data.mixture is not None:
            parse_mixture(config.data.mixture)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    config.loss = resolve_loss_config(config.loss)
    check_optim_name(config.train.optim)
    return config


def resolve(argv: list[str], command: str = "train") -> tuple[Config, set[str], dict[str, Any]]:
    """The config of ``dpokit train`` / ``sft`` / a data command (``data``: positional sources are
    ``data.path``) from argv, with (switches, info): ``demo``, ``why`` ({recipe key with no effect: why};
    ``unused``: their names), ``given`` (the keys set above the defaults). A run without data is the
    demo (no arguments, or ``--demo``) or an error."""
    positional, cli, switches = parse_cli(argv)
    demo = command != "data" and (not argv or "demo" in switches)
    layers: list[dict[str, Any]] = []
    for item in positional:
        if command != "data" or item.lower().endswith((".yaml", ".yml")):
            layers.append(load_yaml(item))
        elif any(layer.get("data.path") not in (None, item) for layer in layers):
            raise ConfigError(f"more than one data source given ({item} and another); pass one")
        else:
            layers.append({"data.path": item})
    given = [layer for layer in (*layers, cli) if layer.get("data.path") not in (None, "null", "") or
             layer.get("data.mixture")]
    if not given and not demo and command != "data":
        fix = (f"pass --data PATH (a JSONL file, a directory, a hub id or a preset such as hh-rlhf), or `dpokit "
               f"{command} --demo` for the built-in demo")
        raise ConfigError(f"{', '.join(positional)}: no training data: the config has no data key\n  fix: add "
                          "`data: {path: PAIRS.jsonl}` (or `dataset_name:` / `dataset_mixture:` in a TRL recipe), "
                          f"or {fix}" if positional else f"no training data given\n  fix: {fix}")
    base = [builtin("sft")] if command == "sft" else [builtin("demo")] if demo else []
    flat = {k: v for layer in (*base, *layers, cli) for k, v in layer.items()}
    why = {k.split(".", 1)[1]: flat.pop(k) for k in [k for k in flat if k.startswith("unused.")]}
    config = build_config(recipes.finalize(flat))
    return config, switches, {"demo": demo and not given, "unused": sorted(why), "why": why, "given": flat}


def help_text(command: str = "train") -> str:
    """``dpokit train --help`` / ``dpokit sft --help``: the short flags and TRL names, then every key by
    section with its docstring, type and the default this command really uses."""
    parser = _new_parser(builtin("sft") if command == "sft" else None)
    defaults, short = parser.get_defaults(), {}
    for name, key in SHORT.items():
        short.setdefault(key, []).append(f"--{name.replace('_', '-')}")
    trl = ", ".join(f"--{n}" for n, r in recipes.RULES.items() if callable(r) and r.__name__ != "stop")
    return "\n".join([
        f"usage: dpokit {command} [CONFIG.yaml ...] [--KEY VALUE ...] [--print-config] [--demo]", "",
        f"`dpokit {command}` alone (or with --demo) runs the built-in demo (sample pairs, tiny model); any other run",
        "needs data: --data PATH, or a data key in a config file. A key is written --section.field, by its field",
        "name alone when unique, or as a short flag; '-' or '_' alike; YAML files take the same keys.", "",
        "common flags (each is a key listed below):",
        *(f"  {' | '.join(flags):<24} {key} (default: {defaults[key]})" for key, flags in short.items()), "",
        "TRL / Hugging Face Trainer / alignment-handbook names work too, as flags and as the flat keys of a",
        "recipe file (recipe keys with no effect here are named in one warning):",
        *textwrap.wrap(trl, 100, initial_indent="  ", subsequent_indent="  "), "", parser.format_help()])
