"""Checkpoints: everything that makes the next step the same step, written atomically.

``<output>/checkpoint-N/`` holds:

* the model: a Hugging Face directory (safetensors weights, config, tokenizer) for full fine-tuning,
  so ``--weights checkpoint-N`` and ``from_pretrained`` work on it; with LoRA / QLoRA only the
  adapter (the frozen base never changes);
* ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` (fp16 loss scaling): their ``state_dict``;
* ``rng_state_R.pt`` per rank: Python, NumPy, torch CPU and CUDA generators;
* ``reference.safetensors``: a TR-DPO reference's refreshed weights (other references never change;
  a precomputed one is named by its cache key in the state);
* ``trainer_state.json``: step and token counters, the data stream's epoch and position, the logging
  window's partial sums, the diagnostics' memory, and the config as given (to refuse a resume whose
  changes would change the result);
* ``config.yaml``: the resolved config; and last, ``checkpoint_complete.json``, the marker.

A checkpoint is written into ``checkpoint-N.tmp``, every file fsynced, the marker written, then the
directory renamed in one step: a kill at any instant leaves either the old state or the new one, and
a directory without its marker is never loaded. Loading uses ``weights_only=True`` throughout.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpokit import dist, sharded
from dpokit.atomic import MARKER, pause, write_atomically
from dpokit.errors import ConfigError, DpokitError
from dpokit.lora import find_peft, save_policy
from dpokit.run import Run, TrainState

STATE = "trainer_state.json"
PREFIX = "checkpoint-"

# Keys that may change between a run and its resume without changing the steps it computes.
HARMLESS = ("train.steps", "train.epochs", "train.resume", "train.eval_steps", "train.eval_on_start",
            "train.eval_strategy", "train.early_stopping_patience", "train.early_stopping_threshold",
            "train.metric_for_best_model", "train.greater_is_better", "train.load_best_model_at_end",
            "train.on_divergence", "data.num_proc", "data.tokenized_cache", "model.device", "model.compile",
            "output.")


def step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith(PREFIX) or not name[len(PREFIX):].isdigit():
        return None
    return int(name[len(PREFIX):])


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def checkpoints(out_dir: Path) -> list[Path]:
    """The complete checkpoints in ``out_dir``, oldest step first."""
    found = [p for p in out_dir.glob(f"{PREFIX}*") if p.is_dir() and step_of(p) is not None and is_complete(p)]
    return sorted(found, key=lambda p: step_of(p) or 0)


def leftovers(out_dir: Path) -> list[Path]:
    """Temporary directories of saves that never finished (the process was killed)."""
    return sorted(p for p in out_dir.glob("*.tmp") if p.is_dir())


def find(resume: str, out_dir: Path) -> Path:
    """The checkpoint ``--resume`` names: ``latest`` in ``out_dir``, or a path; a ConfigError if none."""
    if resume == "latest":
        found = checkpoints(out_dir)
        if not found:
            raise ConfigError(f"--resume latest: no complete checkpoint in {out_dir}\n  fix: run without --resume "
                              "to start afresh, or pass --resume PATH to a checkpoint directory")
        return found[-1]
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"--resume {resume}: no such directory\n  fix: pass a checkpoint directory "
                          "(OUTPUT/checkpoint-N) or --resume latest")
    if not is_complete(path):
        raise ConfigError(f"--resume {resume}: not a complete checkpoint (no {MARKER}: it was never finished)\n"
                          "  fix: --resume latest picks the newest complete checkpoint")
    return path


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE).read_text(encoding="utf-8"))


def changed_keys(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two configs (as dicts), harmless keys left out."""
    def flat(d: dict[str, Any]) -> dict[str, Any]:
        return {f"{s}.{k}": v for s, fields in d.items() if isinstance(fields, dict) for k, v in fields.items()}

    a, b = flat(saved), flat(now)
    return [k for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and not any(k == h or (h.endswith(".") and k.startswith(h)) for h in HARMLESS)]


def check_resumable(path: Path, task: str, config: dict[str, Any], world_size: int = 1) -> dict[str, Any]:
    """The checkpoint's state, once it is known to fit this run: same task, no result-changing key
    changed. Made before any model loads. The batch per process may change with the number of
    processes (``world_size``) when the batch of a whole step stays the same."""
    state = read_state(path)
    if state.get("task") != task:
        raise ConfigError(f"--resume {path}: the checkpoint is of a '{state.get('task')}' run, this is '{task}'")
    changed = changed_keys(state["config"], config)
    if same_step_batch(state["config"], config, int(state.get("world_size", 1)), world_size):
        changed = [k for k in changed if k not in ("train.batch_size", "train.grad_accum")]
    if changed:
        raise ConfigError(f"--resume {path}: the config differs in {', '.join(changed)}, which would change the "
                          "result\n  fix: resume with the settings of the run that wrote the checkpoint "
                          f"(its {path / 'config.yaml'}), or start a new run with a new --output")
    return state


