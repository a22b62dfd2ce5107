"""The model card, ``README.md`` in ``final/``: what the model is, how it was made, how to use it.

The front matter is Hugging Face model-card metadata (``huggingface_hub.ModelCardData``):
``base_model``, ``datasets`` (hub ids only; local files are named in the text), ``tags: [dpo,
dpokit]``, ``library_name: transformers``, ``pipeline_tag: text-generation``; the hub shows the
card as the model's page when the directory is pushed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dpokit.errors import DpokitError

CARD_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected")
PLOT_NAME = "training_plot.png"


def _hub_id(name: str | None) -> str | None:
    """The hub id a data source names (a preset's, or ``owner/name`` that is not a local path)."""
    from dpokit.data.presets import find_preset

    if not name:
        return None
    if (preset := find_preset(name)) is not None and not Path(name).exists():
        return preset.hub_id
    if name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/")):
        return name
    return None


def data_sources(data: Any) -> list[str]:
    """Every source of the run's data, as the user named them (presets as their hub ids)."""
    if data.mixture:
        from dpokit.data.mixture import parse_mixture

        names = [entry.id for entry in parse_mixture(data.mixture).datasets]
    elif data.path is None:
        names = []
    else:
        names = [data.path]
    if data.eval_path:
        names.append(data.eval_path)
    return [_hub_id(n) or n for n in names]


def _loss_lines(config: Any, reference: str | None) -> list[str]:
    from dpokit.losses import get_loss

    spec = get_loss(config.loss.loss_type)
    loss = config.loss
    settings = {"beta": loss.beta, "beta_schedule": loss.beta_schedule, "sequence_logps": loss.sequence_logps,
                **{name: getattr(loss, name) for name in spec.settings}}
    if loss.rpo_alpha:
        settings["rpo_alpha"] = loss.rpo_alpha
    lines = [f"- **loss**: `{spec.name}`: {spec.summary}"]
    lines += [f"- `{k}`: {v}" for k, v in settings.items()]
    lines.append(f"- **reference**: {reference or config.model.reference}"
                 + ("" if spec.needs_reference else " (the loss needs none)"))
    return lines


def _metrics_table(train: dict[str, Any] | None, evals: dict[str, Any] | None, best: bool = False) -> list[str]:
    if train is None and evals is None:
        return ["No metrics were logged."]
    heads = ("last logged step up to the best evaluation", "the best evaluation") if best else (
        "last logged step", "last evaluation")
    lines = [f"| metric | train ({heads[0]}) | eval ({heads[1]}) |", "|---|---:|---:|"]

    def shown(row: dict[str, Any] | None, key: str) -> str:
        value = None if row is None else row.get(key)
        return f"{value:.4f}" if isinstance(value, (int, float)) else "-"

    for key in CARD_METRICS:
        if (train or {}).get(key) is not None or (evals or {}).get(f"eval_{key}") is not None:
            lines.append(f"| {key} | {shown(train, key)} | {shown(evals, f'eval_{key}')} |")
    steps = [f"train row of step {train['step']}" if train else None, f"eval of step {evals['step']}" if evals else None]
    return [*lines, "", "From " + " and ".join(s for s in steps if s) + " (`metrics.jsonl`)."]


def write_model_card(final_dir: str | Path, config: Any, train_pairs: int, eval_pairs: int,
                     run_dir: str | Path | None = None, draw_plot: bool = True, reference: str | None = None,
                     best_step: int | None = None) -> Path:
    """Write ``final_dir/README.md`` for the run in ``run_dir`` (default: the parent of
    ``final_dir``): its metrics from ``metrics.jsonl`` and, with ``draw_plot``, its curves drawn
    into ``final_dir/training_plot.png`` and embedded. ``reference``: how the run's reference
    log-probs were made, in words (``Reference.describe()``). ``best_step``: ``final_dir`` holds the
    weights of that step's evaluation (``load_best_model_at_end``), so the card reports that one,
    not the last. Returns the card's path."""
    from huggingface_hub import ModelCardData

    from dpokit.plot import plot_runs, read_rows
    from dpokit.tracking.build import run_name

    final_dir = Path(final_dir)
    run_dir = Path(run_dir) if run_dir is not None else final_dir.parent
    rows = read_rows(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    upto = (lambda r: r["step"] <= best_step) if best_step is not None else (lambda r: True)
    train = next((r for r in reversed(rows) if "loss" in r and upto(r)), None)
    evals = next((r for r in reversed(rows) if "eval_loss" in r and upto(r)), None)
    plot = None
    if draw_plot and rows:
        try:
            plot = plot_runs([run_dir], final_dir / PLOT_NAME)
        except DpokitError:
            plot = None

    sources = data_sources(config.data)
    base = config.model.name_or_path
    tags = ["dpo", "dpokit", *(["lora"] if config.model.lora else [])]
    meta = ModelCardData(base_model=base, datasets=[s for s in sources if _hub_id(s)] or None, tags=tags,
                         library_name="transformers", pipeline_tag="text-generation")
    started = f", starting from the weights in `{config.model.weights}`" if config.model.weights else ""
    data_text = ", ".join(f"`{s}`" for s in sources) or "the built-in sample pairs"
    body = [
        f"# {run_name(config)}",
        "",
        f"`{base}`{started}, aligned to human preferences with dpokit (Direct Preference "
        "Optimization and its family).",
        "",
        "## Training data",
        "",
        f"- sources: {data_text}",
        f"- pairs: {train_pairs} for training, {eval_pairs} for evaluation",
        f"- max length {config.data.max_length} tokens, layout `{config.data.layout}`",
        "",
        "## Objective",
        "",
        *_loss_lines(config, reference),
        "",
        "## Results",
        "",
        *([f"`final/` holds the weights of step {best_step}, the best evaluation by "
           f"`{config.train.metric_for_best_model}` (`load_best_model_at_end`).", ""] if best_step is not None else []),
        *_metrics_table(train, evals, best=best_step is not None),
        "",
        *([f"![Training curves]({PLOT_NAME})", ""] if plot else []),
        "## How to use",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'generator = pipeline("text-generation", model="{final_dir}")',
        'print(generator("What are the benefits of exercise?", max_new_tokens=128)[0]["generated_text"])',
        "```",
        "",
        "## Configuration",
        "",
        "<details><summary>The resolved dpokit config of this run</summary>",
        "",
        "```yaml",
        yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip(),
        "```",
        "",
        "</details>",
        "",
    ]
    path = final_dir / "README.md"
    path.write_text(f"---\n{meta.to_yaml()}\n---\n\n" + "\n".join(body), encoding="utf-8")
    return path
