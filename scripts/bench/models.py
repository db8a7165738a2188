"""Pose model throughput: forward and forward+backward images/s per backbone and input size.

    python scripts/bench/models.py                       # CPU, demo (128) and published (256) input
    python scripts/bench/models.py --device cuda --iters 20 --warmup 5   # CUDA + AMP + channels_last

Prints a markdown table headed by the machine (CPU count, threads, torch version, device).
Warm-up iterations are excluded from the timing. Forward is timed in eval mode without autograd
(inference, pseudo-labelling); forward+backward in train mode with the joints MSE loss against a
zero target (one training step without the optimizer update). The defaults keep a run on
2 CPU cores to about three minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time

import torch

from da_pose.config import ModelConfig
from da_pose.models.factory import build_model, count_parameters
from da_pose.train.losses import joints_mse

# the benchmarked settings: published hourglass, a small CPU hourglass, two SimpleBaselines
MODELS: dict[str, ModelConfig] = {
    "hg4-256": ModelConfig(backbone="hourglass", stacks=4, blocks=1, depth=4, features=256),
    "hg2-64": ModelConfig(backbone="hourglass", stacks=2, blocks=1, depth=4, features=64),
    "resnet18": ModelConfig(backbone="resnet18"),
    "resnet50": ModelConfig(backbone="resnet50"),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256],
                        help="square input sides (multiples of 64)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=2, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--joints", type=int, default=18)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--no-amp", action="store_true", help="CUDA: run in float32")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = parser.parse_args(argv)
    if any(s <= 0 or s % 64 for s in args.sizes):
        parser.error(f"--sizes must be positive multiples of 64, got {args.sizes}")
    if args.batch < 1 or args.iters < 1 or args.warmup < 0:
        parser.error("--batch and --iters must be >= 1, --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but torch sees no CUDA device")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(model, x: torch.Tensor, backward: bool, iters: int, warmup: int,
                      amp: bool) -> float:
    """Time ``iters`` forward (or forward+backward) passes on the batch ``x`` after ``warmup``.

    Shape:
        x: (B, 3, S, S)
    """
    device = x.device
    autocast = (torch.autocast(device_type="cuda", dtype=torch.float16) if amp
                else contextlib.nullcontext())
    model.train(backward)
    target = None
    start = 0.0
    for i in range(warmup + iters):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        if backward:
            with autocast:
                heatmaps = model(x).heatmaps  # stacks x (B, K, S/4, S/4)
            if target is None:
                target = torch.zeros_like(heatmaps[-1], dtype=torch.float32)  # B, K, S/4, S/4
            loss = joints_mse(heatmaps, target)
            model.zero_grad(set_to_none=True)
            loss.backward()
        else:
            with torch.inference_mode(), autocast:
                model(x)
    _sync(device)
    return x.shape[0] * iters / (time.perf_counter() - start)


def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    return (f"machine: {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, device {device} ({name}), python {platform.python_version()}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    amp = cuda and not args.no_amp
    if cuda:
        torch.backends.cudnn.benchmark = True
    precision = "AMP float16, channels_last" if amp else ("float32, channels_last" if cuda else "float32")
    print(machine_line(device))
    print(f"batch {args.batch}, {args.iters} timed iterations after {args.warmup} warm-up, {precision}")
    print()
    print("| model | params (M) | input | forward img/s | fwd+bwd img/s |")
    print("|---|---:|---:|---:|---:|")
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(MODELS[name], args.joints).to(device)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        params = count_parameters(model) / 1e6
        for size in args.sizes:
            x = torch.randn(args.batch, 3, size, size, device=device)  # B, 3, S, S
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            fwd = images_per_second(model, x, False, args.iters, args.warmup, amp)
            train = images_per_second(model, x, True, args.iters, args.warmup, amp)
            print(f"| {name} | {params:.2f} | {size} | {fwd:.1f} | {train:.1f} |", flush=True)
        del model


if __name__ == "__main__":
    main()
