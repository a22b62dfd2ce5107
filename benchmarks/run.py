"""dpokit against TRL's ``DPOTrainer`` on the same model, data and hyperparameters.

One command (``make bench``, or ``python benchmarks/run.py``) builds the inputs locally
(``assets.py``: 160 HH-RLHF pairs, a byte-level BPE tokenizer, a ~27M-parameter random Llama),
then runs each case as a whole process, imports and data preparation included:
``dpokit train`` at its defaults and with ``--precision fp32``; TRL at its defaults and in its
fastest fp32 setting (``bf16=False, gradient_checkpointing=False``). Every case runs 20 steps x
batch 8, ``max_length`` 512, lr 5e-7, beta 0.1.

Reported per case: pairs/s (pairs trained / wall time of the whole process), steady pairs/s
(steps 2..20 only, from each tool's own step times), tokens/s (pairs/s x the mean tokens a pair
holds as two ``prompt + completion`` sequences, the same count for both tools), peak RSS (from
``wait4`` on the process), and peak GPU memory on a GPU.

TRL is run with the Python named by ``$DPOKIT_BENCH_TRL_PYTHON`` (or ``--trl-python``), a
separate environment with ``trl`` installed; without it the TRL cases are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from assets import build_assets  # noqa: E402


@dataclass
class Case:
    name: str
    tool: str  # "dpokit" or "trl"
    flags: list[str] = field(default_factory=list)
    baseline: str | None = None  # the TRL case this one is compared with


@dataclass
class Result:
    name: str
    tool: str
    flags: list[str]
    returncode: int
    wall_s: float
    pairs_per_s: float
    steady_pairs_per_s: float | None
    tokens_per_s: float
    peak_rss_bytes: int
    cpu_s: float  # user + system CPU seconds of the process
    load_before: float  # 1-minute load average of the machine when the case started
    cuda_peak_bytes: int | None
    log: str


def dpokit_cases(layouts: bool) -> list[Case]:
    cases = [Case("dpokit (defaults)", "dpokit", [], "TRL (defaults)"),
             Case("dpokit --gradient-checkpointing false", "dpokit", ["--gradient-checkpointing", "false"],
                  "TRL (defaults)"),
             Case("dpokit --precision fp32", "dpokit", ["--precision", "fp32"], "TRL fp32, no checkpointing"),
             Case("dpokit --precision fp32 --gradient-checkpointing false", "dpokit",
                  ["--precision", "fp32", "--gradient-checkpointing", "false"], "TRL fp32, no checkpointing")]
    if layouts:
        for layout in ("padded", "packed", "prefix"):
            cases.append(Case(f"dpokit --layout {layout}", "dpokit", ["--layout", layout], "TRL (defaults)"))
            cases.append(Case(f"dpokit --layout {layout} --precision fp32", "dpokit",
                              ["--layout", layout, "--precision", "fp32"], "TRL fp32, no checkpointing"))
    return cases


TRL_CASES = [
    Case("TRL (defaults)", "trl", []),
    Case("TRL fp32, no checkpointing", "trl", ["--bf16", "false", "--gradient-checkpointing", "false"]),
]


def run_process(cmd: list[str], log_path: Path, env: dict[str, str]) -> tuple[int, float, int, float]:
    """Run ``cmd`` to its end; return (exit code, wall s, peak RSS bytes, CPU s) of the process."""
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux: the largest resident set the process reached
    return proc.returncode, wall, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def tokens_per_pair(model_dir: str, data: str, max_length: int) -> float:
    """Mean tokens of a pair as two sequences (prompt + chosen, prompt + rejected), after truncation."""
    from transformers import AutoTokenizer

    from dpokit.data.jsonl import read_preference_jsonl
    from dpokit.data.tokenize import prepare_tokenizer, tokenize_pairs

    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(model_dir))
    pairs, _ = tokenize_pairs(read_preference_jsonl(data), tokenizer, max_length)
    return sum(p.num_tokens for p in pairs) / len(pairs)


def step_rate(times: list[float], batch_size: int) -> float | None:
    """Pairs/s over steps 2..N from the end times of each step (the first step warms up)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) * batch_size / (times[-1] - times[0])


