"""dpokit against TRL's ``DPOTrainer`` on the same model, data and hyperparameters.

One command (``make bench``, or ``python benchmarks/run.py``) builds the inputs locally
(``assets.py``: 160 HH-RLHF pairs, a byte-level BPE tokenizer, a ~27M-parameter random Llama),
then runs each case as a whole process, imports and data preparation included:
``dpokit train`` at its defaults and with ``--precision fp32``; TRL at its defaults and in its
fastest fp32 setting (``bf16=False, gradient_checkpointing=False``). Every case runs 20 steps x
batch 8, ``max_length`` 512, lr 5e-7, beta 0.1.

Reported per case: pairs/s (pairs trained / wall time of the whole process), steady pairs/s
(steps 2..20 only, from each tool's own step times), MFU (steady pairs/s x the useful FLOPs of
a pair, ``dpokit.flops.step_flops``: the work a prompt-once, padding-free layout needs, the same
count for both tools; over the peak of ``dpokit.peak`` at the case's precision: a cached matmul
probe on a CPU, the known dense peak of a GPU, or ``--peak-tflops``), tokens/s (pairs/s x the
mean tokens a pair holds as two ``prompt + completion`` sequences, the same count for both
tools), peak RSS (from ``wait4`` on the process), and peak GPU memory on a GPU.

``--sweep reduced|full`` adds how cost grows (``scaling.py``): pairs/s, MFU and peak RSS over
model size and over ``max_length``, dpokit against TRL, with a plot.

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
    precision: str = "fp32"  # what the case's matmuls ran in (the peak MFU is taken against)
    mfu: float | None = None  # steady-state model FLOPs utilisation (wall clock)
    cpu_steady_pairs_per_s: float | None = None  # steady pairs per CPU second (all threads)
    cpu_mfu: float | None = None  # steady useful FLOPs per CPU second over one core's peak


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


def machine() -> str:
    """CPU model, cores, the vector units that decide a CPU's peak (AMX, AVX-512 BF16), the GPU."""
    import torch

    from dpokit.peak import cpu_model

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    units = ("AMX" if "amx_bf16" in flags else "no AMX") + (
        ", AVX-512 BF16" if "avx512_bf16" in flags else ", AVX-512" if "avx512f" in flags else
        ", AVX2" if "avx2" in flags else "")
    text = f"{cpu_model()}, {cores} cores ({units}), torch threads {torch.get_num_threads()}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text + f"; torch {torch.__version__}, Python {platform.python_version()}"


