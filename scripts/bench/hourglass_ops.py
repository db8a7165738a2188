"""Before/after of the hourglass's CPU pooling and upsampling (``da_pose.models.layers.FAST_CPU_OPS``).

    python scripts/bench/hourglass_ops.py                 # demo hourglass, 1 torch thread
    python scripts/bench/hourglass_ops.py --profile       # also where a forward pass spends its time

A profile of CC-SSL pseudo-labelling on 2 CPU cores (the demo model's forward passes) showed
``max_pool2d`` at 19 % and nearest upsampling plus the addition at 6 % of the forward time, both
far above their share of the arithmetic: torch's NCHW CPU kernels for them are slow. The project
replaces them on CPU by the element-wise maximum of four strided sub-grids and a broadcast
addition (same values bit for bit). This script times the same model with the torch ops ("before")
and with the replacements ("after"), interleaved, the fastest of ``--repeats`` kept, for the two
passes that matter: inference on a pseudo-labelling batch and a training step (forward+backward).
"""

from __future__ import annotations

import argparse
import time

import torch

from da_pose.config import load_config
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.models import layers
from da_pose.models.factory import build_model
from da_pose.train.losses import joints_mse
from common import machine_line  # scripts/bench/common.py (the script's own folder)

DEMO_CONFIG = "experiments/toy/ccssl_hg.yaml"


def timed(fn, n: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=DEMO_CONFIG, help="model and input size of this config")
    ap.add_argument("--infer-batch", type=int, default=12, help="images per inference pass")
    ap.add_argument("--train-batch", type=int, default=16, help="images per training step")
    ap.add_argument("--passes", type=int, default=3, help="timed passes per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default)")
    ap.add_argument("--device", default="cpu", help="only cpu: CUDA always uses the torch ops")
    ap.add_argument("--profile", action="store_true", help="print the top operators of one forward pass, before and after")
    args = ap.parse_args(argv)
    if args.device != "cpu":
        print(f"hourglass_ops: nothing to compare on {args.device} (the replacements are CPU-only)")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [])
    torch.manual_seed(0)
    model = build_model(cfg.model, NUM_JOINTS)
    s = cfg.data.input_size
    x_inf = torch.randn(args.infer_batch, 3, s, s)
    x_train = torch.randn(args.train_batch, 3, s, s)

    def infer():
        model.eval()
        with torch.inference_mode():
            model(x_inf)

    def train_step():
        model.train()
        heatmaps = model(x_train).heatmaps
        loss = joints_mse(heatmaps, torch.zeros_like(heatmaps[-1]))
        model.zero_grad(set_to_none=True)
        loss.backward()

    best = {}
    for _ in range(args.repeats):
        for fast in (False, True):
            layers.FAST_CPU_OPS = fast
            for name, fn, batch in (("inference", infer, args.infer_batch), ("training step", train_step, args.train_batch)):
                rate = batch / timed(fn, args.passes)
                best[(name, fast)] = max(best.get((name, fast), 0.0), rate)
    layers.FAST_CPU_OPS = True
    print(machine_line(torch.device("cpu")))
    print(f"model of {args.config} at {s} px; fastest of {args.repeats} x {args.passes} passes\n")
    print("| pass | batch | torch ops img/s | replacements img/s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, batch in (("inference", args.infer_batch), ("training step", args.train_batch)):
        before, after = best[(name, False)], best[(name, True)]
        print(f"| {name} | {batch} | {before:.1f} | {after:.1f} | {after / before:.2f}x |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for fast in (False, True):
            layers.FAST_CPU_OPS = fast
            infer()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                infer()
            print(f"\nforward pass, {'replacements' if fast else 'torch ops'}:\n")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
        layers.FAST_CPU_OPS = True


if __name__ == "__main__":
    main()
