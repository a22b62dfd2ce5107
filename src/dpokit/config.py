"""Configuration: one typed dataclass per concern, a docstring per field, one default each.

A run's config is built in layers: the field defaults, then (when neither a config file nor
``--data`` is given) the built-in demo recipe, then a YAML file, then command-line flags.
`jsonargparse` checks and converts every value against the field types; a thin layer here gives
what it lacks (ANCHORS.md): short flags, hyphens or underscores alike, flat YAML keys, and
"did you mean" suggestions for unknown keys.

Keys can be written three ways, in YAML or on the command line:

* dotted, by section: ``train.batch_size`` / ``--train.batch-size``;
* a field's own name when it is unique across sections: ``warmup_ratio`` / ``--warmup-ratio``;
* a short alias (`ALIASES`): ``--data``, ``--model``, ``--output``, ``--batch-size``, ...
"""

from __future__ import annotations

import ast
import difflib
import inspect
import textwrap
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from dpokit.errors import ConfigError


@dataclass
class ModelConfig:
    """The policy model, its reference, and how they run."""

    name_or_path: str = "tiny"
    """Hub id or local directory of a causal LM (``AutoModelForCausalLM``); ``tiny`` builds the
    built-in tiny model locally (no network)."""
    weights: str | None = None
    """Start from an earlier dpokit output (a directory such as ``dpo_helpful/final``) instead of
    the weights of ``name_or_path``: sequential multi-objective DPO. The reference is this start."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of ``name_or_path``."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub repository. Off unless you trust the repository."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """``bf16`` / ``fp16``: mixed precision (autocast) with fp32 master weights. ``auto`` picks bf16
    where the hardware runs it fast (CUDA with bf16; a CPU with AVX-512 BF16 or AMX), else fp32."""
    attn_implementation: str | None = None
    """Attention kernel passed to transformers (``sdpa``, ``eager``, ``flash_attention_2``); None
    keeps the library default."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""

    def __post_init__(self) -> None:
        if not self.name_or_path:
            raise ValueError("model.name_or_path must not be empty")


