"""Checks of a model name or directory made before anything loads, and the one message for a model
that fails to load anyway.

A name is a local path when it looks like one (``./x``, ``/x``, ``~/x``, ``a/b/c``, a training
output such as ``OUT/final`` or ``OUT/checkpoint-N``) or when its first part is a local directory
(``dpo_checkpoints/nope`` beside ``dpo_checkpoints/``): such a name that does not exist fails at once,
never after minutes of hub retries. A local directory is checked for what loading needs: a
``config.json`` (or a LoRA ``adapter_config.json``), weights whose safetensors headers are whole and
match the file's size, and tokenizer files. The context check reads only the model's config.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from dpokit.errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tiktoken.model")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


class ModelFileError(ConfigError):
    """A model directory that cannot be loaded: missing, empty, corrupt or incomplete (exit 2)."""


def looks_local_by_shape(name: str) -> bool:
    """Whether ``name``'s shape alone makes it a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``, a
    training output's ``final`` or ``checkpoint-N``)."""
    if name.startswith((".", "/", "~")) or "\\" in name or os.sep != "/" and os.sep in name:
        return True
    stripped = name.rstrip("/")
    return stripped.endswith("/final") or "checkpoint-" in stripped or stripped.count("/") > 1


def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a hub id (``gpt2``, ``org/name``)."""
    if looks_local_by_shape(name):
        return True
    stripped = name.rstrip("/")
    first = stripped.split("/", 1)[0]
    return "/" in stripped and Path(first).is_dir()  # OUT/nope beside an existing OUT/


def check_source(name: str, flag: str = "--model", tokenizer: bool = True) -> str:
    """``name`` as the loaders take it (``~`` expanded), once a local one is known to be loadable.
    A hub id is returned as it is; ``tiny`` is resolved by the caller (``tiny.py``)."""
    local = looks_local(name)
    path = Path(os.path.expanduser(name))
    if not local and not path.exists():
        return name
    if not path.exists():
        first = name.rstrip("/").split("/", 1)[0]
        why = (f"; taken as a path because ./{first} is a directory here (for the hub id, run elsewhere)"
               if not looks_local_by_shape(name) else "")
        raise ModelFileError(f"{flag} {name} does not exist (no such directory; `dpokit train` saves its model in "
                             f"OUTPUT_DIR/final{why})\n  fix: pass an existing model directory, a hub id such as gpt2, "
                             "or tiny for the built-in model")
    check_model_dir(path, flag, tokenizer)
    return str(path)


def check_model_dir(path: Path, flag: str = "--model", tokenizer: bool = True) -> None:
    """A ModelFileError naming ``path`` unless it holds a config, whole weights and (``tokenizer``)
    tokenizer files."""
    if not path.is_dir():
        raise ModelFileError(f"{flag} {path}: not a directory\n  fix: pass the model's directory (the one "
                             "holding config.json), not a file in it")
    if not any(path.iterdir()):
        raise ModelFileError(f"{flag} {path}: the directory is empty\n  fix: pass a model directory (config.json, "
                             "model.safetensors, tokenizer files), e.g. a training output's final/")
    adapter = (path / "adapter_config.json").is_file()
    if not adapter and not (path / "config.json").is_file():
        raise ModelFileError(f"{flag} {path}: no config.json, so this is not a model directory\n  fix: pass the "
                             "directory a training run or save_pretrained wrote (config.json beside the weights)")
    for weights in weight_files(path, adapter):
        check_safetensors(weights, flag)
    if tokenizer and not adapter and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelFileError(f"{flag} {path}: the tokenizer files are missing (none of tokenizer.json, "
                             "tokenizer.model, vocab.json)\n  fix: copy the tokenizer files of the model it was "
                             "trained from into the directory (tokenizer.save_pretrained), or pass a complete "
                             "model directory")


def weight_files(path: Path, adapter: bool) -> list[Path]:
    """The safetensors files of a model directory (sharded ones through their index)."""
    if adapter:
        return [p for p in [path / "adapter_model.safetensors"] if p.is_file()]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ModelFileError(f"{index}: not a readable safetensors index\n  fix: save the model again "
                                 "(save_pretrained) or copy the file whole") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise ModelFileError(f"{path}: weight shard {missing[0]} is missing ({len(missing)} of {len(shards)} "
                                 "listed in model.safetensors.index.json)\n  fix: copy every shard of the model")
        return [path / s for s in shards]
    return [p for p in [path / "model.safetensors"] if p.is_file()]


def check_safetensors(path: Path, flag: str = "--model") -> None:
    """A ModelFileError unless ``path``'s header is whole JSON and the file is as long as it says."""
    fix = ("\n  fix: the file is damaged or was cut short (a full disk, an interrupted copy or download); "
           "copy or save the model again, or pass another checkpoint")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{flag}: {path} is {'empty' if size == 0 else 'cut short'} "
                                     f"({size} bytes), not a safetensors file{fix}")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                raise ModelFileError(f"{flag}: {path} is corrupt or cut short (its header claims {length} bytes, "
                                     f"the file has {size}){fix}")
            header = json.loads(f.read(length))
    except OSError as e:
        raise ModelFileError(f"{flag}: cannot read {path} ({e.strerror or e})\n  fix: check the file's "
                             "permissions, or pass another model directory") from None
    except (ValueError, UnicodeDecodeError):
        raise ModelFileError(f"{flag}: {path} is corrupt (its header is not readable){fix}") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        raise ModelFileError(f"{flag}: {path} is cut short ({size} of {expected} bytes){fix}")


