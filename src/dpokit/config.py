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
from collections.abc import Iterable, Mapping
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
    gradient_checkpointing: bool = True
    """Recompute each layer's activations in the backward pass instead of keeping them: much less
    memory for about 10-30% more compute (TRL's default too). ``false`` when memory is plentiful."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    compile: bool = False
    """Compile the model's decoder with ``torch.compile`` (the first steps are slower while it
    compiles; pays off on long runs, mostly on GPUs)."""
    reference: Literal["auto", "copy", "model", "lora", "precomputed", "none"] = "auto"
    """Where the reference log-probs come from (``reference.py``): ``copy``, a frozen copy of the
    starting policy; ``model``, the separate model ``ref_model``; ``lora``, the policy's base with its
    LoRA adapters switched off (no second copy); ``precomputed``, one pass before training, cached on
    disk, no reference model in memory while training; ``none``: reference-free losses, or with a loss
    that needs a reference, reference log-probs of 0 (TRL's ``reference_free``). ``auto``:
    none for reference-free losses, else ``model`` when ``ref_model`` is set, ``lora`` with LoRA,
    else ``copy``."""
    ref_model: str | None = None
    """Hub id or local directory of a separate reference model (same tokenizer as the policy). None:
    the reference is the starting policy."""
    ref_refresh_steps: int | None = None
    """TR-DPO (Gorbatovski et al. 2024): every this many optimizer steps, move the reference toward
    the policy, ``ref <- mix * policy + (1 - mix) * ref``. None: the reference stays fixed."""
    ref_refresh_mix: float = 1.0
    """TR-DPO's alpha: 1.0 copies the policy into the reference (hard update); below 1 mixes (TRL's
    default is 0.6)."""
    lora: bool = False
    """Train LoRA adapters (``peft``) instead of all weights; the saved model is merged, with the
    adapter beside it in ``final/adapter/``."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: float = 32.0
    """LoRA scale numerator: the update is ``(lora_alpha / lora_r) * B @ A``."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path (0: DPO runs without dropout, like the reference implementation)."""
    lora_target_modules: list[str] | None = None
    """Module names to adapt (``[q_proj, v_proj]``); None: every linear layer but the output head."""
    load_in_4bit: bool = False
    """QLoRA: load the frozen base weights in 4-bit NF4 (``bitsandbytes``, ``pip install
    dpokit[qlora]``) and train LoRA adapters on top; implies ``lora``."""

    def __post_init__(self) -> None:
        if not self.name_or_path:
            raise ValueError("model.name_or_path must not be empty")
        if self.weights is not None and not Path(self.weights).is_dir():
            raise ValueError(f"--weights {self.weights}: no such directory; pass an earlier run's output, "
                             "for example dpo_checkpoints/final")
        if self.load_in_4bit:
            self.lora = True
        if self.reference == "model" and not self.ref_model:
            raise ValueError("model.reference 'model' needs model.ref_model (--ref-model PATH_OR_ID)")
        if self.ref_model and self.reference in ("copy", "lora", "none"):
            raise ValueError(f"model.ref_model is set but model.reference is '{self.reference}', which does "
                             "not use it; drop one of them")
        if self.reference == "lora" and not self.lora:
            raise ValueError("model.reference 'lora' needs LoRA training (--lora true or --load-in-4bit true)")
        if self.reference == "copy" and self.load_in_4bit:
            raise ValueError("a 4-bit model cannot be copied for the reference; use model.reference lora "
                             "(the default with load_in_4bit) or precomputed")
        if self.ref_refresh_steps is not None and self.ref_refresh_steps < 1:
            raise ValueError("model.ref_refresh_steps must be at least 1")
        if not 0.0 < self.ref_refresh_mix <= 1.0:
            raise ValueError("model.ref_refresh_mix must be in (0, 1]")
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise ValueError("model.lora_r must be at least 1 and model.lora_alpha positive")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError("model.lora_dropout must be in [0, 1)")


