"""Where one dpokit training step spends its time: ``torch.profiler`` over a few steps.

``python benchmarks/profile_step.py --layout prefix --precision bf16`` prints the top operators
by CPU time on the benchmark's model and pairs (built by ``assets.py`` as for ``run.py``), and the
process CPU seconds per step (less sensitive than wall time to other load on the machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from assets import build_assets  # noqa: E402


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/dpokit-bench-profile")
    parser.add_argument("--layout", default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--flags", nargs="*", default=[], help="more dpokit train flags, e.g. gradient_checkpointing=true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--system-memory", action="store_true", help="leave host memory as the system has it")
    parser.add_argument("--rows", type=int, default=30, help="operators in the table")
    parser.add_argument("--shapes", action="store_true", help="group the table by input shapes too")
    args = parser.parse_args()
    work = Path(args.work)
    if not args.system_memory:
        from dpokit.hostmem import tune

        tune()  # as `dpokit train` does
    os.environ.setdefault("DPOKIT_CACHE", str(work / "cache"))
    assets = build_assets(work / "assets", 160)

    import torch

    from dpokit.configure import resolve
    from dpokit.train import setup, train_step

    if args.threads:
        torch.set_num_threads(args.threads)

    argv = ["--data", assets["data"], "--model", assets["model"], "--output", str(work / "out"),
            "--batch-size", "8", "--max-length", "512", "--steps", "20", "--precision", args.precision]
    argv += ["--layout", args.layout] if args.layout else []
    for flag in args.flags:
        key, _, value = flag.partition("=")
        argv += [f"--{key}", value]
    config, _, _ = resolve(argv)
    print(f"peak RSS after imports: {peak_rss_mib():.0f} MiB (now {rss_mib():.0f})")
    run = setup(config)
    print(f"peak RSS after setup: {peak_rss_mib():.0f} MiB (now {rss_mib():.0f})")
    train_step(run)  # warm-up
    print(f"peak RSS after one step: {peak_rss_mib():.0f} MiB (now {rss_mib():.0f})")
    cpu, wall, faults = time.process_time(), time.perf_counter(), minor_faults()
    if args.no_profile:
        for _ in range(args.steps):
            train_step(run)
            print(f"  step {run.state.step}: peak RSS {peak_rss_mib():.0f} MiB (now {rss_mib():.0f})")
    else:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    record_shapes=args.shapes) as prof:
            for _ in range(args.steps):
                train_step(run)
        table = prof.key_averages(group_by_input_shape=args.shapes)
        print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40,
                          max_shapes_column_width=60))
    print(f"peak RSS after all steps: {peak_rss_mib():.0f} MiB (now {rss_mib():.0f})")
    print(f"layout {config.data.layout}, precision {run.precision}: {(time.process_time() - cpu) / args.steps:.2f} "
          f"CPU s/step, {(time.perf_counter() - wall) / args.steps:.2f} wall s/step, "
          f"{(minor_faults() - faults) / args.steps:.0f} page faults/step")


if __name__ == "__main__":
    main()