@dataclass
class DataConfig:
    """Where preference pairs come from and how they are tokenized and batched."""

    path: str | None = None
    """JSONL file of ``{prompt, chosen, rejected}`` rows. None: the built-in sample pairs."""
    eval_path: str | None = None
    """JSONL file of evaluation pairs. Evaluation runs only when eval data is given."""
    eval_fraction: float = 0.0
    """Hold out this fraction of the training pairs (after shuffling with the seed) for evaluation."""
    sample_size: int = 200
    """How many built-in sample pairs to generate when ``path`` is None."""
    max_samples: int | None = None
    """Use at most this many training pairs (for smoke runs)."""
    max_length: int = 1024
    """Longest prompt + completion in tokens; longer completions are cut, and a pair whose prompt
    alone reaches it is dropped."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens; longer prompts keep their last tokens. None: no separate limit."""
    chat_template: str | None = None
    """A Jinja chat template to use instead of the tokenizer's (conversational data only)."""
    layout: Literal["padded"] = "padded"
    """How pairs are laid out in a batch (see ``data/collate.py``)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("data.eval_fraction must be in [0, 1)")
        if self.max_length < 2:
            raise ValueError("data.max_length must be at least 2")
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ValueError("data.max_prompt_length must be smaller than data.max_length")
        if self.sample_size < 1:
            raise ValueError("data.sample_size must be at least 1")


@dataclass
class LossConfig:
    """The preference objective."""

    loss_type: str = "sigmoid"
    """Registered loss name (``dpokit.losses.LOSSES``): ``sigmoid`` is DPO."""
    beta: float = 0.1
    """Strength of the KL penalty toward the reference: higher keeps the policy closer to it.
    0.1 is the usual start; 0.01-0.5 is the common range."""
    label_smoothing: float = 0.0
    """Assumed fraction of flipped labels (cDPO); 0 is plain DPO."""

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError("loss.beta must be positive")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError("loss.label_smoothing must be in [0, 0.5)")


@dataclass
class TrainConfig:
    """The optimisation loop."""

    steps: int | None = None
    """Optimizer steps to run; beyond one pass the data is cycled, reshuffled each epoch. None: use
    ``epochs``."""
    epochs: float | None = None
    """Passes over the training pairs (fractions allowed) when ``steps`` is None; None means 1."""
    batch_size: int = 4
    """Pairs per micro-batch (per process)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; effective batch = batch_size x grad_accum x processes."""
    lr: float = 5e-7
    """Peak learning rate of AdamW. DPO on a pretrained model wants it small (1e-7 to 5e-6)."""
    scheduler: Literal["constant", "linear", "cosine"] = "linear"
    """Learning-rate shape after warmup: constant, linear decay to 0, or cosine decay to 0."""
    warmup_steps: int | None = None
    """Linear warmup steps from 0 to ``lr``; None: ``warmup_ratio`` of the run."""
    warmup_ratio: float = 0.1
    """Warmup as a fraction of the run's optimizer steps, when ``warmup_steps`` is None."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this (0 turns clipping off); ``grad_norm`` is logged before clipping."""
    seed: int = 42
    """Seed for shuffling, held-out splits and initialisation."""
    eval_steps: int | None = None
    """Evaluate every this many optimizer steps (and at the end) when eval data is given; None: at
    the end only."""
    eval_on_start: bool = False
    """Also evaluate before the first step, to see where the policy starts."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError("train.steps must be at least 1")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError("train.epochs must be positive")
        if self.lr <= 0:
            raise ValueError("train.lr must be positive")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ValueError("train.eval_steps must be at least 1")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError("train.warmup_ratio must be in [0, 1)")
        self.adam_betas = tuple(self.adam_betas)


@dataclass
class OutputConfig:
    """Where results go, and what is logged."""

    dir: str = "dpo_checkpoints"
    """Output directory: ``final/`` (the model), ``checkpoint-N/``, ``metrics.jsonl``, ``config.yaml``."""
    logging_steps: int = 10
    """Log metrics every this many optimizer steps (the first and last steps are always logged)."""
    save_steps: int = 500
    """Save a checkpoint every this many optimizer steps; 0 saves only the final model."""
    progress: bool = True
    """Show a progress bar with ETA on the console."""

    def __post_init__(self) -> None:
        if self.logging_steps < 1:
            raise ValueError("output.logging_steps must be at least 1")
        if self.save_steps < 0:
            raise ValueError("output.save_steps must be 0 or more")


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "output": OutputConfig,
}

# Short names users already know (the guides, TRL, alignment-handbook) -> dotted keys.
ALIASES: dict[str, str] = {
    "model": "model.name_or_path",
    "weights": "model.weights",
    "precision": "model.precision",
    "data": "data.path",
    "eval_data": "data.eval_path",
    "output": "output.dir",
    "output_dir": "output.dir",
    "steps": "train.steps",
    "max_steps": "train.steps",
    "epochs": "train.epochs",
    "num_train_epochs": "train.epochs",
    "lr": "train.lr",
    "learning_rate": "train.lr",
    "batch_size": "train.batch_size",
    "per_device_train_batch_size": "train.batch_size",
    "grad_accum": "train.grad_accum",
    "gradient_accumulation_steps": "train.grad_accum",
    "seed": "train.seed",
    "logging_steps": "output.logging_steps",
    "save_steps": "output.save_steps",
    "lr_scheduler_type": "train.scheduler",
}


@dataclass
class Config:
    """A whole run's configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"]["adam_betas"] = list(d["train"]["adam_betas"])
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")


def _key_table() -> dict[str, str]:
    """Every accepted spelling (underscores) -> dotted key."""
    table: dict[str, str] = {}
    owners: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            table[f"{section}.{f.name}"] = f"{section}.{f.name}"
            owners.setdefault(f.name, []).append(section)
    for name, sections in owners.items():
        if len(sections) == 1:
            table.setdefault(name, f"{sections[0]}.{name}")
    table.update(ALIASES)
    return table


KEYS = _key_table()


def resolve_key(key: str, where: str) -> str:
    """The dotted key for ``key`` (any accepted spelling), or a ConfigError naming the closest one."""
    norm = key.strip().lstrip("-").replace("-", "_")
    if norm in KEYS:
        return KEYS[norm]
    close = difflib.get_close_matches(norm, list(KEYS), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0].replace('_', '-') if where == 'command line' else close[0]}'?" if close else ""
    shown = f"--{norm.replace('_', '-')}" if where == "command line" else key
    raise ConfigError(f"unknown key '{shown}' in {where}{hint} (`dpokit train --help` lists them all)")