def run_case(case: Case, args: argparse.Namespace, assets: dict[str, str], work: Path, env: dict[str, str],
             tokens: float) -> Result:
    out, report = work / case.name.replace(" ", "_").replace("/", "_"), work / f"{case.name}.json".replace(" ", "_")
    common = {"steps": args.steps, "batch-size": args.batch_size, "max-length": args.max_length,
              "lr": args.lr, "beta": args.beta}
    if case.tool == "dpokit":
        cmd = [sys.executable, str(HERE / "dpokit_entry.py"), str(report), "train", "--data", assets["data"],
               "--model", assets["model"], "--output", str(out), "--progress", "false"]
    else:
        cmd = [args.trl_python, str(HERE / "trl_dpo.py"), "--report", str(report), "--data", assets["data"],
               "--model", assets["model"], "--output", str(out)]
    for key, value in common.items():
        cmd += [f"--{key}", str(value)]
    cmd += case.flags
    log = work / f"{out.name}.log"
    print(f"running {case.name}: {' '.join(cmd)}", flush=True)
    load = os.getloadavg()[0]
    # A cache of its own: each case tokenizes its data, as a first run does (no tokenized-cache hits).
    code, wall, rss, cpu = run_process(cmd, log, {**env, "DPOKIT_CACHE": str(work / "cache" / out.name)})
    if code != 0:
        print(f"  failed (exit {code}); the last lines of {log}:\n" + "".join(open(log).readlines()[-15:]))
    extra = json.loads(report.read_text()) if report.exists() else {}
    if case.tool == "dpokit":
        metrics = out / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        train_rows = [r for r in rows if "loss" in r]
        steady = None
        if len(train_rows) >= 2:  # rows at step 1 and the last step: time of the steps in between
            first, last = train_rows[0], train_rows[-1]
            steady = (last["step"] - first["step"]) * args.batch_size / (last["time"] - first["time"])
    else:
        steady = step_rate(extra.get("step_times", []), args.batch_size)
    pairs = args.steps * args.batch_size
    result = Result(case.name, case.tool, case.flags, code, wall, pairs / wall, steady, pairs / wall * tokens, rss,
                    cpu, load, extra.get("cuda_peak_bytes"), str(log))
    print(f"  {wall:.1f} s, {result.pairs_per_s:.2f} pairs/s, steady {steady or float('nan'):.2f} pairs/s, "
          f"peak RSS {rss / 2**30:.2f} GiB, {cpu:.0f} CPU s, load before {load:.2f}", flush=True)
    return result


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu}, {cores} cores"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text + f"; torch {torch.__version__}, Python {platform.python_version()}"


def markdown(results: list[Result], cases: dict[str, Case], header: str) -> str:
    by_name = {r.name: r for r in results}
    gpu = any(r.cuda_peak_bytes for r in results)
    cols = ["case", "wall s", "CPU s", "pairs/s", "steady pairs/s", "tokens/s", "peak RSS GiB"]
    cols += ["peak GPU GiB"] if gpu else []
    cols += ["vs TRL pairs/s", "vs TRL RSS"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        base = by_name.get(cases[r.name].baseline or "")
        speed = f"{r.pairs_per_s / base.pairs_per_s:.2f}x" if base and base.returncode == 0 else ""
        memory = f"{r.peak_rss_bytes / base.peak_rss_bytes:.2f}x" if base and base.returncode == 0 else ""
        steady = f"{r.steady_pairs_per_s:.2f}" if r.steady_pairs_per_s else "-"
        row = [r.name + ("" if r.returncode == 0 else f" (failed, exit {r.returncode})"), f"{r.wall_s:.1f}",
               f"{r.cpu_s:.0f}",
               f"{r.pairs_per_s:.2f}", steady, f"{r.tokens_per_s:.0f}", f"{r.peak_rss_bytes / 2**30:.2f}"]
        row += [f"{(r.cuda_peak_bytes or 0) / 2**30:.2f}"] if gpu else []
        lines.append("| " + " | ".join(row + [speed, memory]) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="where inputs and run outputs go (default: a temp dir)")
    parser.add_argument("--pairs", type=int, default=160)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=5e-7)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--trl-python", default=os.environ.get("DPOKIT_BENCH_TRL_PYTHON"),
                        help="Python of an environment with trl installed (default: $DPOKIT_BENCH_TRL_PYTHON)")
    parser.add_argument("--layouts", action="store_true", help="also run dpokit with each --layout")
    parser.add_argument("--only", choices=("dpokit", "trl"), default=None)
    parser.add_argument("--results", default=str(HERE / "results.json"), help="JSON results file")
    parser.add_argument("--markdown", default=str(HERE / "RESULTS.md"), help="Markdown table file")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="dpokit-bench-"))
    env = {**os.environ, "DPOKIT_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(work / "hf")}
    assets = build_assets(work / "assets", args.pairs)
    tokens = tokens_per_pair(assets["model"], assets["data"], args.max_length)
    cases = [] if args.only == "trl" else dpokit_cases(args.layouts)
    if args.only != "dpokit":
        if args.trl_python:  # each TRL case right before the dpokit cases compared with it
            cases = [c for trl in TRL_CASES for c in [trl] + [d for d in cases if d.baseline == trl.name]]
        else:
            print("TRL cases skipped: set DPOKIT_BENCH_TRL_PYTHON to the Python of an environment with trl "
                  "installed (e.g. python3 -m venv /work/trl-venv && /work/trl-venv/bin/pip install trl)")
    results = [run_case(c, args, assets, work, env, tokens) for c in cases]
    header = (f"Machine: {machine()}. {args.pairs} HH-RLHF pairs, 27.7M-parameter Llama (random init, "
              f"byte-level BPE vocab 8,192), {args.steps} steps x batch {args.batch_size}, max_length "
              f"{args.max_length}, lr {args.lr}, beta {args.beta}; {tokens:.0f} tokens per pair (chosen + "
              "rejected sequences). Whole processes: wall time includes imports and data preparation.")
    table = markdown(results, {c.name: c for c in cases}, header)
    print("\n" + table)
    Path(args.markdown).write_text(table)
    Path(args.results).write_text(json.dumps({"machine": machine(), "args": vars(args),
                                              "results": [asdict(r) for r in results]}, indent=2))
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
