"""Run every benchmark in turn with small default sizes (what ``make bench`` calls).

    python scripts/bench/run_all.py                       # all, about 2-5 minutes on 2 CPU cores
    python scripts/bench/run_all.py --only pipeline pseudo_labels
    python scripts/bench/run_all.py --device cuda         # the torch benchmarks on a GPU
    python scripts/bench/run_all.py --threads 0           # torch's default threads (a quiet machine)

Each benchmark runs as its own process from the repository root (so the demo configs and
``data/demo`` resolve), one after the other, never in parallel: they time the same cores. Their
tables are printed as they come, each under a heading with the command and the 1-minute load
average before it (other work on the same cores skews absolute numbers first, ratios less), ready
to paste into a README; a summary of wall times and exit codes ends the run. The exit code is 1
when any benchmark failed.

Threads. The torch benchmarks run with ONE torch thread by default. On a shared machine, torch's
default (one thread per core) makes every operation wait for its slowest thread, and a thread
whose core another process holds is late at every one of them: on the 2-core development machine
with other work running, a demo training step took 0.4 s with 1 thread and 0.9-6.5 s with 2, and
a batch-1 forward 15 ms against up to 1.6 s. Such waits fall far harder on small operations
(batch 1, the data path) than on large ones, so they would skew the ratios, not just scale them.
On a quiet machine, ``--threads 0`` measures torch's default.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# name -> (script, arguments, heading); sizes chosen for a 2-core CPU run of a few minutes in all
BENCHMARKS: dict[str, tuple[str, list[str], str]] = {
    "models": ("models.py", ["--models", "hg2-64", "hg4-256", "resnet18", "--sizes", "128", "256", "--iters", "2",
                             "--max-seconds", "3"], "Pose models: forward and training images/s"),
    "hourglass_ops": ("hourglass_ops.py", ["--repeats", "3"],
                      "Hourglass CPU inference ops: torch's pooling/upsampling vs the replacements (before/after)"),
    "pck": ("pck.py", ["--n", "100000", "--repeats", "5"], "PCK on 100,000 predictions"),
    "pseudo_labels": ("pseudo_labels.py", ["--images", "64", "--loop-images", "12", "--repeats", "3"],
                      "CC-SSL pseudo-labelling: batched vs one image at a time vs the forward bound"),
    "pipeline": ("pipeline.py", ["--images", "96", "--repeats", "3"],
                 "Pretraining: end to end vs the model step alone"),
    "generate": ("generate.py", ["--source", "64", "--videos", "6", "--frames", "16", "--other", "64",
                                 "--repeats", "2"], "Embedded-benchmark generator: 1 worker vs 2"),
}
TORCH_BENCHMARKS = ("models", "hourglass_ops", "pseudo_labels", "pipeline")  # these take --device


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS),
                        help="benchmarks to run, in the given order (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N, for " + ", ".join(TORCH_BENCHMARKS))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of " + ", ".join(TORCH_BENCHMARKS) + " (0: torch's default, one per "
                        "core; default 1, see the module docstring)")
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    summary = []
    for name in args.only:
        script, extra, heading = BENCHMARKS[name]
        command = [sys.executable, str(HERE / script), *extra]
        if name in TORCH_BENCHMARKS:
            command += ["--device", args.device, "--threads", str(args.threads)]
        print(f"\n## {heading}\n", flush=True)
        print(f"`{' '.join(['python', f'scripts/bench/{script}', *command[2:]])}`\n", flush=True)
        if hasattr(os, "getloadavg"):  # other people's work on the same cores, for judging the ratios
            print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n", flush=True)
        start = time.perf_counter()
        code = subprocess.call(command, cwd=REPO)
        seconds = time.perf_counter() - start
        summary.append((name, code, seconds))
        if code:
            print(f"\n{name}: FAILED with exit code {code}", flush=True)
    print("\n## Summary\n")
    print("| benchmark | exit code | wall time (s) |")
    print("|---|---:|---:|")
    for name, code, seconds in summary:
        print(f"| {name} | {code} | {seconds:.0f} |")
    print(f"| total | {max((c for _, c, _ in summary), default=0)} | {sum(s for _, _, s in summary):.0f} |", flush=True)
    return 1 if any(code for _, code, _ in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
