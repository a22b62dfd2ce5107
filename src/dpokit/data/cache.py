"""Tokenize once: a cache of tokenized pairs, and the directories ``dpokit data prepare`` writes.

The cache key is a hash of the normalised pairs (their content, not the file name), the
tokenizer (its full serialised form, chat template and special tokens) and the settings that
change the ids (``max_length``, ``max_prompt_length``, ``tokenize.options``), so a changed file, tokenizer or setting
never reuses stale ids. Entries live under ``$DPOKIT_CACHE/tokenized/<key>/`` as ``ids.npz``
(flat int arrays and offsets, read back with ``allow_pickle=False``) plus ``stats.json``, written
to a temporary name and renamed, so concurrent ranks never see half an entry.

A prepared directory (``dpokit data prepare ... --output-dir DIR``) holds the normalised pairs
(``train.jsonl``, ``eval.jsonl``), the tokenized entries (``tokenized/<key>/``) and
``dpokit_prepared.json``; ``dpokit train --data DIR`` reads it, and re-tokenizes only if the
tokenizer or settings differ from those it was prepared with.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpokit.data.pairs import PreferencePair, TokenizedPair
from dpokit.data.tokenize import TokenizeStats, options, tokenize_pairs
from dpokit.errors import DataError

CACHE_VERSION = "2"  # 2: pairs identical after truncation are dropped
PREPARE_FIX = "choose an --output-dir on a disk with room"  # an entry `data prepare` writes, not the cache


def cache_root() -> Path:
    from dpokit.paths import cache_dir

    return cache_dir() / "tokenized"


def pairs_digest(pairs: list[PreferencePair]) -> str:
    h = hashlib.sha256()
    for pair in pairs:
        h.update(json.dumps(pair.to_dict(), sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str | None:
    """A hash of everything about the tokenizer that changes ids; None if it cannot be serialised."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    h = hashlib.sha256(backend.to_str().encode("utf-8"))
    extra = [type(tokenizer).__name__, tokenizer.chat_template, tokenizer.bos_token_id, tokenizer.eos_token_id,
             tokenizer("Hello world")["input_ids"]]
    h.update(json.dumps(extra, default=str).encode("utf-8"))
    return h.hexdigest()


def cache_key(pairs: list[PreferencePair], tokenizer: Any, max_length: int, max_prompt_length: int | None,
              **extra: Any) -> str | None:
    tok = tokenizer_digest(tokenizer)
    if tok is None:
        return None
    set_extra = {k: v for k, v in extra.items() if v is not None}  # unset options keep the keys of old entries
    settings = json.dumps([CACHE_VERSION, max_length, max_prompt_length, *([set_extra] if set_extra else [])],
                          sort_keys=True, default=str)
    return hashlib.sha256(f"{pairs_digest(pairs)}|{tok}|{settings}".encode()).hexdigest()[:32]


def save_entry(directory: Path, pairs: list[TokenizedPair], stats: TokenizeStats, where: str | None = None) -> None:
    """Write one entry atomically (a temporary directory, then a rename). ``where``: the fix's other
    place for the entry, when it is not in the cache (``data prepare``'s output)."""
    import numpy as np

    tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        arrays: dict[str, Any] = {}
        for part in ("prompt_ids", "chosen_ids", "rejected_ids"):
            seqs = [getattr(p, part) for p in pairs]
            arrays[part] = np.fromiter((t for s in seqs for t in s), dtype=np.int64)
            arrays[part + "_offsets"] = np.cumsum([0] + [len(s) for s in seqs], dtype=np.int64)
        np.savez(tmp / "ids.npz", **arrays)
        meta = {"stats": stats.to_dict(), "sources": [p.meta.get("source", "") for p in pairs], "created": time.time()}
        (tmp / "stats.json").write_text(json.dumps(meta), encoding="utf-8")
    except OSError as e:  # a full disk, most often: say where, and leave no half entry
        from dpokit.writable import cache_full

        raise cache_full(directory, tmp, e, "tokenized", "turn the cache off with --tokenized-cache false",
                         **({"where": where} if where else {})) from None
    except BaseException:  # Ctrl-C: no half-written entry stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, directory)
    except OSError:  # the entry is there: written first by another process, or damaged
        if load_entry(directory) is None:  # damaged (a truncated file): replace it with the new one
            shutil.rmtree(directory, ignore_errors=True)
            try:
                os.replace(tmp, directory)
                return
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def load_entry(directory: Path) -> tuple[list[TokenizedPair], TokenizeStats] | None:
    import numpy as np

    if not (directory / "ids.npz").is_file() or not (directory / "stats.json").is_file():
        return None
    try:
        meta = json.loads((directory / "stats.json").read_text(encoding="utf-8"))
        stats = TokenizeStats.from_dict(meta["stats"])
        with np.load(directory / "ids.npz", allow_pickle=False) as data:
            parts = {}
            for part in ("prompt_ids", "chosen_ids", "rejected_ids"):
                flat, offsets = data[part].tolist(), data[part + "_offsets"].tolist()
                parts[part] = [flat[a:b] for a, b in zip(offsets, offsets[1:])]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None  # a damaged entry (a truncated file, one cut by a full disk) is simply rebuilt
    sources = meta.get("sources", [])
    pairs = [TokenizedPair(p, c, r, meta={"source": sources[i] if i < len(sources) else ""})
             for i, (p, c, r) in enumerate(zip(parts["prompt_ids"], parts["chosen_ids"], parts["rejected_ids"]))]
    return pairs, stats