@dataclass
class DataConfig:
    """Where preference pairs come from and how they are tokenized and batched."""

    path: str | None = None
    """The training data: a local JSONL / JSON / Parquet / CSV file, a directory (written by ``dpokit
    data prepare``, saved by `datasets`, or a data set repository), a hub id (``owner/name``), or a
    preset (``ultrafeedback``, ``hh-rlhf``, ``orca``). None: the built-in sample pairs."""
    split: str | None = None
    """Split of a hub data set or saved directory; None: the preset's split, else ``train``."""
    config_name: str | None = None
    """Config (subset) name of a hub data set, as ``datasets.load_dataset(id, config_name)``."""
    data_dir: str | None = None
    """``data_dir`` of a hub data set (e.g. ``harmless-base`` of ``Anthropic/hh-rlhf``)."""
    format: Literal["auto", "plain", "conversational", "implicit", "orca"] = "auto"
    """Row format (``data/formats.py``); ``auto`` detects it from the first well-formed row: ``plain`` prompt /
    chosen / rejected strings, ``conversational`` chat message lists, ``implicit`` whole dialogues
    (HH-RLHF), ``orca`` system + question."""
    columns: dict[str, str] | list[str] | None = None
    """Rename your columns to dpokit's, ``{prompt: question, chosen: good, rejected: bad}``; a list
    keeps only those columns."""
    mixture: dict[str, Any] | None = None
    """A mixture of data sets (alignment-handbook ``dataset_mixture``): ``{datasets: [{id, split,
    weight, columns}], seed, test_split_size}``; a weight is the fraction of that data set to take."""
    eval_path: str | None = None
    """Evaluation data (any source ``path`` accepts). Evaluation runs only when eval data is given:
    this, ``eval_split``, ``eval_fraction``, or a preset's test split (``--dataset ultrafeedback``
    evaluates on ``test_prefs``)."""
    eval_split: str | None = None
    """A split of the training source (or of each mixture data set) to evaluate on, e.g. ``test_prefs``;
    with ``eval_path``, the split of that source. None: a preset's test split, if it has one."""
    eval_fraction: float = 0.0
    """Hold out this fraction of the training pairs (after shuffling with the seed) for evaluation."""
    on_bad_row: Literal["error", "skip"] = "error"
    """``error``: a bad row (invalid JSON, missing column, wrong type, empty field, chosen ==
    rejected, ...) stops the run before the model loads; ``skip``: bad rows are skipped and counted."""
    num_proc: int = 1
    """Worker processes for tokenization (large data sets)."""
    tokenized_cache: bool = True
    """Cache tokenized pairs under ``$DPOKIT_CACHE/tokenized``, keyed by data + tokenizer + settings,
    so a second run starts fast."""
    sample_size: int = 200
    """How many built-in sample pairs to generate when ``path`` is None."""
    max_samples: int | None = None
    """Use at most this many training rows (smoke runs): a file or split is read no further, and a
    held-out ``eval_fraction`` comes out of them."""
    max_length: int = 1024
    """Longest prompt + completion in tokens; longer completions are cut, and a pair whose prompt
    alone reaches it is dropped."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens; longer prompts keep their last tokens. None: no separate limit."""
    chat_template: str | None = None
    """A Jinja chat template to use instead of the tokenizer's (conversational data only)."""
    layout: Literal["padded", "packed", "prefix"] = "prefix"
    """How pairs are laid out in a batch (``data/collate.py``); all give the same log-probs.
    ``prefix``: ``[prompt][chosen][rejected]`` per pair, the prompt computed once (fastest when
    prompts are long); ``packed``: sequences end to end, no padding; ``padded``: the classic 2B
    right-padded rows."""
    group_by_length: bool = False
    """Batch pairs of similar length together (each shuffled mega-batch of 64 steps' pairs sorted
    by length): much less padding for ``--layout padded``; the packing layouts need no help."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Extra keyword arguments for the chat template (``apply_chat_template``), e.g. ``{enable_thinking:
    false}``; a row's own ``chat_template_kwargs`` column is laid over these."""
    max_completion_length: int | None = None
    """Longest completion in tokens (TRL's ``max_completion_length``): longer completions keep their
    first tokens. None: only ``max_length`` limits them."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("data.eval_fraction must be in [0, 1)")
        if self.max_length < 2:
            raise ValueError("data.max_length must be at least 2")
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ValueError("data.max_prompt_length must be smaller than data.max_length")
        if self.sample_size < 1:
            raise ValueError("data.sample_size must be at least 1")
        if self.num_proc < 1:
            raise ValueError("data.num_proc must be at least 1")
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise ValueError("data.max_completion_length must be at least 1")
        if self.mixture is not None:
            from dpokit.data.mixture import parse_mixture

            if self.path is not None:
                raise ValueError("set data.path (--dataset) or data.mixture (dataset_mixture), not both")
            if parse_mixture(self.mixture).test_split_size and self.eval_fraction:
                raise ValueError("set data.eval_fraction or the mixture's test_split_size, not both")


@dataclass
class LossConfig:
    """The preference objective."""

    loss_type: str = "sigmoid"
    """Registered loss (``dpokit.losses.LOSSES``): ``sigmoid`` (DPO), ``robust``, ``ipo``, ``hinge``,
    ``exo_pair``, ``nca_pair``, ``sppo_hard``, ``apo_zero``, ``apo_down``, ``discopop``, ``simpo``,
    ``orpo``, ``sft``. Several, comma-separated (``sigmoid,sft``), give a weighted combination."""
    beta: float | None = None
    """Strength of the KL penalty toward the reference: higher keeps the policy closer to it.
    None: the loss's paper default, 0.1 (2.0 for SimPO); 0.01-0.5 is the common range for DPO."""
    label_smoothing: float = 0.0
    """Assumed fraction of flipped labels: cDPO (``sigmoid``), ``robust``, ``simpo``; ``exo_pair``'s
    eps (0 means 1e-3). 0 is plain DPO."""
    sequence_logps: Literal["auto", "sum", "mean"] = "auto"
    """How a sequence's log-prob is reduced over its tokens: ``auto`` is each loss's own convention
    (sums; per-token means for ipo, simpo, orpo); ``sum`` gives IPO as the reference implementation."""
    simpo_gamma: float = 0.5
    """SimPO's target reward margin gamma (the SimPO code's gamma/beta = 0.25 at beta 2.0)."""
    orpo_lambda: float = 0.1
    """ORPO's weight lambda of the odds-ratio term (Hong et al. 2024)."""
    orpo_prompt_nll: bool = False
    """ORPO's NLL term over the prompt tokens too, as TRL and the ORPO authors' code do; false: over
    the completion only, as the paper writes it."""
    rpo_alpha: float = 0.0
    """Weight of the chosen answers' per-token NLL added to the loss (RPO; Pang et al. 2024 use 1.0).
    0 turns it off."""
    discopop_tau: float = 0.05
    """DiscoPOP's temperature tau (Lu et al. 2024)."""
    loss_weights: list[float] | None = None
    """Weights of the losses in a combination (``loss_type: sigmoid,sft``), in order; None: 1 each."""
    beta_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """How beta moves over the run: ``constant``; ``linear`` is ``beta * (1 + step / steps)`` (rises to
    2 beta); ``cosine`` makes the same rise along a half cosine."""

    def __post_init__(self) -> None:
        from dpokit.losses import get_loss, loss_names  # torch; imported only when a config is built

        spec = get_loss(self.loss_type)
        self.loss_type = spec.name
        if self.beta is None:
            self.beta = spec.default_beta
        if self.beta <= 0:
            raise ValueError("loss.beta must be positive")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError("loss.label_smoothing must be in [0, 0.5)")
        for name in ("orpo_lambda", "discopop_tau"):
            if getattr(self, name) <= 0:
                raise ValueError(f"loss.{name} must be positive")
        if self.rpo_alpha < 0:
            raise ValueError("loss.rpo_alpha must be 0 or more")
        if self.loss_weights is not None:
            names = loss_names(self.loss_type)
            if len(self.loss_weights) != len(names):
                raise ValueError(f"loss.loss_weights has {len(self.loss_weights)} weights for "
                                 f"{len(names)} losses ({', '.join(names)})")
            if any(w < 0 for w in self.loss_weights):
                raise ValueError("loss.loss_weights must be 0 or more")
            self.loss_weights = [float(w) for w in self.loss_weights]


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
    eval_strategy: Literal["steps", "epoch", "no"] = "steps"
    """When to evaluate (given eval data): every ``eval_steps`` (and at the end), at each epoch's
    end, or never."""
    optim: str = "adamw_torch"
    """Optimizer, by the Hugging Face Trainer's names: ``adamw_torch``, ``adamw_torch_fused``,
    ``adafactor``, ``sgd``, ``rmsprop``, and bitsandbytes' ``adamw_bnb_8bit``, ``paged_adamw_32bit``,
    ``paged_adamw_8bit`` where bitsandbytes runs."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    scheduler_kwargs: dict[str, Any] | None = None
    """Extra arguments of the learning-rate schedule (the Trainer's ``lr_scheduler_kwargs``), e.g.
    ``{min_lr_rate: 0.1}`` for ``cosine_with_min_lr``."""
    resume: str | None = None
    """Resume a stopped run: ``latest`` (the newest complete ``checkpoint-N`` in the output
    directory) or a checkpoint directory (TRL's ``resume_from_checkpoint: true | PATH``)."""
    early_stopping_patience: int | None = None
    """Stop when ``metric_for_best_model`` has not improved for this many evaluations; None: never."""
    early_stopping_threshold: float = 0.0
    """How much ``metric_for_best_model`` must improve to count as an improvement."""
    metric_for_best_model: str = "eval_loss"
    """The metric that picks the best checkpoint and drives early stopping (an ``eval_`` name)."""
    greater_is_better: bool | None = None
    """Whether a larger ``metric_for_best_model`` is better; None: inferred (true for accuracies,
    margins and rewards, false for losses), as the Trainer does."""
    load_best_model_at_end: bool = False
    """Make ``final/`` the best checkpoint's weights (by ``metric_for_best_model``)."""
    on_divergence: Literal["stop", "warn"] = "stop"
    """What a diverged run does (the loss or the chosen log-probs far past healthy bounds for several
    logged rows): ``stop`` before saving a broken model, keeping the last good checkpoint, or ``warn``."""
    parallelism: Literal["auto", "ddp", "fsdp"] = "auto"
    """Several processes (``torchrun``): ``ddp`` replicates the model on every rank, ``fsdp`` shards it
    (FSDP2). ``auto``: ddp. ``--fsdp true`` is ``fsdp``."""
    fsdp_offload: bool = False
    """FSDP2: keep the sharded parameters and optimizer state in CPU memory (slower, for models that do
    not fit otherwise)."""

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
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError("train.early_stopping_patience must be at least 1")
        if self.adam_epsilon <= 0:
            raise ValueError("train.adam_epsilon must be positive")
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
    """Show a progress bar with ETA on the console (a terminal or a notebook; output piped to a log
    file gets the step lines alone)."""
    save_strategy: Literal["steps", "epoch", "no"] = "steps"
    """When to save checkpoints: every ``save_steps``, at each epoch's end, or never (``final/`` is
    always written)."""
    logging_strategy: Literal["steps", "epoch", "no"] = "steps"
    """When to log training metrics: every ``logging_steps``, at each epoch's end, or only the first
    and last steps."""
    save_total_limit: int | None = None
    """Keep only the newest this many checkpoints (the best one is kept besides); None: keep all."""
    report_to: list[str] = field(default_factory=list)
    """Trackers besides the console and ``metrics.jsonl`` (always on): ``tensorboard``, ``wandb``,
    ``all``, ``none``."""
    run_name: str | None = None
    """The run's name in trackers (W&B, TensorBoard); None: the output directory's name."""
    project: str | None = None
    """The W&B project; None: ``$WANDB_PROJECT``, else ``dpokit``."""
    tags: list[str] | None = None
    """Tags of the run in W&B."""
    peak_tflops: float | None = None
    """The hardware's peak TFLOP/s for MFU (model FLOPs utilisation); None: known for common GPUs,
    measured once on a CPU."""
    save_margin_arrays: bool = True
    """Write each logged step's per-pair reward margins as ``logs/margins/epoch_XXX/step_XXXXX.npy``."""
    mirror_dir: str | None = None
    """Copy checkpoints (as they are written), the final model and the logs to this directory (a
    mounted bucket), atomically."""

    def __post_init__(self) -> None:
        if self.logging_steps < 1:
            raise ValueError("output.logging_steps must be at least 1")
        if self.save_steps < 0:
            raise ValueError("output.save_steps must be 0 or more")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError("output.save_total_limit must be at least 1 (None keeps every checkpoint)")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError("output.peak_tflops must be positive")


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
    "dataset": "data.path",
    "data": "data.path",
    "eval_data": "data.eval_path",
    "output": "output.dir",
    "output_dir": "output.dir",
    "steps": "train.steps",
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
    # alignment-handbook / TRL recipe keys (their flat names)
    "model_name_or_path": "model.name_or_path",
    "model_revision": "model.revision",
    "dataset_name": "data.path",
    "dataset_config": "data.config_name",
    "dataset_config_name": "data.config_name",
    "dataset_train_split": "data.split",
    "dataset_test_split": "data.eval_split",
    "dataset_mixture": "data.mixture",
    "dataset_mixer": "data.mixture",
    "layout": "data.layout",
    "use_peft": "model.lora",  # TRL's flag for LoRA
}

# The short flags, in the order `dpokit train --help` lists them first: aliases above, or field names
# unique across sections. An unknown flag that begins one of them is taken for it (`--batch` ->
# `--batch-size`).
SHORT_FLAGS = ("data", "dataset", "model", "weights", "output", "steps", "epochs", "beta", "lr", "batch_size",
               "grad_accum", "max_length", "max_prompt_length", "precision", "seed", "logging_steps", "save_steps",
               "eval_data", "layout")


# Recipe keys whose values need converting (`_convert_recipe_keys`): bf16 / fp16 / torch_dtype ->
# model.precision, max_steps -1 -> no step limit, HF scheduler names, dataset_splits -> split and
# eval_split, a worker count of null -> unchanged, use_flash_attention_2 -> attn_implementation,
# adam_beta1 / adam_beta2 -> adam_betas, the reference switches -> model.reference and TR-DPO's refresh.
RECIPE_KEYS = ("torch_dtype", "dtype", "bf16", "fp16", "max_steps", "lr_scheduler_type", "dataset_splits",
               "preprocessing_num_workers", "dataset_num_proc", "use_flash_attention_2", "adam_beta1",
               "adam_beta2", "precompute_ref_log_probs", "reference_free", "sync_ref_model",
               "ref_model_sync_steps", "ref_model_mixup_alpha")

# Keys of Hugging Face TrainingArguments, TRL's DPOConfig / ModelConfig / ScriptArguments and
# alignment-handbook recipes that dpokit does not use: a recipe runs as is, and they are listed
# in one warning instead of failing. Any other unknown key is an error with the closest match.
HF_UNUSED_KEYS = frozenset("""
    adafactor adam_epsilon auto_find_batch_size auto_insert_empty_system_msg
    bf16_full_eval bnb_4bit_quant_type bnb_4bit_compute_dtype chat_template_path data_seed dataloader_drop_last
    dataloader_num_workers dataloader_persistent_workers dataloader_pin_memory dataloader_prefetch_factor
    dataset_kwargs dataset_text_field ddp_backend ddp_find_unused_parameters ddp_timeout deepspeed
    disable_dropout disable_tqdm do_eval do_predict do_train eval_accumulation_steps eval_delay eval_on_start
    eval_strategy evaluation_strategy f_divergence_type force_use_ref_model fp16_full_eval fsdp fsdp_config
    generate_during_eval gradient_checkpointing_kwargs greater_is_better hub_model_id hub_model_revision
    hub_private_repo hub_strategy hub_token ignore_data_skip include_num_input_tokens_seen include_tokens_per_second
    is_reference_free label_names label_pad_token_id learning_rate_scheduler lr_scheduler_kwargs load_best_model_at_end
    load_in_4bit load_in_8bit local_rank log_level log_level_replica log_on_each_node logging_dir
    logging_first_step logging_nan_inf_filter logging_strategy lora_alpha lora_dropout lora_modules_to_save lora_r
    lora_target_modules lora_task_type max_completion_length max_target_length metric_for_best_model
    model_adapter_name model_init_kwargs neftune_noise_alpha num_proc optim optim_args optim_target_modules
    overwrite_output_dir padding_free padding_value past_index per_device_eval_batch_size precompute_ref_batch_size
    prediction_loss_only push_to_hub ref_adapter_name ref_model_init_kwargs
    remove_unused_columns report_to restore_callback_states_from_checkpoint
    resume_from_checkpoint rpo_alpha run_name save_on_each_node save_only_model save_safetensors save_strategy
    save_total_limit skip_memory_metrics tf32 tokenizer_name_or_path torch_compile
    torch_compile_backend torch_compile_mode torch_empty_cache_steps tools truncation_mode truncation_side
    use_bnb_nested_quant use_cpu use_liger_kernel use_logits_to_keep use_mps_device use_peft use_weighting
    wandb_entity wandb_project wandb_run_group warmup_min_lr text_column ddp_bucket_cap_mb
    average_tokens_across_devices label_smoothing_factor activation_checkpointing activation_checkpointing_kwargs
    liger_kernel_config use_cache project trackio_space_id eval_do_concat_batches eval_use_gather_object
    include_for_metrics batch_eval_metrics enable_jit_checkpoint hub_always_push hub_revision full_determinism
    accelerator_config parallelism_config dataloader_multiprocessing_context dataloader_in_order
    train_sampling_strategy length_column_name ddp_broadcast_buffers ddp_static_graph debug
    jit_mode_eval use_ipex bf16 fp16_opt_level half_precision_backend mp_parameters split_batches
    dispatch_batches include_inputs_for_metrics torchdynamo ray_scope
""".split()) - set(RECIPE_KEYS)


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def _convert_recipe_keys(flat: dict[str, Any], where: str) -> dict[str, Any]:
    """Turn one layer's ``recipe.*`` keys into dpokit keys; ``unused.*`` keys stay for the warning."""
    recipe = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("recipe.")}
    if not recipe:
        return flat
    out = {k: v for k, v in flat.items() if not k.startswith("recipe.")}
    if "model.precision" not in out:
        if _truthy(recipe.get("bf16")) and _truthy(recipe.get("fp16")):
            raise ConfigError(f"{where}: bf16 and fp16 are both true; set one of them")
        dtypes = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16",
                  "float32": "fp32", "fp32": "fp32", "float": "fp32"}
        dtype = recipe.get("torch_dtype", recipe.get("dtype"))
        if _truthy(recipe.get("bf16")):
            out["model.precision"] = "bf16"
        elif _truthy(recipe.get("fp16")):
            out["model.precision"] = "fp16"
        elif dtype not in (None, "auto"):
            if str(dtype) not in dtypes:
                raise ConfigError(f"{where}: torch_dtype {dtype!r} is not one of {', '.join(dtypes)} or auto")
            out["model.precision"] = dtypes[str(dtype)]
    if _truthy(recipe.get("use_flash_attention_2")) and "model.attn_implementation" not in out:
        out["model.attn_implementation"] = "flash_attention_2"
    if "max_steps" in recipe:
        steps = recipe["max_steps"]
        out["train.steps"] = None if steps is None or (str(steps).lstrip("-").isdigit() and int(steps) < 0) else steps
    if "lr_scheduler_type" in recipe:
        name = recipe["lr_scheduler_type"]
        out["train.scheduler"] = {"constant_with_warmup": "constant", "cosine_with_min_lr": "cosine"}.get(name, name)
    if ("adam_beta1" in recipe or "adam_beta2" in recipe) and "train.adam_betas" not in out:
        default = TrainConfig.adam_betas  # the beta not given keeps its default (TRL's too)
        out["train.adam_betas"] = [recipe.get("adam_beta1", default[0]), recipe.get("adam_beta2", default[1])]
    _convert_reference_keys(recipe, out, where)
    for key in ("preprocessing_num_workers", "dataset_num_proc"):
        if recipe.get(key) is not None:
            out["data.num_proc"] = recipe[key]
    if "dataset_splits" in recipe:
        splits = recipe["dataset_splits"]
        splits = [splits] if isinstance(splits, str) else list(splits or [])
        train = [x for x in splits if "train" in str(x)]
        test = [x for x in splits if "test" in str(x)]
        if train:
            out["data.split"] = train[0]
        if test:
            out["data.eval_split"] = test[0]
    return out