def markdown(results: list[Result], cases: dict[str, Case], header: str) -> str:
    by_name = {r.name: r for r in results}
    gpu = any(r.cuda_peak_bytes for r in results)
    cpu = any(r.cpu_mfu for r in results)
    cols = ["case", "wall s", "CPU s", "pairs/s", "steady pairs/s", "MFU"]
    cols += ["steady pairs per CPU s", "MFU per CPU s"] if cpu else []
    cols += ["tokens/s", "peak RSS GiB"]
    cols += ["peak GPU GiB"] if gpu else []
    cols += ["vs TRL pairs/s", "vs TRL steady"] + (["vs TRL per CPU s"] if cpu else []) + ["vs TRL RSS"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a and b else ""

    for r in results:
        base = by_name.get(cases[r.name].baseline or "")
        base = base if base and base.returncode == 0 and r.returncode == 0 else None
        speed = [ratio(r.pairs_per_s, base and base.pairs_per_s),
                 ratio(r.steady_pairs_per_s, base and base.steady_pairs_per_s)]
        speed += [ratio(r.cpu_steady_pairs_per_s, base and base.cpu_steady_pairs_per_s)] if cpu else []
        memory = ratio(r.peak_rss_bytes, base and base.peak_rss_bytes)
        steady = f"{r.steady_pairs_per_s:.2f}" if r.steady_pairs_per_s else "-"
        row = [r.name + ("" if r.returncode == 0 else f" (failed, exit {r.returncode})"), f"{r.wall_s:.1f}",
               f"{r.cpu_s:.0f}",
               f"{r.pairs_per_s:.2f}", steady, f"{100 * r.mfu:.1f}% {r.precision}" if r.mfu else "-"]
        row += [f"{r.cpu_steady_pairs_per_s:.2f}" if r.cpu_steady_pairs_per_s else "-",
                f"{100 * r.cpu_mfu:.1f}%" if r.cpu_mfu else "-"] if cpu else []
        row += [f"{r.tokens_per_s:.0f}", f"{r.peak_rss_bytes / 2**30:.2f}"]
        row += [f"{(r.cuda_peak_bytes or 0) / 2**30:.2f}"] if gpu else []
        lines.append("| " + " | ".join(row + speed + [memory]) + " |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="where inputs and run outputs go (default: a temp dir)")
    parser.add_argument("--pairs", type=int, default=160)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=5e-7)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", default="27m", help="model of the main cases: 27m, 125m or 360m (assets.SIZES)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for MFU (default: measured on a CPU, known for common GPUs)")
    parser.add_argument("--trl-python", default=os.environ.get("DPOKIT_BENCH_TRL_PYTHON"),
                        help="Python of an environment with trl installed (default: $DPOKIT_BENCH_TRL_PYTHON)")
    parser.add_argument("--layouts", action="store_true", help="also run dpokit with each --layout")
    parser.add_argument("--only", choices=("dpokit", "trl"), default=None)
    parser.add_argument("--no-cases", action="store_true", help="run the sweep only, not the main cases")
    parser.add_argument("--defaults-only", action="store_true",
                        help="main cases: only the first TRL case and the dpokit cases compared with it")
    parser.add_argument("--sweep", choices=("none", "reduced", "full"), default="none",
                        help="how cost grows (scaling.py): reduced = a few points, full = every size and length")
    parser.add_argument("--sizes", default=None, help="sweep model sizes, e.g. 27m,125m,360m")
    parser.add_argument("--lengths", default=None, help="sweep max_length values, e.g. 256,512,1024,2048")
    parser.add_argument("--sweep-steps", type=int, default=None, help="steps of each sweep point")
    parser.add_argument("--sweep-trl", default=None,
                        help="sweep points where TRL runs too (size@length, comma-separated; default: all)")
    parser.add_argument("--results", default=str(HERE / "results.json"), help="JSON results file")
    parser.add_argument("--markdown", default=str(HERE / "RESULTS.md"), help="Markdown table file")
    parser.add_argument("--plot", default=str(HERE / "scaling.png"), help="the sweep's plot (PNG)")
    return parser


def main(argv: list[str] | None = None, cases: list[Case] | None = None, trl_cases: list[Case] | None = None) -> int:
    """The benchmark; ``cases`` / ``trl_cases`` replace the CPU cases (``gpu.py`` passes its own)."""
    args = parser().parse_args(argv)
    trl_cases = TRL_CASES if trl_cases is None else trl_cases
    work = Path(args.work or tempfile.mkdtemp(prefix="dpokit-bench-"))
    env = {**os.environ, "DPOKIT_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(work / "hf")}
    assets = build_assets(work / "assets", args.pairs, args.size)
    load = workload(assets["model"], assets["data"], args.max_length)
    cases = dpokit_cases(args.layouts) if cases is None else cases
    cases = [] if args.only == "trl" or args.no_cases else cases
    if args.defaults_only:
        trl_cases = trl_cases[:1]
        cases = [c for c in cases if c.baseline == trl_cases[0].name]
    if args.trl_python and args.only != "dpokit" and not args.no_cases:
        # each TRL case right before the dpokit cases compared with it
        cases = [c for trl in trl_cases for c in [trl] + [d for d in cases if d.baseline == trl.name]]
    elif not args.trl_python and args.only != "dpokit":
        print("TRL cases skipped: set DPOKIT_BENCH_TRL_PYTHON to the Python of an environment with trl "
              "installed (e.g. python3 -m venv /work/trl-venv && /work/trl-venv/bin/pip install trl)")
    results = [run_case(c, args, assets, work, env, load) for c in cases]
    header = (f"Machine: {machine()}. {args.pairs} HH-RLHF pairs, {load.params / 1e6:.1f}M-parameter Llama (random "
              f"init, byte-level BPE vocab 8,192), {args.steps} steps x batch {args.batch_size}, max_length "
              f"{args.max_length}, lr {args.lr}, beta {args.beta}; {load.tokens_per_pair:.0f} tokens per pair "
              f"(chosen + rejected sequences), {load.flops_per_pair / 1e9:.1f} GFLOP of useful work per pair. "
              "Whole processes: wall time includes imports and data preparation. MFU: steady pairs/s x useful "
              f"FLOPs per pair / peak ({peak_notes() or 'no peak known'}).")
    table = markdown(results, {c.name: c for c in cases}, header) if results else ""
    sweep = []
    if args.sweep != "none":
        sys.modules.setdefault("run", sys.modules[__name__])  # one module (and one peak cache) for both
        import scaling

        sweep = scaling.run_sweep(args, work, env, trl_cases[0] if args.trl_python else None, results)
        table += "\n" + scaling.markdown(sweep) + f"\n![pairs/s, MFU and peak RSS]({Path(args.plot).name})\n"
        scaling.plot(sweep, args.plot, machine())
    print("\n" + table)
    Path(args.markdown).write_text(table)
    Path(args.results).write_text(json.dumps({"machine": machine(), "args": vars(args), "peaks": peak_notes(),
                                              "results": [asdict(r) for r in results],
                                              "sweep": [asdict(r) for r in sweep]}, indent=2))
    return 0 if all(r.returncode == 0 for r in results + [p.result for p in sweep]) else 1


if __name__ == "__main__":
    sys.exit(main())
