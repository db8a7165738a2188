"""CPU levers for the benchmark: channels_last and torch.compile, measured side by side.

    python scripts/bench/cpu_levers.py                    # demo hourglass and ResNet-18, 1 thread
    python scripts/bench/cpu_levers.py --models hg-demo --rounds 5

Each setting is timed in interleaved rounds (A, B, C, A, B, C, ...) so that a noisy machine
slows every setting alike; the table gives the median images/s over the rounds and the ratio to
the plain (contiguous, eager) setting. Inference is the evaluation / pseudo-labelling pass
(eval mode, no autograd, the evaluation batch); training is one optimizer step (forward,
backward, Adam) at the training batch. ``compile`` pays a one-off compilation, reported
separately: it is what a short run pays once per process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from da_pose.config import ModelConfig
from da_pose.models.factory import build_model
from da_pose.train.losses import joints_mse
from common import machine_line  # scripts/bench/common.py

MODELS = {
    "hg-demo": ModelConfig(backbone="hourglass", stacks=1, blocks=1, depth=4, features=64),
    "resnet18": ModelConfig(backbone="resnet18"),
}
SETTINGS = ("plain", "channels_last", "compile")


def prepare(name: str, setting: str, size: int):
    torch.manual_seed(0)
    model = build_model(MODELS[name], 18)
    if setting == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    runner = torch.compile(model) if setting == "compile" else model
    return model, runner


def batch(size: int, n: int, setting: str) -> torch.Tensor:
    x = torch.randn(n, 3, size, size)
    return x.contiguous(memory_format=torch.channels_last) if setting == "channels_last" else x


def infer_once(runner, x) -> None:
    with torch.inference_mode():
        runner(x)


def train_once(model, runner, opt, x) -> None:
    heatmaps = runner(x).heatmaps
    loss = joints_mse(heatmaps, torch.zeros_like(heatmaps[-1]))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure(args, name: str, mode: str) -> dict[str, list[float]]:
    n = args.eval_batch if mode == "inference" else args.train_batch
    built = {}
    for s in SETTINGS:
        model, runner = prepare(name, s, args.size)
        model.train(mode == "training")
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        x = batch(args.size, n, s)
        run = (lambda r=runner, x=x: infer_once(r, x)) if mode == "inference" else \
            (lambda m=model, r=runner, o=opt, x=x: train_once(m, r, o, x))
        start = time.perf_counter()
        run()  # the first call compiles
        first = time.perf_counter() - start
        run()
        built[s] = (run, first)
    rates = {s: [] for s in SETTINGS}
    for _ in range(args.rounds):
        for s, (run, _) in built.items():
            start = time.perf_counter()
            for _ in range(args.iters):
                run()
            rates[s].append(n * args.iters / (time.perf_counter() - start))
    return {s: (statistics.median(r), built[s][1]) for s, r in rates.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line(torch.device("cpu")))
    print(f"input {args.size}, train batch {args.train_batch}, eval batch {args.eval_batch}, "
          f"{args.rounds} interleaved rounds of {args.iters} passes, median")
    print()
    print("| model | pass | setting | img/s | vs plain | first call (s) |")
    print("|---|---|---|---:|---:|---:|")
    for name in args.models:
        for mode in ("inference", "training"):
            res = measure(args, name, mode)
            base = res["plain"][0]
            for s, (rate, first) in res.items():
                print(f"| {name} | {mode} | {s} | {rate:.1f} | {rate / base:.2f}x | {first:.1f} |", flush=True)


if __name__ == "__main__":
    main()
