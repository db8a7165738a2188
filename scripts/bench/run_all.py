"""Run every benchmark in turn with small default sizes (what ``make bench`` calls).

    python scripts/bench/run_all.py                       # all, about 3-6 minutes on 2 CPU cores
    python scripts/bench/run_all.py --only pipeline pseudo_labels
    python scripts/bench/run_all.py --device cuda         # the torch benchmarks on a GPU

Each benchmark runs as its own process from the repository root (so the demo configs and
``data/demo`` resolve), one after the other, never in parallel: they time the same cores. Their
tables are printed as they come, each under a heading with the command and the 1-minute load
average before it (other work on the same cores skews absolute numbers first, ratios less), ready
to paste into a README; a summary of wall times and exit codes ends the run. The exit code is 1
when any benchmark failed.
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
    "models": ("models.py", ["--models", "hg2-64", "resnet18", "--sizes", "128", "--iters", "2", "--max-seconds", "5"],
               "Pose models: forward and training images/s"),
    "pck": ("pck.py", ["--n", "100000", "--repeats", "5"], "PCK on 100,000 predictions"),
    "pseudo_labels": ("pseudo_labels.py", ["--images", "32", "--loop-images", "6", "--repeats", "1"],
                      "CC-SSL pseudo-labelling: batched vs one image at a time vs the forward bound"),
    "pipeline": ("pipeline.py", ["--images", "48", "--repeats", "2"],
                 "Pretraining: end to end vs the model step alone"),
    "generate": ("generate.py", ["--source", "32", "--videos", "4", "--frames", "8", "--other", "32"],
                 "Embedded-benchmark generator: 1 worker vs 2"),
}
TORCH_BENCHMARKS = ("models", "pseudo_labels", "pipeline")  # these take --device


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS),
                        help="benchmarks to run, in the given order (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N, for " + ", ".join(TORCH_BENCHMARKS))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    summary = []
    for name in args.only:
        script, extra, heading = BENCHMARKS[name]
        command = [sys.executable, str(HERE / script), *extra]
        if name in TORCH_BENCHMARKS and args.device != "cpu":
            command += ["--device", args.device]
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
