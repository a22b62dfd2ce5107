"""Reading a run's config: YAML files and flags onto the dataclasses of ``config.py``.

Layers, each over the one before: the field defaults, the command's built-in recipe (``dpokit sft``'s
defaults; the demo), YAML files, flags. jsonargparse checks every value against its field's type,
builds the dataclasses (their ``__post_init__`` checks) and writes ``--help`` from the field
docstrings. This module adds what it lacks (ANCHORS.md): a key written three ways, in YAML or as a
flag, hyphens or underscores alike (dotted ``train.batch_size``, a field's own name when unique,
``warmup_ratio``, a short flag such as ``--data``), TRL / Hugging Face names (``recipes.py``),
closest-match suggestions, and every unknown YAML key in one error with its line.
"""

from __future__ import annotations

import argparse
import difflib
import re
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

# Short flags (the guides' names), in the order `--help` lists them -> dotted keys.
SHORT = {"data": "data.path", "dataset": "data.path", "model": "model.name_or_path", "weights": "model.weights",
         "output": "output.dir", "steps": "train.steps", "epochs": "train.epochs", "beta": "loss.beta",
         "lr": "train.lr", "batch_size": "train.batch_size", "grad_accum": "train.grad_accum",
         "max_length": "data.max_length", "max_prompt_length": "data.max_prompt_length",
         "precision": "model.precision", "seed": "train.seed", "logging_steps": "output.logging_steps",
         "save_steps": "output.save_steps", "eval_data": "data.eval_path", "layout": "data.layout"}
SWITCHES = ("print_config", "help", "demo")
HINTS = {f"{s}.{name}": hint for s, cls in SECTIONS.items() for name, hint in typing.get_type_hints(cls).items()}


def _key_table() -> dict[str, str]:
    """Every spelling of a dpokit key (underscores) -> its dotted key: dotted, a field name unique
    across sections, a short flag."""
    owners: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            owners.setdefault(f.name, []).append(section)
    table = {key: key for key in HINTS}
    table.update({name: f"{sections[0]}.{name}" for name, sections in owners.items() if len(sections) == 1})
    return {**table, **SHORT}


KEYS = _key_table()
# Spellings -> what they set, for suggestions: dpokit's keys, then the recipe keys (their target, if one).
SPELLINGS = {**{n: getattr(r, "target", f"recipe.{n}") for n, r in recipes.RULES.items()}, **KEYS}


def lookup(norm: str) -> str | None:
    """The dotted key of a spelling (``recipe.<name>`` for a TRL / Hugging Face key), else None."""
    if norm in recipes.RULES and "." not in norm:
        return f"recipe.{norm}"
    return KEYS.get(norm)


def closest_name(name: str, names: Mapping[str, str], short: Iterable[str] = (), cutoff: float = 0.6) -> str | None:
    """The spelling in ``names`` ({spelling: what it sets}) that an unknown ``name`` most likely meant:
    the one thing ``name`` begins among the ``short`` spellings (``batch`` -> ``batch_size``), then among
    dpokit's keys, then all; else the closest spelling (difflib). `dpokit generate` uses it too."""
    for pool in (short, KEYS, names):
        hits = sorted((n for n in pool if n in names and n.startswith(name)), key=len)
        if hits and len({names[n] for n in hits}) == 1:
            return hits[0]
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=cutoff)
    return close[0] if close else None


def closest_key(norm: str, cutoff: float = 0.6) -> str | None:
    """The accepted key closest to an unknown one; under a section (``train.lern_rate``), a key of
    that section, shown dotted (``train.lr``)."""
    section, dot, name = norm.partition(".")
    if dot and section in SECTIONS:
        choices = {n: t for n, t in SPELLINGS.items() if t.startswith(f"{section}.") and "." not in n}
        choices.update({f.name: f"{section}.{f.name}" for f in fields(SECTIONS[section])})
        close = closest_name(name, choices, SHORT, cutoff)
        return choices[close] if close else None
    return closest_name(norm, {**SPELLINGS, **{s: s for s in SECTIONS}}, SHORT, cutoff)