def same_step_batch(saved: dict[str, Any], now: dict[str, Any], saved_world: int, world: int) -> bool:
    """Whether both runs take the same examples per optimizer step (batch x accumulation x processes)."""
    def per_step(cfg: dict[str, Any], n: int) -> int:
        return int(cfg["train"]["batch_size"]) * int(cfg["train"]["grad_accum"]) * n

    return per_step(saved, saved_world) == per_step(now, world)


def data_key(lengths: list[int]) -> str:
    """A fingerprint of the training data as tokenized: its size and every example's length."""
    import hashlib

    return hashlib.sha256(",".join(map(str, lengths)).encode()).hexdigest()[:16]


def check_same_data(path: Path, state: dict[str, Any], size: int, key: str) -> None:
    """A resume reads the data the checkpoint's run read: rows added to or changed in the file (under
    the same config) would shift every later batch. Checked after tokenizing, before models load."""
    saved = state.get("stream", {})
    if "data" in saved and (saved.get("size"), saved["data"]) != (size, key):
        raise ConfigError(f"--resume {path}: the training data differs from the data the run started with "
                          f"({saved.get('size')} examples then, {size} now, or their contents changed)\n"
                          "  fix: resume with the data of the run that wrote the checkpoint, or start a new run "
                          "(e.g. --weights " + str(path) + " with a new --output) on the new data")


def check_output_dir(path: Path, resuming: bool, log: Callable[[str], None]) -> None:
    """Create the output directory and check it takes files, so a bad ``--output`` fails in seconds;
    clear leftovers of saves that never finished. A new run is not started where an earlier run's
    checkpoints lie: it would mix with them, and ``--resume latest`` continues that run instead."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".dpokit-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--output {path}: cannot write there ({e.strerror or e})\n  fix: choose another "
                          "directory") from None
    for tmp in leftovers(path):
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"note: removed {tmp}, an unfinished save of an earlier run")
    old = checkpoints(path)
    if old and not resuming:
        shown = ", ".join(p.name for p in old[-3:])
        raise ConfigError(f"--output {path} holds checkpoints of an earlier run ({shown})\n  fix: add --resume "
                          "latest to continue that run, or choose a new --output (or delete them)")
    unmarked = sorted((p for p in path.glob(f"{PREFIX}*") if p.is_dir() and step_of(p) is not None
                       and not is_complete(p)), key=lambda p: step_of(p) or 0)
    if unmarked:
        shown = ", ".join(p.name for p in unmarked[:5]) + (f" and {len(unmarked) - 5} more" if len(unmarked) > 5 else "")
        log(f"note: {path} holds {shown} from an earlier run, without the mark of a complete checkpoint, so they "
            "cannot be resumed; they are kept (a checkpoint of the same step is replaced)")


# ---- writing -------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_object(obj: Any, path: Path) -> None:
    torch.save(obj, path)
    pause()


def load_object(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def keep_rows_up_to(path: Path, step: int) -> None:
    """Drop the rows of a JSONL log past ``step`` (and a half-written last line): after a resume the
    log then holds each step exactly once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp-rows")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def keep_logs_up_to(out_dir: Path, step: int) -> None:
    """A resumed run's logs hold each step once: ``metrics.jsonl`` and the margin logs lose what an
    earlier run wrote past ``step`` (its margin arrays too)."""
    keep_rows_up_to(out_dir / "metrics.jsonl", step)
    margins = out_dir / "logs" / "margins"
    keep_rows_up_to(margins / "margins_log.jsonl", step)
    for array in margins.glob("epoch_*/step_*.npy"):
        if int(array.stem.split("_")[1]) > step:
            array.unlink()


def rotate(out_dir: Path, limit: int | None, keep: tuple[Path, ...] = ()) -> list[Path]:
    """Delete the oldest complete checkpoints beyond the newest ``limit`` (those in ``keep``, such
    as the best one, stay besides); returns what was deleted."""
    if limit is None:
        return []
    found = checkpoints(out_dir)
    kept = {p.resolve() for p in keep}
    doomed = [p for p in found[: max(0, len(found) - limit)] if p.resolve() not in kept]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# ---- a run's checkpoint ---------------------------------------------------------------------------


def save_weights(policy: torch.nn.Module, path: Path) -> None:
    """What changes in training: the whole model (a Hugging Face directory), or only the adapter."""
    peft = find_peft(policy)
    (peft or policy).save_pretrained(path, safe_serialization=True)
    pause()


def load_weights(policy: torch.nn.Module, path: Path) -> None:
    """Put a checkpoint's weights into ``policy`` in place (its parameters, and so the optimizer's
    references to them, stay the same objects). A sharded checkpoint's weights go through DCP."""
    from safetensors.torch import load_file

    if sharded.has_shards(path):
        sharded.load(policy, None, path)
        return
    peft = find_peft(policy)
    if peft is not None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(peft, load_file(str(path / "adapter_model.safetensors")))
        return
    index = path / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
             else ["model.safetensors"])
    weights: dict[str, torch.Tensor] = {}
    for name in files:
        weights.update(load_file(str(path / name)))
    own = policy.state_dict()
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    loaded = {own[k].data_ptr() for k in weights if k in own}
    untied = [k for k in missing if own[k].data_ptr() not in loaded]  # tied weights come with their twin
    if unexpected or untied:
        raise DpokitError(f"{path}: its weights do not fit this model (missing {untied[:3]}, unexpected "
                          f"{unexpected[:3]})\n  fix: resume with the model the checkpoint was trained from")