# TRL's DPOConfig defaults of TR-DPO's refresh (Gorbatovski et al. 2024), used when sync_ref_model is on.
TRL_SYNC_STEPS, TRL_MIXUP_ALPHA = 512, 0.6


def _convert_reference_keys(recipe: dict[str, Any], out: dict[str, Any], where: str) -> None:
    """TRL's reference switches -> model.reference / model.ref_refresh_*: ``reference_free`` -> none,
    ``precompute_ref_log_probs`` -> precomputed, ``sync_ref_model`` (with ``ref_model_sync_steps``,
    ``ref_model_mixup_alpha``) -> a refresh every so many steps. Without ``sync_ref_model: true`` the
    two refresh settings do nothing (as in TRL) and are listed as unused."""
    on = [k for k in ("reference_free", "precompute_ref_log_probs", "sync_ref_model") if _truthy(recipe.get(k))]
    if len(on) > 1:
        raise ConfigError(f"{where}: {' and '.join(on)} are {'both' if len(on) == 2 else 'all'} true, but each "
                          "picks a different reference; set one of them")
    if "reference_free" in on:
        out.setdefault("model.reference", "none")
    elif "precompute_ref_log_probs" in on:
        out.setdefault("model.reference", "precomputed")
    for key, field_key, default in (("ref_model_sync_steps", "model.ref_refresh_steps", TRL_SYNC_STEPS),
                                    ("ref_model_mixup_alpha", "model.ref_refresh_mix", TRL_MIXUP_ALPHA)):
        if "sync_ref_model" in on:
            out.setdefault(field_key, recipe.get(key, default))
        elif key in recipe:
            out[f"unused.{key}"] = recipe[key]


