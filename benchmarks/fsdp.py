"""2-process FSDP2 against DDP: step time and peak memory per rank, same model, data and steps.

``python benchmarks/fsdp.py`` builds the inputs of ``benchmarks/run.py`` (``assets.py``: HH-RLHF
pairs, an 8k BPE tokenizer, the 27.7M-parameter Llama; ``--large``: the ~120M one of
``reference_memory.py``), then runs ``dpokit train`` under
``torchrun --nproc_per_node 2`` once per case and reads its ``metrics.jsonl``:

* **s/step**: the median of ``seconds_per_step`` over the steps after the first (the first pays for
  warm-up); and **tokens/s** the same way;
* **peak GiB rank R**: each rank's peak memory as the run logs it (``memory/rankR_peak_gb``: the
  peak resident set on a CPU, ``max_memory_allocated`` on a GPU).

Cases: ``ddp``; ``fsdp`` (FSDP2, fp32); ``fsdp-offload`` (shards in CPU memory; GPUs only, on a CPU
the shards are in CPU memory already and the case is left out). Every case is fp32, the reference a frozen copy (sharded
under FSDP2), gradient checkpointing on. On a CPU the processes share the cores and the peak
resident set counts the whole process (Python, torch, tokenizer, data), so FSDP2's saving is the
weights, gradients and optimizer state it does not replicate: about 3/4 of 16 bytes per parameter
for the policy plus half the reference's 4 bytes, at 2 ranks. ``--device cuda`` runs the same on
two GPUs. The table is printed and written, with the raw figures, to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from assets import build_assets  # noqa: E402
from reference_memory import build_large_model  # noqa: E402

CASES: dict[str, list[str]] = {
    "ddp": ["--parallelism", "ddp"],
    "fsdp": ["--parallelism", "fsdp"],
    "fsdp-offload": ["--parallelism", "fsdp", "--fsdp-offload", "true"],
}


def run_case(name: str, extra: list[str], inputs: dict[str, str], args: argparse.Namespace, work: Path) -> dict:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.procs),
           "-m", "dpokit", "train", "--data", inputs["data"], "--model", inputs["model"], "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--precision", "fp32",
           "--logging-steps", "1", "--progress", "false", "--save-strategy", "no", "--device", args.device,
           "--output", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "DPOKIT_CACHE": str(work / "cache")}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "seconds_per_step" in r]
    steady = rows[1:] or rows
    return {"case": name, "s_per_step": statistics.median(r["seconds_per_step"] for r in steady),
            "tokens_per_s": statistics.median(r["tokens_per_second"] for r in steady),
            "peak_gb": [rows[-1][f"memory/rank{k}_peak_gb"] for k in range(args.procs)],
            "final_loss": rows[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per rank and step")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each rank")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--large", action="store_true", help="the ~120M-parameter model of reference_memory.py, "
                        "where weights, gradients and optimizer state outweigh the process's other memory")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--work", type=Path, default=None, help="keep inputs and runs here")
    parser.add_argument("--out", type=Path, default=HERE / "fsdp_results.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="dpokit-fsdp-bench-"))
    inputs = build_assets(work / "assets", num_pairs=max(64, args.steps * args.batch_size * args.procs))
    if args.large:
        inputs["model"] = build_large_model(work / "assets", inputs["model"])
    cases = [name for name in args.cases if not (name == "fsdp-offload" and args.device == "cpu")]
    results = [run_case(name, CASES[name], inputs, args, work) for name in cases]
    print(f"{args.procs} processes on {args.device}, {args.steps} steps x {args.batch_size} pairs per rank, "
          f"max_length {args.max_length}, {'~120M' if args.large else '27.7M'}-parameter Llama, fp32")
    print(f"{'case':14} {'s/step':>8} {'tokens/s':>9} " + " ".join(f"{f'peak GiB r{k}':>12}" for k in range(args.procs)))
    for r in results:
        print(f"{r['case']:14} {r['s_per_step']:8.3f} {r['tokens_per_s']:9.0f} "
              + " ".join(f"{g:12.3f}" for g in r["peak_gb"]))
    args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                   indent=2))


if __name__ == "__main__":
    main()