def context_length(source: str, trust_remote_code: bool = False) -> int | None:
    """The model's number of positions, read from its config alone (None when it has none or the
    config cannot be read here: the load then says why)."""
    from transformers import AutoConfig

    try:  # a hub id only from the local hub cache: no second wait for the network before the load's own
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code,
                                            local_files_only=not Path(source).expanduser().is_dir())
    except Exception:  # noqa: BLE001 (offline hub ids, remote code: the model load reports it)
        return None
    for candidate in (config, getattr(config, "text_config", None)):
        for key in POSITION_KEYS:
            value = getattr(candidate, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def load_failure(source: str, error: BaseException, flag: str = "--model") -> ModelFileError:
    """The error for a model or tokenizer that failed to load inside transformers / safetensors:
    the path, the library's whole first sentence (not cut at a colon), and what to do."""
    text = " ".join(str(error).split())
    reason = (text[:300] + "...") if len(text) > 300 else text or type(error).__name__
    local = Path(os.path.expanduser(source)).exists() or looks_local(source)
    fix = ("pass a complete model directory (config.json, model.safetensors, tokenizer files) such as a training "
           "output's final/, or tiny for the built-in model" if local else
           "check the hub id (it needs the network, or the model in the local hub cache), pass a local model "
           "directory, or tiny for the built-in model")
    return ModelFileError(f"{flag} {source}: cannot load the model ({type(error).__name__}: {reason})\n  fix: {fix}")


def fit_context(data, source: str, builtin: bool, say, flag: str = "--model", trust_remote_code: bool = False) -> None:
    """Check ``data.max_length`` (a `DataConfig`) against the model's positions, read from its config
    before any weights load. The default (1024) past a model's positions (the built-in tiny model has
    512), or any length past the tiny model's, is clamped with a note; a length chosen past another
    model's positions is an error (it would crash the run once the models are loaded)."""
    from dataclasses import fields

    positions = context_length(source, trust_remote_code)
    if positions is None or data.max_length <= positions:
        return
    default = next(f.default for f in fields(data) if f.name == "max_length")
    if not builtin and data.max_length != default:
        raise ConfigError(f"--max-length {data.max_length} is past the context of {flag} {source}: {positions} "
                          "positions (its config.json), so the longer sequences would crash the run\n  fix: pass "
                          f"--max-length {positions} or less (and --max-prompt-length below it), or a model with a "
                          "longer context")
    if data.max_prompt_length is not None and data.max_prompt_length >= positions:
        raise ConfigError(f"--max-prompt-length {data.max_prompt_length} is past the {positions} positions of "
                          f"{flag} {source}\n  fix: pass --max-prompt-length below {positions}")
    whose = "the built-in tiny model's" if builtin else f"the model's ({source})"
    say(f"note: --max-length {data.max_length} is past {whose} {positions} positions; using --max-length "
        f"{positions}")
    data.max_length = positions


def check_weights_outside(weights: str | None, out_dir: Path, resuming: bool) -> None:
    """Refuse a run that starts from weights its own output would replace: ``--weights OUT/final`` or
    ``OUT/checkpoint-N`` with ``--output OUT`` (a fresh run writes ``checkpoint-N`` and ``final/``
    there, so the weights it started from would be overwritten or rotated away)."""
    if not weights or resuming:
        return
    source, out = Path(weights).expanduser().resolve(), out_dir.expanduser().resolve()
    if source == out or out not in source.parents:
        return
    raise ConfigError(f"--weights {weights} lies in --output {out_dir}, which this run writes: its checkpoints and "
                      "final/ would replace the weights it starts from\n  fix: pass a new --output (for example "
                      f"{out_dir}-continued), or add --resume latest to continue that run itself")


def check_saved_weights(path: Path, flag: str = "--resume") -> None:
    """Each safetensors file of a saved checkpoint whole (whatever its layout), before it loads."""
    for weights in sorted(path.rglob("*.safetensors")):
        check_safetensors(weights, flag)