def _normalise(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def unknown_key(key: str, where: str) -> ConfigError:
    norm = _normalise(key)
    close = closest_key(norm)
    cli = where == "the command line"
    hint = f"; did you mean '{'--' + close.replace('_', '-') if cli else close}'?" if close else ""
    shown = f"--{norm.replace('_', '-')}" if cli else key
    return ConfigError(f"unknown key '{shown}' in {where}{hint} (`dpokit train --help` lists them all)")


# ---- YAML ---------------------------------------------------------------------------------------


def is_recipe(data: Mapping[str, Any]) -> bool:
    """A flat mapping written for TRL / alignment-handbook (a recipe key that is not a dpokit key)."""
    return any(str(k) in recipes.RULES and str(k) not in KEYS for k in data) and not any(k in SECTIONS for k in data)


def flatten_yaml(data: Any, where: str, lines: dict[str, int] | None = None) -> dict[str, Any]:
    """A YAML mapping (sections and/or flat keys) -> {dotted key: value}, recipe keys converted.

    Every unknown key is gathered into one ConfigError, each with its closest key and (given
    ``lines``, {key as written: line}) its line. In a TRL / alignment-handbook recipe a flat key not
    close to any key is another trainer's option: unused, named in the warning, not an error."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(data).__name__}")
    lines, recipe = lines or {}, is_recipe(data)
    flat: dict[str, Any] = {}
    unknown: list[tuple[str, str | None]] = []  # (key as written, closest accepted key)
    items = [(f"{k}.{sub}", v) for k, section in data.items() if k in SECTIONS and isinstance(section, dict)
             for sub, v in section.items()]
    for written, value in items + [(str(k), v) for k, v in data.items() if not (k in SECTIONS and isinstance(v, dict))]:
        norm = _normalise(written)
        if (found := lookup(norm)) is not None:
            flat[found] = value
        elif recipe and "." not in norm and closest_key(norm, cutoff=0.85) is None:
            flat[f"unused.{norm}"] = "not a key of dpokit or of the TRL / Hugging Face recipes it reads"
        else:
            unknown.append((written, closest_key(norm)))
    if unknown:
        raise ConfigError(_unknown_keys_message(unknown, where, lines))
    if recipe and "loss.beta" in flat:
        flat[recipes.BETA_MARK] = flat["loss.beta"]
    return recipes.convert(flat, where)


def _unknown_keys_message(unknown: list[tuple[str, str | None]], where: str, lines: dict[str, int]) -> str:
    if len(unknown) == 1:
        key, close = unknown[0]
        line = f", line {lines[key]}" if key in lines else ""
        hint = f"; did you mean '{close}'?" if close else ""
        return f"unknown key '{key}' in {where}{line}{hint} (`dpokit train --help` lists them all)"
    items = [f"  {f'line {lines[k]}: ' if k in lines else ''}'{k}'" + (f"; did you mean '{c}'?" if c else
                                                                        " (no key is close)") for k, c in unknown]
    return "\n".join([f"{len(unknown)} unknown keys in {where} (`dpokit train --help` lists them all):", *items])


def _key_lines(text: str) -> dict[str, int]:
    """{key as written (``section.field`` when nested under a section): line} of a YAML mapping."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    for key, value in root.value if isinstance(root, yaml.MappingNode) else []:
        lines.setdefault(str(key.value), key.start_mark.line + 1)
        if key.value in SECTIONS and isinstance(value, yaml.MappingNode):
            for sub, _ in value.value:
                lines.setdefault(f"{key.value}.{sub.value}", sub.start_mark.line + 1)
    return lines


DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".gz")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.name.lower().endswith(DATA_SUFFIXES):
        raise ConfigError(f"{path} looks like a data file; pass it with --data {path} (a positional argument "
                          "is a YAML config file)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the config file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return flatten_yaml(data, str(path), _key_lines(text))


def builtin(name: str) -> dict[str, Any]:
    """A built-in recipe (``builtin/*.yaml``): ``demo`` (`dpokit train --demo`) or ``sft`` (the
    defaults of ``dpokit sft``)."""
    text = resources.files("dpokit").joinpath(f"builtin/{name}.yaml").read_text(encoding="utf-8")
    return flatten_yaml(yaml.safe_load(text), f"the built-in {name} recipe")


# ---- flags --------------------------------------------------------------------------------------


def _is_bool(key: str) -> bool:
    return key.startswith("recipe.") or HINTS.get(key) in (bool, bool | None)


def parse_cli(argv: list[str]) -> tuple[list[str], dict[str, Any], set[str]]:
    """argv -> positional args, {dotted key: value} (strings; recipe keys read as YAML and converted),
    and the bare switches (``--print-config``, ``--help``, ``--demo``)."""
    positional: list[str] = []
    values: dict[str, Any] = {}
    switches: set[str] = set()
    i = 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        if not arg.startswith("--"):
            positional.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        norm = _normalise(name)
        if norm in SWITCHES:
            switches.add(norm)
            continue
        if norm == "config":
            if not eq:
                if i >= len(argv):
                    raise ConfigError("--config needs a path")
                value, i = argv[i], i + 1
            positional.append(value)
            continue
        if (key := lookup(norm)) is None:
            raise unknown_key(name, "the command line")
        if not eq:
            if _is_bool(key) and (i >= len(argv) or argv[i].startswith("--")):
                value = "true"
            elif i >= len(argv):
                raise ConfigError(f"--{name} needs a value")
            else:
                value, i = argv[i], i + 1
        values[key] = _yaml_value(value) if key.startswith("recipe.") else value
    return positional, recipes.convert(values, "the command line"), switches


def _yaml_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


# ---- checking and building ------------------------------------------------------------------------


def _new_parser(defaults: dict[str, Any] | None = None) -> Any:
    """The jsonargparse parser of the five sections: types, defaults and help from the dataclasses
    (``defaults``: a command's own, over the fields')."""
    from jsonargparse import ArgumentParser, DefaultHelpFormatter, set_parsing_settings

    class Formatter(DefaultHelpFormatter):
        def _format_action_invocation(self, action: Any) -> str:  # every flag of a key: short, then dotted
            if action.dest not in HINTS:
                return super()._format_action_invocation(action)
            short = [f"--{n.replace('_', '-')}" for n, k in SHORT.items() if k == action.dest]
            return " | ".join([*short, f"--{action.dest.replace('_', '-')}"])

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(exit_on_error=False, add_help=False, usage=argparse.SUPPRESS, formatter_class=Formatter)
    for section, cls in SECTIONS.items():
        parser.add_class_arguments(cls, section)
    for action in parser._actions:  # the "--model CONFIG" group options: a config is a positional argument
        if action.dest in SECTIONS:
            action.help = argparse.SUPPRESS
    parser.set_defaults(defaults or {})
    return parser


_parser = cache(_new_parser)


def flag(key: str) -> str:
    """The shortest command-line flag of a dotted key (``loss.beta`` -> ``--beta``)."""
    name = key.split(".", 1)[-1]
    short = next((s for s, k in SHORT.items() if k == key), None)
    return f"--{(short or (name if KEYS.get(name) == key else key)).replace('_', '-')}"


def _words(hint: Any) -> str:
    """What a field type accepts, in words (``a number (float, e.g. 0.1) or null``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = [_words(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    simple = {bool: "true or false", int: "a whole number (int, e.g. 8)", float: "a number (float, e.g. 0.1)",
              str: "a string", list: "a list (e.g. [q_proj, v_proj])", tuple: "two numbers (e.g. [0.9, 0.999])",
              dict: "a mapping (e.g. {key: value})"}
    return simple.get(origin or hint, str(hint))


def _type_error(message: str, flat: dict[str, Any]) -> ConfigError:
    found = re.search(r'Parser key "([^"]+)"', message)
    key = found.group(1) if found else "?"
    if key not in HINTS:
        return ConfigError(f"bad config: {message.strip().splitlines()[0]}")
    return ConfigError(f"bad value {flat.get(key, '?')!r} for '{key}' ({flag(key)}): expects {_words(HINTS[key])}")


def build_config(flat: dict[str, Any]) -> Config:
    """{dotted key: value} -> a checked `Config`: types by jsonargparse, values by the dataclasses, the
    loss by its registry, the mixture by its reader, the optimizer's name by ``optim.py``."""
    from dpokit.data.mixture import parse_mixture
    from dpokit.losses import resolve_loss_config
    from dpokit.optim import check_optim_name

    parser = _parser()
    nested: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        nested[section][name] = value
    try:
        namespace = parser.parse_object(nested)
    except (argparse.ArgumentError, TypeError, ValueError) as e:
        raise _type_error(str(e), flat) from None
    try:
        parts = parser.instantiate(namespace)
        config = Config(**{s: parts[s] for s in SECTIONS})
        if config.data.mixture is not None:
            parse_mixture(config.data.mixture)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    config.loss = resolve_loss_config(config.loss)
    check_optim_name(config.train.optim)
    return config


def _has_data(layer: dict[str, Any]) -> bool:
    return layer.get("data.path") not in (None, "null", "None", "") or bool(layer.get("data.mixture"))


def _no_data(files: list[str], command: str) -> ConfigError:
    fix = (f"--data PATH (a JSONL file, a directory, a hub id or a preset such as hh-rlhf), or `dpokit {command} "
           "--demo` for the built-in demo")
    if files:
        return ConfigError(f"{', '.join(files)}: no training data: the config has no data key\n  fix: add "
                           "`data: {path: PAIRS.jsonl}` (or `dataset_name:` / `dataset_mixture:` in a TRL recipe), "
                           f"or pass {fix}")
    return ConfigError(f"no training data given\n  fix: pass {fix}")


def resolve(argv: list[str], command: str = "train") -> tuple[Config, set[str], dict[str, Any]]:
    """The config of ``dpokit train`` / ``dpokit sft`` (its recipe under the rest) / a data command
    (``data``: positional sources are ``data.path``) from argv. Returns (config, switches, info):
    ``info["demo"]``, ``info["unused"]`` (recipe keys with no effect; ``info["why"]`` says why) and
    ``info["given"]`` (every key set above the defaults)."""
    positional, cli, switches = parse_cli(argv)
    demo = command != "data" and (not argv or "demo" in switches)
    base = [builtin("sft")] if command == "sft" else [builtin("demo")] if demo else []
    layers: list[dict[str, Any]] = []
    for item in positional:
        if command == "data" and not item.lower().endswith((".yaml", ".yml")):
            if any(_has_data(layer) and layer.get("data.path") != item for layer in layers):
                raise ConfigError(f"more than one data source given ({item} and another); pass one")
            layers.append({"data.path": item})
        else:
            layers.append(load_yaml(item))
    layers.append(cli)
    given = not any(_has_data(layer) for layer in layers)
    if given and not demo and command != "data":
        raise _no_data([p for p in positional], command)
    flat: dict[str, Any] = {}
    for layer in base + layers:
        flat.update(layer)
    why = {k.split(".", 1)[1]: flat.pop(k) for k in [k for k in flat if k.startswith("unused.")]}
    flat = recipes.finalize(flat)
    config = build_config(flat)
    return config, switches, {"demo": demo and given, "unused": sorted(why), "why": why, "given": flat}


def unused_warning(why: dict[str, str]) -> str | None:
    """The one warning that names every recipe key with no effect here, grouped by why."""
    if not why:
        return None
    groups: dict[str, list[str]] = {}
    for key in sorted(why):
        groups.setdefault(why[key], []).append(key)
    lines = [f"  {', '.join(keys)}: {reason}" for reason, keys in groups.items()]
    return "\n".join([f"warning: {len(why)} recipe key{'s have' if len(why) > 1 else ' has'} no effect in dpokit:",
                      *lines])


def help_text(command: str = "train") -> str:
    """``dpokit train --help`` / ``dpokit sft --help``: the short flags and TRL names, then every key by
    section with its docstring, type and the default this command really uses."""
    import textwrap

    parser = _new_parser(builtin("sft") if command == "sft" else None)
    defaults = parser.get_defaults()
    short: dict[str, list[str]] = {}
    for name, key in SHORT.items():
        short.setdefault(key, []).append(f"--{name.replace('_', '-')}")
    trl = ", ".join(f"--{n}" for n, r in recipes.RULES.items() if hasattr(r, "target"))
    lines = [
        f"usage: dpokit {command} [CONFIG.yaml ...] [--KEY VALUE ...] [--print-config] [--demo]",
        "",
        f"`dpokit {command}` alone (or with --demo) runs the built-in demo (sample pairs, tiny model); any other",
        "run needs data: --data PATH, or a data key in a config file. A key is written --section.field, or",
        "by its field name alone when unique, or as a short flag; '-' or '_' alike; YAML files take the same keys.",
        "",
        "common flags (each is a key listed below):",
        *(f"  {' | '.join(flags):<24} {key} (default: {defaults[key]})" for key, flags in short.items()),
        "",
        "TRL / Hugging Face Trainer / alignment-handbook names work too, as flags and as the flat keys of a",
        "recipe file (recipe keys with no effect here are named in one warning):",
        *textwrap.wrap(trl, 100, initial_indent="  ", subsequent_indent="  "),
        "",
    ]
    return "\n".join(lines) + parser.format_help()