def unused_keys(flat: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split off the recipe keys dpokit does not use (listed in one warning)."""
    unused = sorted(k.split(".", 1)[1] for k in flat if k.startswith("unused."))
    return {k: v for k, v in flat.items() if not k.startswith("unused.")}, unused


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


def _lookup_key(norm: str) -> str | None:
    """The dotted key (or ``recipe.*`` / ``unused.*``) of a normalised spelling, else None."""
    if norm in KEYS:
        return KEYS[norm]
    if norm in RECIPE_KEYS:
        return f"recipe.{norm}"
    if norm in HF_UNUSED_KEYS:
        return f"unused.{norm}"
    return None


def closest_name(name: str, names: Mapping[str, str], short: Iterable[str] = (), cutoff: float = 0.6) -> str | None:
    """The spelling in ``names`` ({spelling: what it sets}) that an unknown ``name`` most likely meant:
    the one thing that ``name`` begins among the ``short`` spellings (``batch`` -> ``batch_size``), else
    among all, else the closest spelling (difflib). Also used for `dpokit generate`'s flags."""
    for pool in (short, names):
        hits = sorted((n for n in pool if n in names and n.startswith(name)), key=len)
        if hits and len({names[n] for n in hits}) == 1:
            return hits[0]
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=cutoff)
    return close[0] if close else None