def flatten_yaml(data: Any, where: str) -> dict[str, Any]:
    """A YAML mapping (sections and/or flat keys) -> {dotted key: value}."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(data).__name__}")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        if key in SECTIONS and isinstance(value, dict):
            for sub, subvalue in value.items():
                flat[resolve_key(f"{key}.{sub}", where)] = subvalue
        else:
            flat[resolve_key(key, where)] = value
    return flat


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return flatten_yaml(data, str(path))


def demo_recipe() -> dict[str, Any]:
    """The built-in demo settings used when neither a config file nor ``--data`` is given."""
    text = resources.files("dpokit").joinpath("recipes/demo.yaml").read_text(encoding="utf-8")
    return flatten_yaml(yaml.safe_load(text), "the built-in demo recipe")


def _bool_fields() -> set[str]:
    return {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls) if f.type in ("bool", bool)}


def parse_cli(argv: list[str]) -> tuple[list[str], dict[str, Any], set[str]]:
    """Split argv into positional args, {dotted key: raw string}, and bare switches (--print-config)."""
    positional: list[str] = []
    values: dict[str, Any] = {}
    switches: set[str] = set()
    bools = _bool_fields()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            positional.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        if name.replace("-", "_") in ("print_config", "help"):
            switches.add(name.replace("-", "_"))
            continue
        if name.replace("-", "_") == "config":
            if not eq:
                if i >= len(argv):
                    raise ConfigError("--config needs a path")
                value, i = argv[i], i + 1
            positional.append(value)
            continue
        key = resolve_key(name, "command line")
        if not eq:
            if key in bools and (i >= len(argv) or argv[i].startswith("--")):
                value = "true"
            elif i >= len(argv):
                raise ConfigError(f"--{name} needs a value")
            else:
                value, i = argv[i], i + 1
        values[key] = value
    return positional, values, switches


def _nest(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        nested[section][name] = value
    return nested


def _cli_value(raw: str) -> Any:
    """Command-line strings are read as YAML scalars/lists (``null``, ``true``, ``[0.9, 0.95]``)."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def build_config(flat: dict[str, Any]) -> Config:
    """Check types and values of {dotted key: value} with jsonargparse and the dataclasses."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    for section, cls in SECTIONS.items():
        parser.add_class_arguments(cls, section)
    nested = _nest(flat)
    try:
        namespace = parser.parse_object(nested)
    except Exception as e:  # jsonargparse reports the key in its message
        message = str(e)
        key = message.split('"')[1] if message.count('"') >= 2 else "?"
        first = [ln.strip() for ln in message.splitlines()[1:] if ln.strip()]
        value = flat.get(key, "?")
        raise ConfigError(f"bad value {value!r} for '{key}': {first[0] if first else message}") from None
    try:
        parts = parser.instantiate(namespace)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    return Config(**{s: parts[s] for s in SECTIONS})


def resolve(argv: list[str]) -> tuple[Config, set[str], dict[str, Any]]:
    """Build the config for ``dpokit train`` from argv; returns (config, switches, flat layers)."""
    positional, cli, switches = parse_cli(argv)
    flat: dict[str, Any] = {}
    if not positional and "data.path" not in cli:
        flat.update(demo_recipe())
        flat["_demo"] = True
    for path in positional:
        flat.update(load_yaml(path))
    flat.update({k: _cli_value(v) if isinstance(v, str) else v for k, v in cli.items()})
    demo = flat.pop("_demo", False)
    config = build_config(flat)
    return config, switches, {"demo": demo}


# ---- help text from the field docstrings --------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def help_text() -> str:
    short = {v: k for k, v in ALIASES.items() if "_" not in k or k in ("batch_size", "grad_accum", "eval_data")}
    lines = [
        "usage: dpokit train [CONFIG.yaml] [--KEY VALUE ...] [--print-config]",
        "",
        "With no config file and no --data, runs the built-in demo (sample pairs, tiny model).",
        "Keys: --section.field, or a field name alone when unique, or a short flag; '-' or '_' alike.",
    ]
    for section, cls in SECTIONS.items():
        lines += ["", f"{section}: {cls.__doc__.strip()}"]
        docs = field_docs(cls)
        for f in fields(cls):
            key = f"{section}.{f.name}"
            flags = [f"--{key.replace('_', '-')}"]
            if key in short:
                flags.insert(0, f"--{short[key].replace('_', '-')}")
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            lines.append(f"  {' | '.join(flags)}  (default: {default})")
            lines += textwrap.wrap(docs.get(f.name, ""), 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)
