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
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scaling  # noqa: E402
from assets import build_assets  # noqa: E402
from measure import (  # noqa: E402
    TRL_CASES,
    Case,
    Result,
    dpokit_cases,
    peak_notes,
    run_case,
    workload,
)


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
    parser.add_argument("--sweep-trl-case", choices=("defaults", "fastest"), default="defaults",
                        help="the TRL case of the sweep: its defaults, or its fastest setting (the last TRL case)")
    parser.add_argument("--results", default=str(HERE / "results.json"), help="JSON results file")
    parser.add_argument("--markdown", default=str(HERE / "RESULTS.md"), help="Markdown table file")
    parser.add_argument("--plot", default=str(HERE / "scaling.png"), help="the sweep's plot (PNG)")
    return parser


def main(argv: list[str] | None = None, cases: list[Case] | None = None, trl_cases: list[Case] | None = None) -> int:
    """The benchmark; ``cases`` / ``trl_cases`` replace the CPU cases (``gpu.py`` passes its own)."""
    args = parser().parse_args(argv)
    trl_cases = TRL_CASES if trl_cases is None else trl_cases
    sweep_trl = scaling.trl_case(args, trl_cases)  # before --defaults-only keeps only the first TRL case
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
        sweep = scaling.run_sweep(args, work, env, sweep_trl if args.trl_python else None, results)
        trl_name = sweep_trl.name if args.trl_python else "TRL"
        table += "\n" + scaling.markdown(sweep, trl_name) + f"\n![pairs/s, MFU and peak RSS]({Path(args.plot).name})\n"
        scaling.plot(sweep, args.plot, machine(), trl_name)
    print("\n" + table)
    Path(args.markdown).write_text(table)
    Path(args.results).write_text(json.dumps({"machine": machine(), "args": vars(args), "peaks": peak_notes(),
                                              "results": [asdict(r) for r in results],
                                              "sweep": [asdict(r) for r in sweep]}, indent=2))
    return 0 if all(r.returncode == 0 for r in results + [p.result for p in sweep]) else 1


if __name__ == "__main__":
    sys.exit(main())
