"""Peak memory of whole ``dpokit train`` processes under each reference strategy, same model and data.

``python benchmarks/reference_memory.py`` builds the inputs of ``benchmarks/run.py`` (``assets.py``:
HH-RLHF pairs and an 8k BPE tokenizer) and a random Llama of ~120M parameters (hidden 1024, 8
layers: fine-tuning's usual regime, where weights, gradients and optimizer state outweigh the
activations of a small batch; ``--small`` uses the 27.7M model of ``run.py`` instead), then runs
one process per case and reads its peak resident memory from ``wait4`` (the kernel's high-water
mark of the whole process: imports, data, model, the precompute pass, training and the final save):

* ``copy``: full fine-tuning with a frozen copy of the policy as the reference (the default);
* ``precomputed``: full fine-tuning, reference log-probs computed in one pass before training
  (with the policy itself) and no reference model while training;
* ``lora``: LoRA adapters, the reference is the base with adapters off (no second copy);
* ``lora+precomputed``: both;
* ``qlora``: 4-bit NF4 base + LoRA (needs bitsandbytes).

Each case gets an empty ``$DPOKIT_CACHE``, so the precomputed cases pay for their pass.
Every case runs in fp32 with the same steps, batch and ``max_length``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from assets import build_assets  # noqa: E402

CASES: dict[str, list[str]] = {
    "copy": ["--reference", "copy"],
    "precomputed": ["--reference", "precomputed"],
    "lora": ["--lora", "true"],
    "lora+precomputed": ["--lora", "true", "--reference", "precomputed"],
    "qlora": ["--load-in-4bit", "true"],
}


def build_large_model(root: Path, tokenizer_dir: str) -> str:
    """A ~120M-parameter random Llama (hidden 1024, 8 layers, MLP 2816) with the assets' tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = root / "model-1024x8"
    if not (path / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2816,
                             num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16,
                             max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        LlamaForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return str(path)


def run_case(flags: list[str], assets: dict[str, str], work: Path, args: argparse.Namespace) -> dict:
    """Run one ``dpokit train`` process; returns its exit code, wall time and peak RSS."""
    out = work / "out"
    cmd = [sys.executable, "-m", "dpokit", "train", "--model", assets["model"], "--data", assets["data"],
           "--output", str(out), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--max-length", str(args.max_length), "--precision", "fp32", "--lr", "1e-5", "--progress", "false",
           "--save-steps", "0", *flags]
    env = {**os.environ, "DPOKIT_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    with open(work / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    return {"returncode": os.waitstatus_to_exitcode(status), "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is in KiB on Linux
            "log": str(work / "log.txt")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="directory for inputs and outputs (default: a temp dir)")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--small", action="store_true", help="the 27.7M model of run.py instead of ~120M")
    parser.add_argument("--only", nargs="*", choices=list(CASES), help="run only these cases")
    parser.add_argument("--results", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="dpokit-refmem-"))
    assets = build_assets(work / "assets", args.pairs)
    if not args.small:
        assets["model"] = build_large_model(work / "assets", assets["model"])
    results = {}
    for name in args.only or CASES:
        case_dir = work / name.replace("+", "_")
        case_dir.mkdir(parents=True, exist_ok=True)
        results[name] = run_case(CASES[name], assets, case_dir, args)
        print(f"{name:>18}: peak RSS {results[name]['peak_rss_mb']:8.1f} MB, {results[name]['wall_s']:6.1f} s, "
              f"exit {results[name]['returncode']}", flush=True)
    base = results.get("copy", {}).get("peak_rss_mb")
    print(f"\n{args.steps} steps x batch {args.batch_size}, max_length {args.max_length}, fp32, "
          f"model {assets['model']}\n")
    print("| reference | peak RSS (MB) | vs copy | wall (s) |\n|---|---:|---:|---:|")
    for name, r in results.items():
        ratio = f"{r['peak_rss_mb'] / base:.2f}x" if base and r["returncode"] == 0 else "-"
        print(f"| {name} | {r['peak_rss_mb']:.0f} | {ratio} | {r['wall_s']:.0f} |")
    if args.results:
        Path(args.results).write_text(json.dumps(results, indent=2))
    return 0 if all(r["returncode"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
