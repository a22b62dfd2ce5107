"""TRL's ``DPOTrainer`` on the benchmark's model and pairs: run with TRL's own Python.

Called by ``run.py`` as a whole process (imports and data preparation count). Writes a JSON
report with the time of each optimizer step and, on a GPU, the peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--model", "--data", "--output", "--report"):
        parser.add_argument(name, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=5e-7)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--bf16", choices=("true", "false"), default=None, help="unset: TRL's default")
    parser.add_argument("--gradient-checkpointing", choices=("true", "false"), default=None,
                        help="unset: TRL's default")
    args = parser.parse_args()

    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    step_times: list[float] = []
    step_cpu_times: list[float] = []  # the process's CPU seconds (all threads) at each step's end

    class StepClock(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            step_times.append(time.time())
            step_cpu_times.append(time.process_time())

    options = {}
    if args.bf16 is not None:
        options["bf16"] = args.bf16 == "true"
    if args.gradient_checkpointing is not None:
        options["gradient_checkpointing"] = args.gradient_checkpointing == "true"
    config = DPOConfig(
        output_dir=args.output, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        max_length=args.max_length, learning_rate=args.lr, beta=args.beta, report_to="none",
        save_strategy="no", logging_steps=10, dataloader_num_workers=0, seed=42,
        use_cpu=not torch.cuda.is_available(), **options)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = load_dataset("json", data_files=args.data, split="train")
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[StepClock()])
    shapes: list[list[int]] = []  # (rows, width) of each batch the policy sees in training
    trainer.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(list(kwargs["input_ids"].shape)) if module.training else None,
        with_kwargs=True)
    trainer.train()
    report = {"step_times": step_times, "step_cpu_times": step_cpu_times, "threads": torch.get_num_threads(),
              "bf16": config.bf16, "batch_shapes": shapes,
              "gradient_checkpointing": config.gradient_checkpointing}
    if torch.cuda.is_available():
        report["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    with open(args.report, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
