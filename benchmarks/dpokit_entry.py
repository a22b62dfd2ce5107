"""``dpokit`` exactly as the console script runs it, plus the peak GPU memory written at exit.

``python benchmarks/dpokit_entry.py REPORT.json train ...`` is ``dpokit train ...``.
"""

from __future__ import annotations

import json
import sys

if __name__ == "__main__":
    report_path = sys.argv.pop(1)
    from dpokit.cli import main

    try:
        code = main()
    finally:
        report = {}
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            report["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
        with open(report_path, "w") as f:
            json.dump(report, f)
    sys.exit(code)
