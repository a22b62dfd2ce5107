"""Configuration: one typed dataclass per concern, a docstring per field, one default each: the one
source of truth of every setting, read from YAML and flags by ``configure.py`` (jsonargparse), from TRL /
Hugging Face keys by ``recipes.py``. No other dpokit module is imported here: checks that need the loss
registry or the data readers run where the config is read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# The Hugging Face Trainer's ``lr_scheduler_type`` values (a test keeps it equal to transformers.SchedulerType).
SchedulerName = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                        "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                        "warmup_stable_decay", "greedy"]


def _check(ok: bool, message: str) -> None:
    if not ok:  # a ValueError: the reading layer turns it into a ConfigError
        raise ValueError(message)


def _check_interval(key: str, value: float | None) -> None:
    """Steps between events: a whole number, or below 1 a fraction of the run (the Trainer's reading)."""
    _check(value is None or 0 <= value < 1 or (value > 0 and float(value).is_integer()),
           f"{key} must be a whole number of steps, or a fraction of the run below 1 (got {value})")


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
    """Attention kernel passed to transformers (``sdpa``, ``eager``, ``dpokit_eager``,
    ``flash_attention_2``). None: the library default, except that training a Llama-family model
    on a CPU takes ``dpokit_eager`` (``lean_attention.py``) where a one-off probe finds it clearly
    faster than SDPA at ``max_length`` (``attention.py``; the run's first line says which)."""
    gradient_checkpointing: bool = True
    """Recompute each layer's activations in the backward pass instead of keeping them: much less
    memory for about 10-30% more compute (TRL's default too). ``false`` when memory is plentiful."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    compile: bool = False
    """Compile the decoders (the policy's, and a frozen reference's) with ``torch.compile``: the first
    steps compile (about a minute on a CPU), later ones run faster; for long runs."""
    reference: Literal["auto", "copy", "model", "lora", "precomputed", "none"] = "auto"
    """Where the reference log-probs come from (``reference.py``): ``copy``, a frozen copy of the starting
    policy; ``model``, the separate model ``ref_model``; ``lora``, the policy's base with its LoRA adapters
    off (no second copy); ``precomputed``, one pass before training, cached on disk, no reference model in
    memory while training; ``none``: reference-free losses, or reference log-probs of 0 (TRL's
    ``reference_free``). ``auto``: none for reference-free losses, else ``model`` when ``ref_model`` is
    set, ``lora`` with LoRA, else ``copy``."""
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
        if self.load_in_4bit:
            self.lora = True
        _check(bool(self.name_or_path), "model.name_or_path must not be empty")
        _check(self.weights is None or Path(self.weights).is_dir(), f"--weights {self.weights}: no such directory; "
               "pass an earlier run's output, for example dpo_checkpoints/final")
        _check(self.reference != "model" or bool(self.ref_model),
               "model.reference 'model' needs model.ref_model (--ref-model PATH_OR_ID)")
        _check(not (self.ref_model and self.reference in ("copy", "lora", "none")), "model.ref_model is set but "
               f"model.reference is '{self.reference}', which does not use it; drop one of them")
        _check(self.reference != "lora" or self.lora,
               "model.reference 'lora' needs LoRA training (--lora true or --load-in-4bit true)")
        _check(not (self.reference == "copy" and self.load_in_4bit), "a 4-bit model cannot be copied for the "
               "reference; use model.reference lora (the default with load_in_4bit) or precomputed")
        _check(self.ref_refresh_steps is None or self.ref_refresh_steps >= 1, "model.ref_refresh_steps must be at least 1")
        _check(0.0 < self.ref_refresh_mix <= 1.0, "model.ref_refresh_mix must be in (0, 1]")
        _check(self.lora_r >= 1 and self.lora_alpha > 0, "model.lora_r must be at least 1 and model.lora_alpha positive")
        _check(0.0 <= self.lora_dropout < 1.0, "model.lora_dropout must be in [0, 1)")


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
    """How pairs are laid out in a batch (``data/collate.py``); all give the same log-probs. ``prefix``:
    ``[prompt][chosen][rejected]`` per pair, the prompt computed once (fastest when prompts are long);
    ``packed``: sequences end to end, no padding (TRL's ``padding_free``); ``padded``: classic 2B rows."""
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
        _check(0.0 <= self.eval_fraction < 1.0, "data.eval_fraction must be in [0, 1)")
        _check(self.max_length >= 2, "data.max_length must be at least 2")
        _check(self.max_prompt_length is None or self.max_prompt_length < self.max_length,
               "data.max_prompt_length must be smaller than data.max_length")
        for name in ("sample_size", "num_proc", "max_completion_length"):
            _check(getattr(self, name) is None or getattr(self, name) >= 1, f"data.{name} must be at least 1")
        if self.mixture is not None:  # the mixture's own keys are checked where it is read (data/mixture.py)
            _check(self.path is None, "set data.path (--dataset) or data.mixture (dataset_mixture), not both")
            _check(not (isinstance(self.mixture, dict) and self.mixture.get("test_split_size") and self.eval_fraction),
                   "set data.eval_fraction or the mixture's test_split_size, not both")


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
        # The loss name, the default beta and the weights' count: `dpokit.losses.resolve_loss_config`.
        _check(self.beta is None or self.beta > 0, "loss.beta must be positive")
        _check(0.0 <= self.label_smoothing < 0.5, "loss.label_smoothing must be in [0, 0.5)")
        _check(self.orpo_lambda > 0 and self.discopop_tau > 0, "loss.orpo_lambda and loss.discopop_tau must be positive")
        _check(self.rpo_alpha >= 0, "loss.rpo_alpha must be 0 or more")
        if self.loss_weights is not None:
            _check(all(w >= 0 for w in self.loss_weights), "loss.loss_weights must be 0 or more")
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
    eval_batch_size: int | None = None
    """Pairs per evaluation batch (TRL's ``per_device_eval_batch_size``); None: ``batch_size``."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; effective batch = batch_size x grad_accum x processes."""
    lr: float = 5e-7
    """Peak learning rate. DPO on a pretrained model wants it small (1e-7 to 5e-6)."""
    scheduler: SchedulerName = "linear"
    """Any of the Trainer's ``lr_scheduler_type`` values (``transformers.get_scheduler``): ``linear`` and
    ``cosine`` decay to 0 after warmup, ``constant`` has no warmup, ``constant_with_warmup``, ``inverse_sqrt``,
    ``cosine_with_min_lr``, ``reduce_lr_on_plateau`` (stepped by ``metric_for_best_model`` at evaluations), ..."""
    scheduler_kwargs: dict[str, Any] | None = None
    """Extra arguments of the learning-rate schedule (the Trainer's ``lr_scheduler_kwargs``), e.g.
    ``{min_lr_rate: 0.1}`` for ``cosine_with_min_lr``."""
    warmup_steps: int | float | None = None
    """Warmup steps from 0 to ``lr`` (below 1: a fraction of the run, as transformers 5 reads it); None:
    ``warmup_ratio`` of the run."""
    warmup_ratio: float = 0.1
    """Warmup as a fraction of the run's optimizer steps (rounded up), when ``warmup_steps`` is None."""
    optim: str = "adamw_torch"
    """Optimizer, by the Trainer's names (``optim.py``): ``adamw_torch``, ``adamw_torch_fused``, ``adafactor``,
    ``sgd``, ``adagrad``, ``rmsprop``; bitsandbytes' ``adamw_bnb_8bit``, ``paged_adamw_32bit``, ``lion_8bit``, ..."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for AdamW)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's betas (Lion's too)."""
    adam_epsilon: float = 1e-8
    """Adam's epsilon."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this (0 turns clipping off); ``grad_norm`` is logged before clipping."""
    seed: int = 42
    """Seed for shuffling, held-out splits and initialisation."""
    eval_strategy: Literal["steps", "epoch", "no"] = "steps"
    """When to evaluate (given eval data): every ``eval_steps`` (and at the end), at each epoch's
    end, or never."""
    eval_steps: int | float | None = None
    """Evaluate every this many optimizer steps (below 1: a fraction of the run, rounded up, as the
    Trainer reads it) and at the end; None: at the end only."""
    eval_on_start: bool = False
    """Also evaluate before the first step, to see where the policy starts."""
    resume: str | None = None
    """Resume a stopped run: ``latest`` (the newest complete ``checkpoint-N`` in the output
    directory) or a checkpoint directory (TRL's ``resume_from_checkpoint: true | PATH``)."""
    early_stopping_patience: int | None = None
    """Stop when ``metric_for_best_model`` has not improved for this many evaluations; None: never."""
    early_stopping_threshold: float = 0.0
    """How much ``metric_for_best_model`` must improve to count as an improvement."""
    metric_for_best_model: str = "eval_loss"
    """The metric that picks the best checkpoint and drives early stopping (an ``eval_`` name; ``loss``
    reads as ``eval_loss``, as in the Trainer)."""
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
        for name in ("batch_size", "grad_accum", "steps", "eval_batch_size", "early_stopping_patience"):
            _check(getattr(self, name) is None or getattr(self, name) >= 1, f"train.{name} must be at least 1")
        _check(self.epochs is None or self.epochs > 0, "train.epochs must be positive")
        _check(self.lr > 0 and self.adam_epsilon > 0, "train.lr and train.adam_epsilon must be positive")
        _check(0.0 <= self.warmup_ratio < 1.0, "train.warmup_ratio must be in [0, 1)")
        _check_interval("train.warmup_steps", self.warmup_steps)
        _check_interval("train.eval_steps", self.eval_steps)
        self.metric_for_best_model = "eval_" + self.metric_for_best_model.removeprefix("eval_")
        self.adam_betas = tuple(self.adam_betas)


@dataclass
class OutputConfig:
    """Where results go, and what is logged."""

    dir: str = "dpo_checkpoints"
    """Output directory: ``final/`` (the model), ``checkpoint-N/``, ``metrics.jsonl``, ``config.yaml``."""
    logging_steps: int | float = 10
    """Log metrics every this many optimizer steps (below 1: a fraction of the run, rounded up); the
    first and last steps are always logged."""
    logging_strategy: Literal["steps", "epoch", "no"] = "steps"
    """When to log training metrics: every ``logging_steps``, at each epoch's end, or only the first
    and last steps."""
    save_steps: int | float = 500
    """Save a checkpoint every this many optimizer steps (below 1: a fraction of the run, rounded up);
    0 saves only the final model."""
    save_strategy: Literal["steps", "epoch", "no"] = "steps"
    """When to save checkpoints: every ``save_steps``, at each epoch's end, or never (``final/`` is
    always written)."""
    save_total_limit: int | None = None
    """Keep only the newest this many checkpoints (the best one is kept besides); None: keep all."""
    progress: bool = True
    """Show a progress bar with ETA on the console (a terminal or a notebook; output piped to a log
    file gets the step lines alone)."""
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
        _check(self.logging_steps > 0, "output.logging_steps must be positive")
        _check_interval("output.logging_steps", self.logging_steps)
        _check_interval("output.save_steps", self.save_steps)
        _check(self.save_total_limit is None or self.save_total_limit >= 1,
               "output.save_total_limit must be at least 1 (None keeps every checkpoint)")
        _check(self.peak_tflops is None or self.peak_tflops > 0, "output.peak_tflops must be positive")


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "loss": LossConfig, "train": TrainConfig,
                             "output": OutputConfig}


@dataclass
class Config:
    """A whole run's configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return {**(d := asdict(self)), "train": {**d["train"], "adam_betas": list(self.train.adam_betas)}}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")
