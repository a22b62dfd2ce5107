"""``dpokit`` exactly as the console script runs it, plus a report written at exit: the wall and
CPU clocks at the end of each optimizer step and the peak GPU memory.

``python benchmarks/dpokit_entry.py REPORT.json train ...`` is ``dpokit train ...``. The step
clocks come from a wrapper around ``dpokit.train.train_step`` (the loop calls it by name), which
only reads the clocks after the real step.
"""

from __future__ import annotations

import json
import sys
import time

if __name__ == "__main__":
    report_path = sys.argv.pop(1)
    from dpokit.hostmem import tune

    tune()  # as the console script does first (`dpokit.cli.main`), before torch allocates
    import dpokit.train
    from dpokit.cli import main

    step_times: list[float] = []
    step_cpu_times: list[float] = []  # the process's CPU seconds (all threads) at each step's end
    real_step = dpokit.train.train_step

    def timed_step(run):
        out = real_step(run)
        step_times.append(time.time())
        step_cpu_times.append(time.process_time())
        return out

    dpokit.train.train_step = timed_step
    try:
        code = main()
    finally:
        torch = sys.modules.get("torch")
        report = {"step_times": step_times, "step_cpu_times": step_cpu_times,
                  "threads": torch.get_num_threads() if torch is not None else None}
        if torch is not None and torch.cuda.is_available():
            report["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
        with open(report_path, "w") as f:
            json.dump(report, f)
    sys.exit(code)
