"""Pose model throughput: forward and forward+backward images/s per backbone and input size.

    python scripts/bench/models.py                       # CPU, demo (128) and published (256) input
    python scripts/bench/models.py --device cuda --iters 20 --warmup 5  # AMP + channels_last

Prints a markdown table headed by the machine (CPU count, threads, torch version, device).
Warm-up iterations are excluded from the timing. Forward is timed in eval mode without autograd
(inference, pseudo-labelling); forward+backward in train mode with the joints MSE loss against a
zero target (one training step without the optimizer update). The CPU defaults (batch 2, at
most 2 timed passes or 5 s per measurement) keep a run on 2 CPU cores to about three minutes;
on CUDA the batch defaults to 8.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from da_pose.config import ModelConfig
from da_pose.models.factory import build_model, count_parameters
from da_pose.train.losses import joints_mse
from common import machine_line, sync  # scripts/bench/common.py (the script's own folder)

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
    parser.add_argument("--batch", type=int, default=0,
                        help="images per pass (default: 8 on CUDA, 2 on CPU)")
    parser.add_argument("--iters", type=int, default=2, help="most timed passes per measurement")
    parser.add_argument("--max-seconds", type=float, default=5.0,
                        help="stop a measurement after this long (>= 1 timed pass; 0: no limit)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes first")
    parser.add_argument("--joints", type=int, default=18)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--no-amp", action="store_true", help="CUDA: run in float32")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = parser.parse_args(argv)
    if any(s <= 0 or s % 64 for s in args.sizes):
        parser.error(f"--sizes must be positive multiples of 64, got {args.sizes}")
    if args.batch < 0 or args.iters < 1 or args.warmup < 0:
        parser.error("--batch must be >= 0 (0: device default), --iters >= 1, --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but torch sees no CUDA device")
    return args


def images_per_second(model, x: torch.Tensor, backward: bool, iters: int, warmup: int,
                      amp: bool, max_seconds: float = 0.0) -> float:
    """Time up to ``iters`` forward (or forward+backward) passes on ``x`` after ``warmup`` passes.

    With ``max_seconds > 0`` the timing stops early once that much time has passed (after at
    least one timed pass), so slow settings on a CPU do not dominate the run.

    Shape:
        x: (B, 3, S, S)
    """
    device = x.device
    model.train(backward)
    target = torch.zeros(0)

    def step() -> None:
        nonlocal target
        autocast = (torch.autocast(device_type="cuda", dtype=torch.float16) if amp
                    else contextlib.nullcontext())
        if not backward:
            with torch.inference_mode(), autocast:
                model(x)
            return
        with autocast:
            heatmaps = model(x).heatmaps  # stacks x (B, K, S/4, S/4)
        if target.shape != heatmaps[-1].shape:
            target = torch.zeros(heatmaps[-1].shape, device=device)  # B, K, S/4, S/4
        loss = joints_mse(heatmaps, target)
        model.zero_grad(set_to_none=True)
        loss.backward()

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    done = 0
    while done < iters:
        step()
        done += 1
        if max_seconds > 0:
            sync(device)
            if time.perf_counter() - start >= max_seconds:
                break
    sync(device)
    return x.shape[0] * done / (time.perf_counter() - start)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    amp = cuda and not args.no_amp
    if cuda:
        torch.backends.cudnn.benchmark = True
    precision = "float32"
    if cuda:
        precision = "AMP float16, channels_last" if amp else "float32, channels_last"
    print(machine_line(device))
    batch = args.batch or (8 if cuda else 2)
    limit = f" or {args.max_seconds:g} s" if args.max_seconds > 0 else ""
    print(f"batch {batch}, up to {args.iters} timed passes{limit} after {args.warmup} warm-up, "
          f"{precision}")
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
            x = torch.randn(batch, 3, size, size, device=device)  # B, 3, S, S
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            timing = dict(iters=args.iters, warmup=args.warmup, amp=amp,
                          max_seconds=args.max_seconds)
            fwd = images_per_second(model, x, False, **timing)
            train = images_per_second(model, x, True, **timing)
            print(f"| {name} | {params:.2f} | {size} | {fwd:.1f} | {train:.1f} |", flush=True)
        del model


if __name__ == "__main__":
    main()
