"""One benchmark case run as a whole process and measured: the cases, the workload's useful
FLOPs, the peak, the step clocks (``run.py`` prints the tables, ``scaling.py`` sweeps sizes)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

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
    precision: str = "fp32"  # what the case's matmuls ran in (the peak MFU is taken against)
    mfu: float | None = None  # steady-state model FLOPs utilisation (wall clock)
    cpu_steady_pairs_per_s: float | None = None  # steady pairs per CPU second (all threads)
    cpu_mfu: float | None = None  # steady useful FLOPs per CPU second over one core's peak


def dpokit_cases(layouts: bool) -> list[Case]:
    cases = [Case("dpokit (defaults)", "dpokit", [], "TRL (defaults)"),
             Case("dpokit --gradient-checkpointing false", "dpokit", ["--gradient-checkpointing", "false"],
                  "TRL (defaults)"),
             Case("dpokit --compile", "dpokit", ["--compile", "true"], "TRL (defaults)"),
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


@dataclass
class Workload:
    """What one pair costs, the same for every tool: tokens as two sequences, and useful FLOPs."""

    tokens_per_pair: float  # prompt + chosen and prompt + rejected, after truncation
    flops_per_pair: float  # dpokit.flops.step_flops: prompt once, no padding, policy + reference
    params: int  # all parameters of the model


def workload(model_dir: str, data: str, max_length: int) -> Workload:
    """The mean cost of a pair of ``data`` for the model in ``model_dir`` (a frozen reference
    model runs its forward during training, as at both tools' defaults)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from dpokit.data.jsonl import read_preference_jsonl
    from dpokit.data.tokenize import prepare_tokenizer, tokenize_pairs
    from dpokit.flops import model_costs, step_flops

    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(model_dir))
    pairs, _ = tokenize_pairs(read_preference_jsonl(data), tokenizer, max_length)
    config = AutoConfig.from_pretrained(model_dir)
    costs = model_costs(config)
    lengths = [(len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
    with torch.device("meta"):  # no memory, no weights: only the count
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return Workload(sum(p.num_tokens for p in pairs) / len(pairs), step_flops(lengths, costs, costs) / len(pairs),
                    params)


def case_precision(case: Case, extra: dict, device: str) -> str:
    """The precision a case ran in: dpokit's ``--precision`` (else its ``auto`` choice), TRL's
    ``bf16`` setting as its report gives it."""
    if case.tool == "trl":
        return "bf16" if extra.get("bf16", "--bf16" not in case.flags) else "fp32"
    if "--precision" in case.flags:
        return case.flags[case.flags.index("--precision") + 1]
    import torch

    from dpokit.models import resolve_precision

    return resolve_precision("auto", torch.device(device))


_PEAKS: dict[str, object] = {}


def peak_flops(precision: str, device: str, given_tflops: float | None) -> float | None:
    """Peak FLOP/s of the device at ``precision`` (``dpokit.peak``: given, a GPU's table entry or
    the CPU's cached matmul probe); measured once per run and precision."""
    if precision not in _PEAKS:
        import torch

        from dpokit.peak import peak_flops as dpokit_peak

        _PEAKS[precision] = dpokit_peak(torch.device(device), precision, given_tflops)
    peak = _PEAKS[precision]
    return peak.flops if peak is not None else None


def peak_notes() -> str:
    return "; ".join(f"{k} {v.flops / 1e9:.0f} GFLOP/s ({v.source})" for k, v in _PEAKS.items() if v is not None)


def step_rate(times: list[float], batch_size: int) -> float | None:
    """Pairs/s over steps 2..N from the end times of each step (the first step warms up)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) * batch_size / (times[-1] - times[0])


def run_case(case: Case, args: argparse.Namespace, assets: dict[str, str], work: Path, env: dict[str, str],
             load: Workload, tag: str = "") -> Result:
    """Run one case as a whole process; ``tag`` keeps the outputs of sweep points apart."""
    slug = (tag + case.name).replace(" ", "_").replace("/", "_")
    out, report = work / slug, work / f"{slug}.json"
    common = {"steps": args.steps, "batch-size": args.batch_size, "max-length": args.max_length,
              "lr": args.lr, "beta": args.beta}
    if case.tool == "dpokit":
        cmd = [sys.executable, str(HERE / "dpokit_entry.py"), str(report), "train", "--data", assets["data"],
               "--model", assets["model"], "--output", str(out), "--progress", "false"]
        cmd += ["--device", args.device] if args.device != "cpu" else []
    else:
        cmd = [args.trl_python, str(HERE / "trl_dpo.py"), "--report", str(report), "--data", assets["data"],
               "--model", assets["model"], "--output", str(out)]
    for key, value in common.items():
        cmd += [f"--{key}", str(value)]
    cmd += case.flags
    log = work / f"{out.name}.log"
    shutil.rmtree(out, ignore_errors=True)  # an earlier run's checkpoints there would stop this one
    print(f"running {case.name}: {' '.join(cmd)}", flush=True)
    load_avg = os.getloadavg()[0]
    # A cache of its own: each case tokenizes its data, as a first run does (no tokenized-cache hits).
    code, wall, rss, cpu = run_process(cmd, log, {**env, "DPOKIT_CACHE": str(work / "cache" / out.name)})
    if code != 0:
        print(f"  failed (exit {code}); the last lines of {log}:\n" + "".join(open(log).readlines()[-15:]))
    extra = json.loads(report.read_text()) if report.exists() else {}
    # Both tools' clocks at each step's end (dpokit_entry.py, trl_dpo.py): steps 2..N
    steady = step_rate(extra.get("step_times", []), args.batch_size)
    cpu_steady = step_rate(extra.get("step_cpu_times", []), args.batch_size)
    pairs = args.steps * args.batch_size
    precision = case_precision(case, extra, args.device)
    peak = peak_flops(precision, args.device, args.peak_tflops)
    ok = code == 0 and peak
    mfu = steady * load.flops_per_pair / peak if steady and ok else None
    # Per CPU second: what the cores it was given did, whatever else ran on the machine (one
    # core's peak: the peak over the threads it was measured with).
    cpu_mfu = (cpu_steady * load.flops_per_pair / (peak / (extra.get("threads") or 1))
               if cpu_steady and ok and args.device == "cpu" else None)
    result = Result(case.name, case.tool, case.flags, code, wall, pairs / wall, steady,
                    pairs / wall * load.tokens_per_pair, rss, cpu, load_avg, extra.get("cuda_peak_bytes"), str(log),
                    precision, mfu, cpu_steady, cpu_mfu)
    print(f"  {wall:.1f} s, {result.pairs_per_s:.2f} pairs/s, steady {steady or float('nan'):.2f} pairs/s, "
          f"MFU {100 * (mfu or float('nan')):.1f}% ({precision}; {100 * (cpu_mfu or float('nan')):.1f}% per CPU "
          f"second), peak RSS {rss / 2**30:.2f} GiB, {cpu:.0f} CPU s, "
          f"load before {load_avg:.2f}", flush=True)
    return result