def trainer_state(run: Run) -> dict[str, Any]:
    return {"task": run.task.name, "counters": asdict(run.state),
            "stream": {**run.stream.state(), "size": run.stream.size, "data": run.stream.key},  # `check_same_data`
            "total_steps": run.total_steps, "world_size": run.info.world_size,
            "window": run.window.state_dict(), "reference_key": run.task.key(), "config": run.given,
            "watch": run.watch.state_dict()}


def save_checkpoint(run: Run) -> Path:
    """Write ``checkpoint-<step>`` atomically, then drop checkpoints beyond ``save_total_limit`` (the
    best one stays) and mirror it."""
    path = run.out_dir / f"{PREFIX}{run.state.step}"

    shards = sharded.is_sharded(run.policy)

    def write(tmp: Path) -> None:
        if shards:  # FSDP2: every rank its part of the weights and optimizer state (``sharded.py``)
            sharded.save(run.policy, run.optimizer, tmp)
        if run.info.is_main:
            if not shards:
                save_weights(run.policy, tmp)
                save_object(run.optimizer.state_dict(), tmp / "optimizer.pt")
            run.tokenizer.save_pretrained(tmp)
            run.config.save(tmp / "config.yaml")
            save_object(run.scheduler.state_dict(), tmp / "scheduler.pt")
            if run.scaler.is_enabled():
                save_object(run.scaler.state_dict(), tmp / "scaler.pt")
            if reference := run.task.state_dict():
                from safetensors.torch import save_file

                save_file(reference, str(tmp / "reference.safetensors"))
            (tmp / STATE).write_text(json.dumps(trainer_state(run)), encoding="utf-8")
        save_object(rng_state(), tmp / f"rng_state_{run.info.rank}.pt")

    earlier = checkpoints(run.out_dir) if run.info.is_main else []
    kept = f"; the last complete checkpoint, {earlier[-1]}, is kept" if earlier else ""
    write_atomically(path, write, marker={"step": run.state.step}, kept=kept)
    if run.info.is_main:
        best = run.watch.best_checkpoint(run.out_dir)
        removed = rotate(run.out_dir, run.config.output.save_total_limit, keep=(best,) if best else ())
        run.watch.saved(path, removed)
    dist.barrier()
    return path


def load_checkpoint(run: Run, path: Path, state: dict[str, Any]) -> None:
    """Restore ``run`` to the step ``path`` was saved at (state from `check_resumable`)."""
    if state.get("reference_key") != run.task.key():
        raise ConfigError(f"--resume {path}: the reference log-probs differ from the ones the run started with "
                          "(another reference model or data)\n  fix: resume with the run's own settings")
    if sharded.has_shards(path):  # written by a sharded run; DCP reshards to this run's layout
        sharded.load(run.policy, run.optimizer, path)
    else:
        load_weights(run.policy, path)
        run.optimizer.load_state_dict(load_object(path / "optimizer.pt"))
    run.scheduler.load_state_dict(load_object(path / "scheduler.pt"))
    if run.scaler.is_enabled() and (path / "scaler.pt").is_file():
        run.scaler.load_state_dict(load_object(path / "scaler.pt"))
    reference = path / "reference.safetensors"
    if reference.is_file():
        from safetensors.torch import load_file

        run.task.load_state_dict(load_file(str(reference)))
    run.state = TrainState(**state["counters"])
    run.stream.epoch, run.stream.position = state["stream"]["epoch"], state["stream"]["position"]
    run.window.load_state_dict(state["window"])
    run.watch.load_state_dict(state.get("watch") or {})
    rng = path / f"rng_state_{run.info.rank}.pt"
    if rng.is_file():
        set_rng_state(load_object(rng))
    else:  # resumed on more processes than wrote it: this rank starts its generators afresh
        run.log.print(f"note: {path} holds no random state for rank {run.info.rank}; it is seeded afresh")


def save_final(run: Run, path: Path) -> None:
    """The final model, a Hugging Face directory (with LoRA: merged, the adapter in ``adapter/``),
    replacing an older one only once it is whole. A sharded model is gathered first."""
    full = sharded.full_weights(run.policy) if sharded.is_sharded(run.policy) else None  # every rank takes part

    def write(tmp: Path) -> None:
        if run.info.is_main:
            if full is not None:
                sharded.save_consolidated(full, run.task.model_config, tmp, run.tokenizer)
            else:
                save_policy(run.policy, tmp, run.tokenizer)
            run.tokenizer.save_pretrained(tmp)
            run.config.save(tmp / "dpokit_config.yaml")
            (tmp / STATE).write_text(json.dumps({**asdict(run.state), "total_steps": run.total_steps,
                                                     "weights_step": run.weights_step or run.state.step}, indent=2))

    latest = checkpoints(run.out_dir) if run.info.is_main else []
    kept = f"; the last checkpoint, {latest[-1]}, is intact (--resume latest continues from it)" if latest else ""
    write_atomically(path, write, what="final model", kept=kept)