def closest_key(norm: str, cutoff: float = 0.6) -> str | None:
    """The accepted key closest to an unknown one; under a section (``train.lern_rate``), a field
    of that section, shown dotted (``train.lr``)."""
    section, dot, name = norm.partition(".")
    if dot and section in SECTIONS:
        choices = {f.name: f"{section}.{f.name}" for f in fields(SECTIONS[section])}
        choices.update({alias: key for alias, key in ALIASES.items() if key.startswith(f"{section}.")})
        if close := closest_name(name, choices, SHORT_FLAGS, cutoff):
            return choices[close]
    return closest_name(norm, {**KEYS, **{s: s for s in SECTIONS}}, SHORT_FLAGS, cutoff)


def _normalise(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def resolve_key(key: str, where: str) -> str:
    """The dotted key for ``key`` (any accepted spelling), or a ConfigError naming the closest one."""
    norm = _normalise(key)
    if (found := _lookup_key(norm)) is not None:
        return found
    close = closest_key(norm)
    suggestion = f"--{close.replace('_', '-')}" if close and where == "command line" else close
    hint = f"; did you mean '{suggestion}'?" if close else ""
    shown = f"--{norm.replace('_', '-')}" if where == "command line" else key
    raise ConfigError(f"unknown key '{shown}' in {where}{hint} (`dpokit train --help` lists them all)")


# Keys that mark a flat YAML file as a Hugging Face / TRL / alignment-handbook recipe.
RECIPE_MARKERS = frozenset({"model_name_or_path", "per_device_train_batch_size", "gradient_accumulation_steps",
                            "num_train_epochs", "dataset_name", "dataset_mixture", "dataset_mixer", "output_dir",
                            *RECIPE_KEYS}) | (HF_UNUSED_KEYS - set(KEYS))


def is_hf_recipe(data: dict[str, Any]) -> bool:
    """A flat mapping written for TRL / the alignment-handbook (``model_name_or_path``, ...)."""
    return any(str(k) in RECIPE_MARKERS for k in data) and not any(str(k) in SECTIONS for k in data)


def flatten_yaml(data: Any, where: str, lines: dict[str, int] | None = None) -> dict[str, Any]:
    """A YAML mapping (sections and/or flat keys) -> {dotted key: value}.

    Every unknown key is gathered into one ConfigError, each with its closest key and (given
    ``lines``, {key as written: line}) its line. In a TRL / alignment-handbook recipe a flat key
    that is not close to any dpokit key is unused (listed in one warning), not an error.
    """
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(data).__name__}")
    lines = lines or {}
    recipe = is_hf_recipe(data)
    flat: dict[str, Any] = {}
    unknown: list[tuple[str, str | None]] = []  # (key as written, closest accepted key)

    def add(written: str, value: Any) -> None:
        norm = _normalise(written)
        if (found := _lookup_key(norm)) is not None:
            flat[found] = value
        elif recipe and "." not in norm and closest_key(norm, cutoff=0.85) is None:
            flat[f"unused.{norm}"] = value  # another trainer's option: it runs as is, with a warning
        else:
            unknown.append((written, closest_key(norm)))

    for key, value in data.items():
        key = str(key)
        if key in SECTIONS and isinstance(value, dict):
            for sub, subvalue in value.items():
                add(f"{key}.{sub}", subvalue)
        else:
            add(key, value)
    if unknown:
        raise ConfigError(_unknown_keys_message(unknown, where, lines))
    return _convert_recipe_keys(flat, where)