def tokenize_cached(
    pairs: list[PreferencePair],
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int | None = None,
    num_proc: int = 1,
    use_cache: bool = True,
    extra_dirs: tuple[Path, ...] = (),
    save_to: Path | None = None,
    log: Callable[[str], None] | None = None,
    **extra: Any,
) -> tuple[list[TokenizedPair], TokenizeStats, str | None]:
    """Tokenized pairs from the cache (``extra_dirs`` first, then ``$DPOKIT_CACHE``) or freshly
    tokenized (then stored in the cache, and in ``save_to`` when given). Returns the key as well.
    ``extra``: `dpokit.data.tokenize.options` (``max_completion_length``, ``chat_template_kwargs``)."""
    key = (cache_key(pairs, tokenizer, max_length, max_prompt_length, **extra)
           if (use_cache or save_to or extra_dirs) else None)
    if key is not None:
        places = [d / key for d in extra_dirs] + ([cache_root() / key] if use_cache else [])
        for place in places:
            found = load_entry(place)
            if found is not None:
                if log is not None:
                    log(f"tokenized pairs read from the cache ({place})")
                if save_to is not None and place != save_to / key:
                    save_entry(save_to / key, *found, where=PREPARE_FIX)
                return found[0], found[1], key
    start = time.perf_counter()
    tokenized, stats = tokenize_pairs(pairs, tokenizer, max_length, max_prompt_length, num_proc, **extra)
    if log is not None and len(pairs) >= 1000:
        log(f"tokenized {len(pairs)} pairs in {time.perf_counter() - start:.1f} s with {num_proc} process(es)")
    if key is not None:
        if use_cache:
            save_entry(cache_root() / key, tokenized, stats)  # a full disk: an error naming the entry's path
        if save_to is not None:
            save_entry(save_to / key, tokenized, stats, where=PREPARE_FIX)
    return tokenized, stats, key


def tokenize_train_eval(
    cfg: Any, train: list[PreferencePair], evaluation: list[PreferencePair], tokenizer: Any,
    log: Callable[[str], None] | None = None,
) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """Tokenize the training and evaluation pairs of a run (``cfg`` is its `DataConfig`), through the
    cache and a prepared directory's own entries; counts go to ``log``."""
    from dpokit.data.resolve import PREPARED_MARKER

    extra = ()
    if cfg.path and (Path(cfg.path) / PREPARED_MARKER).is_file():
        extra = (Path(cfg.path) / "tokenized",)
    out = []
    for name, pairs in (("train", train), ("eval", evaluation)):
        if not pairs:
            out.append([])
            continue
        tokenized, stats, _ = tokenize_cached(pairs, tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.num_proc,
                                              cfg.tokenized_cache, extra, log=log, **options(cfg))
        if log is not None:
            log(f"{name} data: {stats.summary()}")
            if advice := stats.advice(cfg.max_length, cfg.max_prompt_length):
                log(f"  {advice}")
        if name == "train" and not tokenized:
            raise DataError(f"no training pairs left after tokenization: all {len(pairs)} were dropped "
                            f"({', '.join(f'{n} {reason}' for reason, n in stats.dropped.items())})",
                            path=cfg.path, reason="no pairs",
                            hint=stats.advice(cfg.max_length, cfg.max_prompt_length) or "raise --max-length, or "
                            "see the dropped rows with `dpokit data validate SOURCE --model MODEL`")
        out.append(tokenized)
    return out[0], out[1]
