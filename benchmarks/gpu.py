"""The benchmark on a CUDA GPU: dpokit against TRL, MFU against the GPU's dense peak.

``python benchmarks/gpu.py`` runs ``run.py``'s measurements with ``--device cuda`` on a larger
workload (the ~360M model of the same family, ``max_length`` 1024, batch 16) and GPU cases:

* dpokit at its defaults (bf16, SDPA attention, the ``prefix`` layout: prompt once);
* dpokit ``--layout packed`` with flash attention 2 when ``flash_attn`` is installed (sequences
  end to end, no mask, varlen kernels), else with SDPA;
* dpokit without gradient checkpointing (the memory / speed trade on a large card);
* TRL's ``DPOTrainer`` at its defaults (bf16 on a GPU) and without gradient checkpointing.

MFU is steady pairs/s x useful FLOPs per pair over the GPU's dense bf16 peak from
``dpokit.peak.GPU_PEAKS`` (H100/H200/A100/L4/...), or ``--peak-tflops``. Any ``run.py`` flag
passes through (``--steps``, ``--sweep reduced``, ``--only dpokit``, ...); ``--dry-run`` prints
the cases, the peak it would use and the commands without running anything (on any machine).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import Case  # noqa: E402
from run import main  # noqa: E402

DEFAULTS = ["--device", "cuda", "--size", "360m", "--max-length", "1024", "--batch-size", "16",
            "--markdown", str(HERE / "RESULTS-gpu.md"), "--results", str(HERE / "results-gpu.json"),
            "--plot", str(HERE / "scaling-gpu.png")]
TRL_CASES = [Case("TRL (defaults)", "trl", []),
             Case("TRL, no checkpointing", "trl", ["--gradient-checkpointing", "false"])]


def gpu_cases(flash: bool) -> list[Case]:
    packed = ["--layout", "packed", "--attn-implementation", "flash_attention_2" if flash else "sdpa"]
    return [Case("dpokit (defaults)", "dpokit", [], "TRL (defaults)"),
            Case(f"dpokit --layout packed ({'flash attention 2' if flash else 'SDPA'})", "dpokit", packed,
                 "TRL (defaults)"),
            Case("dpokit --gradient-checkpointing false", "dpokit", ["--gradient-checkpointing", "false"],
                 "TRL, no checkpointing")]


def dry_run(argv: list[str], cases: list[Case]) -> int:
    """What a run would do: the cases, their flags and the peak MFU would be taken against."""
    from run import parser

    from dpokit.peak import GPU_PEAKS, gpu_peak_tflops

    args = parser().parse_args(argv)
    print(f"device {args.device}, model {args.size}, max_length {args.max_length}, batch {args.batch_size}, "
          f"{args.steps} steps, sweep {args.sweep}")
    for case in cases + TRL_CASES:
        print(f"  {case.tool}: {case.name}: {' '.join(case.flags) or '(defaults)'}")
    if args.sweep != "none":
        import scaling

        print("sweep points: " + ", ".join(f"{size}@{length}" for _, size, length in scaling.grid(args))
              + f"; TRL there: {scaling.trl_case(args, TRL_CASES).name}")
    try:
        import torch

        name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a broken CUDA install reads as no GPU here
        name = None
    if args.peak_tflops:
        print(f"peak: {args.peak_tflops} TFLOP/s (given)")
    elif name:
        print(f"peak: {name}: {gpu_peak_tflops(name, 'bf16')} TFLOP/s bf16 dense")
    else:
        print("no GPU here; known bf16 peaks (TFLOP/s): "
              + ", ".join(f"{p.strip(chr(92) + 'b')} {bf16}" for p, bf16, *_ in GPU_PEAKS if bf16))
    return 0


def run(argv: list[str]) -> int:
    flash = importlib.util.find_spec("flash_attn") is not None
    cases = gpu_cases(flash)
    if "--dry-run" in argv:
        return dry_run(DEFAULTS + [a for a in argv if a != "--dry-run"], cases)
    return main(DEFAULTS + argv, cases=cases, trl_cases=TRL_CASES)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