def _unknown_keys_message(unknown: list[tuple[str, str | None]], where: str, lines: dict[str, int]) -> str:
    def describe(key: str, close: str | None) -> str:
        return f"'{key}'" + (f"; did you mean '{close}'?" if close else " (no key is close)")

    if len(unknown) == 1:
        key, close = unknown[0]
        line = f", line {lines[key]}" if key in lines else ""
        hint = f"; did you mean '{close}'?" if close else ""
        return f"unknown key '{key}' in {where}{line}{hint} (`dpokit train --help` lists them all)"
    items = [f"  {f'line {lines[k]}: ' if k in lines else ''}{describe(k, c)}" for k, c in unknown]
    return "\n".join([f"{len(unknown)} unknown keys in {where} (`dpokit train --help` lists them all):", *items])


def _key_lines(text: str) -> dict[str, int]:
    """{key as written (``section.field`` when nested under a section): line} of a YAML mapping."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key, value in root.value:
        name = str(key.value)
        lines.setdefault(name, key.start_mark.line + 1)
        if name in SECTIONS and isinstance(value, yaml.MappingNode):
            for sub, _ in value.value:
                lines.setdefault(f"{name}.{sub.value}", sub.start_mark.line + 1)
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


def demo_recipe(name: str = "demo") -> dict[str, Any]:
    """A built-in recipe: ``demo`` (used when neither a config file nor ``--data`` is given) or
    ``sft`` (the defaults of ``dpokit sft``)."""
    text = resources.files("dpokit").joinpath(f"recipes/{name}.yaml").read_text(encoding="utf-8")
    return flatten_yaml(yaml.safe_load(text), f"the built-in {name} recipe")


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
            if (key in bools or key.startswith(("recipe.", "unused."))) and (i >= len(argv) or argv[i].startswith("--")):
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


def _flag(key: str) -> str:
    """The shortest command-line flag of a dotted key (``loss.beta`` -> ``--beta``)."""
    name = key.split(".", 1)[-1]
    return f"--{(name if KEYS.get(name) == key else key).replace('_', '-')}"


def _expected(key: str) -> str | None:
    """What a field accepts, in words (``a number (float)``), from its type; None when not simple."""
    section, _, name = key.partition(".")
    types = {f.name: str(f.type) for f in fields(SECTIONS[section])} if section in SECTIONS else {}
    parts = [t.strip() for t in types.get(name, "").split("|")]
    nullable = " or null" if "None" in parts else ""
    parts = [t for t in parts if t != "None"]
    words = {"float": "a number (float, e.g. 0.1)", "int": "a whole number (int, e.g. 8)", "bool": "true or false",
             "str": "a string", "list[str]": "a list of strings (e.g. [q_proj, v_proj])",
             "list[float]": "a list of numbers (e.g. [1.0, 0.5])", "tuple[float, float]": "two numbers (e.g. [0.9, 0.999])"}
    if len(parts) == 1 and parts[0] in words:
        return words[parts[0]] + nullable
    if len(parts) == 1 and parts[0].startswith("Literal["):
        return "one of " + ", ".join(ast.literal_eval(parts[0][len("Literal"):])) + nullable
    return None


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
        expected = _expected(key)
        if expected is not None:
            raise ConfigError(f"bad value {value!r} for '{key}' ({_flag(key)}): expects {expected}") from None
        raise ConfigError(f"bad value {value!r} for '{key}': {first[0] if first else message}") from None
    try:
        parts = parser.instantiate(namespace)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    return Config(**{s: parts[s] for s in SECTIONS})


def resolve(argv: list[str], command: str = "train") -> tuple[Config, set[str], dict[str, Any]]:
    """Build the config for ``dpokit train`` (or ``dpokit sft``, whose recipe is the first layer)
    from argv; returns (config, switches, flat layers)."""
    positional, cli, switches = parse_cli(argv)
    flat: dict[str, Any] = demo_recipe("sft") if command == "sft" else {}
    if not positional and "data.path" not in cli and "data.mixture" not in cli:
        if command == "train":
            flat.update(demo_recipe())
        flat["_demo"] = True
    for path in positional:
        flat.update(load_yaml(path))
    flat.update(_convert_recipe_keys({k: _cli_value(v) if isinstance(v, str) else v for k, v in cli.items()},
                                     "the command line"))
    demo = flat.pop("_demo", False)
    flat, unused = unused_keys(flat)
    config = build_config(flat)
    return config, switches, {"demo": demo, "unused": unused}


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


def help_text(command: str = "train") -> str:
    short: dict[str, list[str]] = {}  # dotted key -> its short flags
    for name in SHORT_FLAGS:
        short.setdefault(KEYS[name], []).append(f"--{name.replace('_', '-')}")
    defaults = {f"{s}.{f.name}": f.default for s, cls in SECTIONS.items() for f in fields(cls)}
    trl = ("TRL / alignment-handbook names work too, as flags and as the flat keys of a YAML recipe: "
           "--learning_rate, --per_device_train_batch_size, --gradient_accumulation_steps, --num_train_epochs, "
           "--model_name_or_path, --dataset_name, --output_dir, --max_steps, --bf16, --lr_scheduler_type, "
           "--adam_beta1, --precompute_ref_log_probs, --sync_ref_model, ...; those dpokit has no use for are "
           "named in a warning.")
    lines = [
        f"usage: dpokit {command} [CONFIG.yaml] [--KEY VALUE ...] [--print-config]",
        "",
        "With no config file and no --data, runs the built-in demo (sample pairs, tiny model).",
        "Keys: --section.field, or a field name alone when unique, or a short flag; '-' or '_' alike.",
        *textwrap.wrap(trl, 100),
        "",
        "common flags (each is a key listed below):",
        *(f"  {' | '.join(flags):<24} {key} (default: {defaults[key]})" for key, flags in short.items()),
    ]
    for section, cls in SECTIONS.items():
        lines += ["", f"{section}: {cls.__doc__.strip()}"]
        docs = field_docs(cls)
        for f in fields(cls):
            key = f"{section}.{f.name}"
            flags = [*short.get(key, []), f"--{key.replace('_', '-')}"]
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            lines.append(f"  {' | '.join(flags)}  (default: {default})")
            lines += textwrap.wrap(docs.get(f.name, ""), 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)
